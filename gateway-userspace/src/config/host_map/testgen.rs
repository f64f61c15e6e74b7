//! Random host patterns and request hosts for the property tests of the host lookups
//! (issue 17): the indexes must answer what a scan answers.
use fastrand::Rng;

const LABELS: &[&str] = &["a", "b", "c", "ab", "x-y", "scale", "test", "1"];

fn name(rng: &mut Rng, labels: std::ops::RangeInclusive<usize>) -> String {
    let n = rng.usize(labels);
    (0..n)
        .map(|_| LABELS[rng.usize(..LABELS.len())])
        .collect::<Vec<_>>()
        .join(".")
}

/// A lowercase pattern: exact names, `*.` wildcards and `*` mostly, now and then one
/// that validation would refuse (`*ab.c`, `*.`, `**.a`) — the index must agree with a
/// scan on those too.
pub fn pattern(rng: &mut Rng) -> String {
    match rng.u8(..100) {
        0..10 => "*".into(),
        10..45 => format!("*.{}", name(rng, 1..=3)),
        45..50 => match rng.u8(..3) {
            0 => format!("*{}", name(rng, 1..=2)),
            1 => "*.".into(),
            _ => format!("**.{}", name(rng, 1..=2)),
        },
        _ => name(rng, 1..=4),
    }
}

/// A host as a client may write it: often one of `patterns` with its `*` filled in (or
/// left), else random labels; then case variants, a port, a trailing dot.
pub fn request_host(rng: &mut Rng, patterns: &[String]) -> String {
    let mut h = match rng.u8(..10) {
        0..5 if !patterns.is_empty() => {
            let p = &patterns[rng.usize(..patterns.len())];
            match rng.u8(..4) {
                0 => p.clone(),
                1 => p.replacen('*', "", 1),
                _ => p.replacen('*', &name(rng, 1..=2), 1),
            }
        }
        5 => ["", "*", ".", "[::1]", ".a.b", "a..b"][rng.usize(..6)].into(),
        _ => name(rng, 0..=5),
    };
    if rng.u8(..4) == 0 {
        h = h
            .chars()
            .map(|c| {
                if rng.bool() {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect();
    }
    if rng.u8(..8) == 0 {
        h.push('.');
    }
    if rng.u8(..4) == 0 {
        h.push_str([":80", ":8443", ":", ":x"][rng.usize(..4)]);
    }
    h
}
