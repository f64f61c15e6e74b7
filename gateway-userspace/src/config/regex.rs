//! Regexes as Istio writes them and Envoy runs them: `safe_regex` (RE2) matches the
//! whole value. Rust's `regex` is RE2-like (linear time, no backreferences).
use regex::Regex;

/// `re` compiled to match a whole value; the error names `what` and the regex.
pub fn compile(re: &str, what: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{re})$")).map_err(|e| format!("{what}: invalid regex {re:?}: {e}"))
}
