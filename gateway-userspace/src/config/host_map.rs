//! The one host matcher of the data path: host patterns (`name`, `*.suffix`, `*`) to
//! values, looked up the way Envoy picks a virtual host or a filter chain by server
//! name: an exact name, else the wildcard with the longest suffix, else `*`; among
//! equal patterns the first inserted. Exact names and wildcard suffixes sit in hash
//! maps, so a lookup costs one hash per label of the host, however many patterns there
//! are (issue 17: 10 000 hosts made every request scan 10 000 patterns).
use std::collections::HashMap;

/// How a pattern is scored against a host, after the two scans this replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Semantics {
    /// Virtual hosts and HTTPS server names ([`crate::plan::routing::host_score`]): `*`
    /// and `*x` are always wildcards, and `*.x` needs at least one character before
    /// `.x`.
    Host,
    /// TLS passthrough routes ([`super::Listener::route_sni`]): a pattern equal to the
    /// SNI as written is an exact match (even `*` or `*.x`), and `*.x` also matches
    /// `.x` itself.
    Sni,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostMap<T> {
    semantics: Semantics,
    exact: HashMap<Box<str>, T>,
    /// `*.a.b` keyed by `.a.b`.
    suffix: HashMap<Box<str>, T>,
    /// Wildcards whose suffix does not start with a dot (`*ab.c`, which validation
    /// refuses, or `**`): scanned, so that the index answers exactly what a scan
    /// would even for them. Empty in any config that loads.
    odd: Vec<(Box<str>, T)>,
    star: Option<T>,
}

impl<T> HostMap<T> {
    pub fn new(semantics: Semantics) -> Self {
        HostMap {
            semantics,
            exact: HashMap::new(),
            suffix: HashMap::new(),
            odd: Vec::new(),
            star: None,
        }
    }

    /// Adds a lowercase pattern; a pattern already present keeps its first value (a
    /// scan gives ties to the first).
    pub fn insert(&mut self, pattern: &str, value: T)
    where
        T: Clone,
    {
        if self.semantics == Semantics::Sni {
            // Equality with the SNI outranks any wildcard reading of the pattern.
            self.exact
                .entry(pattern.into())
                .or_insert_with(|| value.clone());
        }
        if pattern == "*" {
            self.star.get_or_insert(value);
        } else if let Some(suffix) = pattern.strip_prefix('*') {
            if suffix.starts_with('.') {
                self.suffix.entry(suffix.into()).or_insert(value);
            } else if !self.odd.iter().any(|(s, _)| **s == *suffix) {
                self.odd.push((suffix.into(), value));
            }
        } else if self.semantics == Semantics::Host {
            self.exact.entry(pattern.into()).or_insert(value);
        }
    }

    /// The value of the best pattern for a lowercase host.
    pub fn get(&self, host: &str) -> Option<&T> {
        if let Some(v) = self.exact.get(host) {
            return Some(v);
        }
        // Shortest prefix before the suffix: 1 character for `Host`, none for `Sni`.
        let min_prefix = match self.semantics {
            Semantics::Host => 1,
            Semantics::Sni => 0,
        };
        // Longest dotted suffix first: the first hit is the longest.
        let dotted = (!self.suffix.is_empty())
            .then(|| {
                host.char_indices()
                    .filter(|&(i, c)| c == '.' && i >= min_prefix)
                    .find_map(|(i, _)| self.suffix.get(&host[i..]).map(|v| (host.len() - i, v)))
            })
            .flatten();
        let mut best = dotted;
        for (suffix, v) in &self.odd {
            if host.len() >= suffix.len() + min_prefix
                && host.ends_with(&**suffix)
                && best.is_none_or(|(len, _)| suffix.len() > len)
            {
                best = Some((suffix.len(), v));
            }
        }
        best.map(|(_, v)| v).or(self.star.as_ref())
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty()
            && self.suffix.is_empty()
            && self.odd.is_empty()
            && self.star.is_none()
    }
}

#[cfg(test)]
pub(crate) mod testgen;
