//! Request path normalization, as Istio configures Envoy (MeshConfig
//! `pathNormalization.normalization`) and before anything reads the path: routing,
//! AuthorizationPolicy, rewrites, access logs, metrics, and the request forwarded
//! upstream (issue 15).
//!
//! A port of Envoy's `ConnectionManagerUtility::maybeNormalizePath`
//! (source/common/http/conn_manager_utility.cc) and the helpers it calls in
//! source/common/http/path_utility.cc, applied to the path only (the query is kept as
//! sent), in Envoy's order:
//!
//! 1. `unescapeSlashes` (DECODE_AND_MERGE_SLASHES only, Envoy's
//!    `path_with_escaped_slashes_action: UNESCAPE_AND_FORWARD`): `%2F`/`%2f` → `/`,
//!    `%5C`/`%5c` → `\`. Other modes keep them (`KEEP_UNCHANGED`).
//! 2. `canonicalPath` (every mode but NONE, Envoy's `normalize_path`):
//!    `stripParametersFromDotSegments` (`/..;x/` → `/../`, on by default in Envoy),
//!    then Chromium's `url::CanonicalizePath` (url/url_canon_path.cc, which Envoy links
//!    from googleurl; ported below): `.`/`..` segments (also as `%2e`) resolved as in
//!    RFC 3986 §5.2.4, `\` read as `/`, escapes of unreserved characters
//!    (`A-Za-z0-9-._~`) decoded, characters no path may carry escaped, and a `%00`
//!    fails the request (400, details `path_normalization_failed`).
//! 3. `mergeSlashes` (MERGE_SLASHES and DECODE_AND_MERGE_SLASHES).
//!
//! Istio's reference, "Authorization Policy Normalization", lists the same rules and
//! adds that `%00` is refused in every mode, which NONE does here too.
//!
//! One deliberate difference: Envoy makes a single pass, whose result is not always a
//! fixed point (`/a/%2e%2e;x/b` gives `/a/..;x/b`, which a second pass turns into `/b`).
//! A backend that reads `..;x` as `..` (Tomcat does) would then serve a path the policy
//! never judged. The gateway repeats the pass until the path stops changing, so the
//! path authorization sees is the one a backend normalizing it again would get; a path
//! that does not settle in [`MAX_PASSES`] is refused like an invalid one.
use std::borrow::Cow;

use hyper::{Uri, http::uri::PathAndQuery};

use crate::config::mesh::PathNormalization;

/// Envoy's `%RESPONSE_CODE_DETAILS%` for a path it refuses to normalize
/// (`StreamInfo::ResponseCodeDetails::PathNormalizationFailed`).
pub const PATH_NORMALIZATION_FAILED: &str = "path_normalization_failed";

/// Passes of the whole normalization before giving up on a path that keeps changing.
/// Every input seen (tests, fuzzing) settles after the first.
pub const MAX_PASSES: usize = 4;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `%00` (Chromium's only invalid path character, and Istio's rule in every mode).
    #[error("the path contains %00")]
    Nul,
    /// Each pass gave another path (see the module doc).
    #[error("the path does not settle under normalization")]
    Unstable,
    /// The normalized path makes no valid request target (never seen: a pass only
    /// writes characters a path may carry).
    #[error("the normalized path is no valid request target")]
    Unrepresentable,
}

/// The request URI with its path normalized and everything else (scheme, authority,
/// query) as it was; None when the path is already normal. What the proxy forwards
/// and every later step reads.
pub fn normalize_uri(mode: PathNormalization, uri: &Uri) -> Result<Option<Uri>, PathError> {
    // Authority-form (CONNECT) has no path to normalize.
    if uri.path_and_query().is_none() {
        return Ok(None);
    }
    let path = uri.path();
    let Cow::Owned(normal) = normalize_path(mode, path)? else {
        return Ok(None);
    };
    let pq = match uri.query() {
        Some(q) => format!("{normal}?{q}"),
        None => normal,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query =
        Some(PathAndQuery::try_from(pq).map_err(|_| PathError::Unrepresentable)?);
    Uri::from_parts(parts)
        .map(Some)
        .map_err(|_| PathError::Unrepresentable)
}

/// Istio refuses a method that is not in upper case with 400 ("Authorization Policy
/// Normalization": methods are matched as sent, so `get` must not slip past a rule
/// on `GET` to a backend that reads methods case-insensitively).
pub fn method_ok(method: &str) -> bool {
    !method.bytes().any(|b| b.is_ascii_lowercase())
}

/// The normalized form of `path` (no query) under `mode`; borrowed when unchanged.
/// An asterisk-form target (`OPTIONS *`) is left alone, as it is no path.
pub fn normalize_path(mode: PathNormalization, path: &str) -> Result<Cow<'_, str>, PathError> {
    let mode = mode.effective();
    // Before anything else: Envoy's parameter stripping drops `..;%00x` whole, so the
    // canonicalizer would never see that NUL (found by the path_normalization fuzz
    // target). Istio refuses `%00` in every mode.
    if has_escaped_nul(path.as_bytes()) {
        return Err(PathError::Nul);
    }
    if mode == PathNormalization::None || path == "*" {
        return Ok(Cow::Borrowed(path));
    }
    let mut cur = pass(mode, path.as_bytes())?;
    for _ in 1..MAX_PASSES {
        let next = pass(mode, &cur)?;
        if next == cur {
            // Only ASCII comes out of a pass: Chromium's table escapes every other byte.
            let s = String::from_utf8(cur).map_err(|_| PathError::Unstable)?;
            return Ok(if s == path {
                Cow::Borrowed(path)
            } else {
                Cow::Owned(s)
            });
        }
        cur = next;
    }
    Err(PathError::Unstable)
}

/// One pass of Envoy's `maybeNormalizePath` (module doc, steps 1-3), `mode` not NONE.
pub fn pass(mode: PathNormalization, path: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut p = Cow::Borrowed(path);
    if mode == PathNormalization::DecodeAndMergeSlashes {
        p = Cow::Owned(unescape_slashes(&p));
    }
    let p = strip_parameters_from_dot_segments(&p);
    let p = canonicalize(&p)?;
    Ok(
        if matches!(
            mode,
            PathNormalization::MergeSlashes | PathNormalization::DecodeAndMergeSlashes
        ) {
            merge_slashes(&p)
        } else {
            p
        },
    )
}

fn has_escaped_nul(p: &[u8]) -> bool {
    p.windows(3).any(|w| w == b"%00")
}

// === Envoy's path_utility.cc ===

/// `PathUtil::unescapeSlashes`: `%2F`, `%2f` → `/` and `%5C`, `%5c` → `\`, left to
/// right (absl::StrReplaceAll), in one scan. The replacements are no hex digits, so
/// they can't form a new escape with what surrounds them.
pub fn unescape_slashes(p: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        if p[i] == b'%' && i + 2 < p.len() {
            match (p[i + 1], p[i + 2]) {
                (b'2', b'F' | b'f') => {
                    out.push(b'/');
                    i += 3;
                    continue;
                }
                (b'5', b'C' | b'c') => {
                    out.push(b'\\');
                    i += 3;
                    continue;
                }
                _ => {}
            }
        }
        out.push(p[i]);
        i += 1;
    }
    out
}

/// `PathUtil::stripParametersFromDotSegments`: a segment starting `..;` becomes `..`
/// and one starting `.;` becomes `.`, so canonicalization then removes them (Envoy's
/// `envoy.reloadable_features.strip_dotdot_segments_with_parameters`, on by default).
pub fn strip_parameters_from_dot_segments(p: &[u8]) -> Cow<'_, [u8]> {
    if !p.windows(2).any(|w| w == b".;") {
        return Cow::Borrowed(p);
    }
    let segments: Vec<&[u8]> = p
        .split(|&b| b == b'/')
        .map(|s| {
            if s.starts_with(b"..;") {
                &b".."[..]
            } else if s.starts_with(b".;") {
                &b"."[..]
            } else {
                s
            }
        })
        .collect();
    Cow::Owned(segments.join(&b'/'))
}

/// `PathUtil::mergeSlashes`: runs of `/` become one, keeping a leading and a trailing
/// slash. (As in Envoy, a path of only slashes, `//`, stays `//`.)
pub fn merge_slashes(p: &[u8]) -> Vec<u8> {
    if !p.windows(2).any(|w| w == b"//") {
        return p.to_vec();
    }
    let mut out = Vec::with_capacity(p.len());
    if p.starts_with(b"/") {
        out.push(b'/');
    }
    let mut first = true;
    for seg in p.split(|&b| b == b'/').filter(|s| !s.is_empty()) {
        if !first {
            out.push(b'/');
        }
        out.extend_from_slice(seg);
        first = false;
    }
    if p.ends_with(b"/") {
        out.push(b'/');
    }
    out
}

// === Chromium's url_canon_path.cc (CanonicalizePath / DoPartialPath) ===

/// Copied through (or, escaped, left escaped: the server may care about hex case).
const PASS: u8 = 0;
/// Needs the slow path in [`canonicalize`].
const SPECIAL: u8 = 1;
const ESCAPE_BIT: u8 = 2;
/// Escaped in the output.
const ESCAPE: u8 = ESCAPE_BIT | SPECIAL;
/// Unescaped in the output when it arrives escaped.
const UNESCAPE: u8 = 4;
const INVALID_BIT: u8 = 8;
/// Fails canonicalization (NUL).
const INVALID: u8 = INVALID_BIT | SPECIAL;

/// `kPathCharLookup`, written as ranges.
const fn path_char_flags(c: u8) -> u8 {
    match c {
        0x00 => INVALID,
        0x01..=0x1F | 0x7F..=0xFF => ESCAPE,
        b' ' | b'"' | b'#' | b'%' | b'<' | b'>' | b'?' | b'\\' | b'^' | b'`' | b'{' | b'|'
        | b'}' => ESCAPE,
        b'.' => SPECIAL,
        b'-' | b'0'..=b'9' | b'A'..=b'Z' | b'_' | b'a'..=b'z' | b'~' => UNESCAPE,
        // ! $ & ' ( ) * + , / : ; = @ [ ]
        _ => PASS,
    }
}

const PATH_FLAGS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = path_char_flags(i as u8);
        i += 1;
    }
    t
};

fn is_url_slash(c: u8) -> bool {
    c == b'/' || c == b'\\'
}

/// `IsDot`: the length of a `.` or `%2e`/`%2E` at `i`, else 0.
fn is_dot(spec: &[u8], i: usize, end: usize) -> usize {
    if spec[i] == b'.' {
        1
    } else if spec[i] == b'%' && i + 3 <= end && spec[i + 1] == b'2' && spec[i + 2] | 0x20 == b'e' {
        3
    } else {
        0
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// `DecodeEscaped`: the byte `%XY` at `i` stands for, if it is a complete escape.
fn decode_escaped(spec: &[u8], i: usize, end: usize) -> Option<u8> {
    if i + 3 > end {
        return None;
    }
    Some(hex_value(spec[i + 1])? * 16 + hex_value(spec[i + 2])?)
}

fn append_escaped(c: u8, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(&[b'%', HEX[(c >> 4) as usize], HEX[(c & 15) as usize]]);
}

enum Dot {
    /// Part of a file name.
    NotADirectory,
    Current,
    Up,
}

/// `ClassifyAfterDot`: what a dot right after a slash is, and how many input bytes
/// after it belong to it (a second dot, the slash that ends the segment).
fn classify_after_dot(spec: &[u8], after_dot: usize, end: usize) -> (Dot, usize) {
    if after_dot == end {
        return (Dot::Current, 0);
    }
    if is_url_slash(spec[after_dot]) {
        return (Dot::Current, 1);
    }
    let second = is_dot(spec, after_dot, end);
    if second > 0 {
        let after_second = after_dot + second;
        if after_second == end {
            return (Dot::Up, second);
        }
        if is_url_slash(spec[after_second]) {
            return (Dot::Up, second + 1);
        }
    }
    (Dot::NotADirectory, 0)
}

/// `BackUpToPreviousSlash`: drops the last segment of `out` (which ends in `/`), never
/// above the first slash.
fn back_up_to_previous_slash(begin: usize, out: &mut Vec<u8>) {
    let mut i = out.len() - 1;
    if i == begin {
        return;
    }
    i -= 1;
    while out[i] != b'/' && i > begin {
        i -= 1;
    }
    out.truncate(i + 1);
}

/// `CheckForNestedEscapes`: after unescaping a byte within two of an earlier `%` that
/// began no valid escape, make sure the output does not now hold one (`%%30` would
/// read as `%0`, `%%300` as `%00`): if it does, that `%` becomes `%25`.
fn check_for_nested_escapes(
    spec: &[u8],
    next_input: usize,
    last_invalid_percent: usize,
    out: &mut Vec<u8>,
) {
    let length = out.len();
    let last_unescaped = out[length - 1];
    let append_next = last_invalid_percent == length - 2;
    if append_next {
        if next_input == spec.len() || spec[next_input] >= 0x80 {
            return;
        }
        out.push(spec[next_input]);
    }
    if decode_escaped(out, last_invalid_percent, out.len()).is_some() {
        if !append_next {
            out.push(out[last_invalid_percent + 1]);
        }
        out[last_invalid_percent + 1] = b'2';
        out[last_invalid_percent + 2] = b'5';
        out.push(last_unescaped);
    } else if append_next {
        out.truncate(length);
    }
}

/// `url::CanonicalizePath` (`DoPath` + `DoPartialPath`) on a path without its query.
/// Err for a NUL, escaped or not (Chromium's `success = false`, which Envoy answers
/// with 400). Slashes are never merged here.
pub fn canonicalize(spec: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(spec.len() + 1);
    if spec.is_empty() {
        out.push(b'/');
        return Ok(out);
    }
    if !is_url_slash(spec[0]) {
        out.push(b'/');
    }
    let begin = 0;
    let end = spec.len();
    let mut last_invalid_percent: Option<usize> = None;
    let mut success = true;
    let mut i = 0;
    while i < end {
        let c = spec[i];
        let flags = PATH_FLAGS[c as usize];
        if flags & SPECIAL == 0 {
            out.push(c);
            i += 1;
            continue;
        }
        let dot = is_dot(spec, i, end);
        if dot > 0 {
            if out.len() > begin && out.last() == Some(&b'/') {
                match classify_after_dot(spec, i + dot, end) {
                    (Dot::NotADirectory, _) => {
                        out.push(b'.');
                        i += dot - 1;
                    }
                    (Dot::Current, consumed) => i += dot + consumed - 1,
                    (Dot::Up, consumed) => {
                        back_up_to_previous_slash(begin, &mut out);
                        i += dot + consumed - 1;
                    }
                }
            } else {
                // A dot inside a file name.
                out.push(b'.');
                i += dot - 1;
            }
        } else if c == b'\\' {
            out.push(b'/');
        } else if c == b'%' {
            match decode_escaped(spec, i, end) {
                Some(v) => {
                    i += 2; // at the escape's last byte
                    let vflags = PATH_FLAGS[v as usize];
                    if vflags & UNESCAPE != 0 {
                        out.push(v);
                        if let Some(l) = last_invalid_percent
                            && l + 3 >= out.len()
                        {
                            check_for_nested_escapes(spec, i + 1, l, &mut out);
                        }
                    } else {
                        // Kept as sent, hex case included.
                        out.extend_from_slice(&spec[i - 2..=i]);
                        if vflags & INVALID_BIT != 0 {
                            success = false;
                        }
                    }
                }
                None => {
                    // An invalid escape is passed through (Chromium's permissive way).
                    last_invalid_percent = Some(out.len());
                    out.push(b'%');
                }
            }
        } else if flags & INVALID_BIT != 0 {
            append_escaped(c, &mut out);
            success = false;
        } else if flags & ESCAPE_BIT != 0 {
            append_escaped(c, &mut out);
        }
        i += 1;
    }
    if success {
        Ok(out)
    } else {
        Err(PathError::Nul)
    }
}

#[cfg(test)]
mod tests;
