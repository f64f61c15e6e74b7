//! The Prometheus text exposition format (version 0.0.4) every `/stats/prometheus`
//! family is written in: `# HELP` and `# TYPE` once per family, then its samples
//! `name{label="value",...} value` with label values escaped (`\`, `"` and newline).
//!
//! Here, below everything that counts, so that each room writes its own families
//! beside its counters (xdp, authz, telemetry, server, runtime).
use std::fmt::{self, Write as _};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A label's name and value (any `Display`: a string, a port, ...).
pub type Label<'a> = (&'a str, &'a dyn fmt::Display);

/// Writes exposition text to the end of a `String`.
pub struct Prom<'a> {
    out: &'a mut String,
}

impl<'a> Prom<'a> {
    pub fn new(out: &'a mut String) -> Prom<'a> {
        Prom { out }
    }

    /// The `# HELP` and `# TYPE` lines of a family, before its samples.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let _ = writeln!(
            self.out,
            "# HELP {name} {help}\n# TYPE {name} {}",
            kind.as_str()
        );
        self
    }

    /// One sample: `name value` without labels, else `name{a="x",b="y"} value`.
    pub fn sample(&mut self, name: &str, labels: &[Label<'_>], value: impl fmt::Display) {
        self.sample_with(name, "", labels, value);
    }

    /// One sample whose labels were rendered once by [`labels`] (a label set written
    /// for many samples), then `extra` ones.
    pub fn sample_with(
        &mut self,
        name: &str,
        rendered: &str,
        extra: &[Label<'_>],
        value: impl fmt::Display,
    ) {
        self.out.push_str(name);
        if !rendered.is_empty() || !extra.is_empty() {
            self.out.push('{');
            self.out.push_str(rendered);
            if !rendered.is_empty() && !extra.is_empty() {
                self.out.push(',');
            }
            write_labels(self.out, extra);
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// `a="x",b="y"`, the values escaped: for [`Prom::sample_with`].
pub fn labels(labels: &[Label<'_>]) -> String {
    let mut s = String::new();
    write_labels(&mut s, labels);
    s
}

fn write_labels(out: &mut String, labels: &[Label<'_>]) {
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        let _ = write!(Escaped(out), "{value}");
        out.push('"');
    }
}

/// Escapes what is written through it as a label value: `\` `"` and newline.
struct Escaped<'a>(&'a mut String);

impl fmt::Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            match c {
                '\\' => self.0.push_str("\\\\"),
                '"' => self.0.push_str("\\\""),
                '\n' => self.0.push_str("\\n"),
                c => self.0.push(c),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escaped_labels() {
        let mut out = String::new();
        let mut p = Prom::new(&mut out);
        p.family("x_total", Kind::Counter, "Things.");
        p.sample("x_total", &[], 3);
        p.sample("x_total", &[("port", &80), ("file", &"a\"b\\c\nd")], 4);
        let fixed = labels(&[("reporter", &"source")]);
        p.family("h", Kind::Histogram, "A histogram.");
        p.sample_with("h_bucket", &fixed, &[("le", &0.5)], 1);
        p.sample_with("h_sum", &fixed, &[], 0.25);
        p.sample_with("h_count", "", &[], format_args!("{:.2}", 1.0));
        p.sample_with("h_count", "", &[("a", &"")], 2);
        assert_eq!(
            out,
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total 3\nx_total{port=\"80\",file=\"a\\\"b\\\\c\\nd\"} 4\n\
             # HELP h A histogram.\n# TYPE h histogram\nh_bucket{reporter=\"source\",le=\"0.5\"} 1\nh_sum{reporter=\"source\"} 0.25\nh_count 1.00\nh_count{a=\"\"} 2\n"
        );
    }
}
