//! Source handling: splitting a file into YAML documents, mapping node paths
//! to file positions, and translating serde_yaml errors into file positions.
//!
//! Each document is parsed on its own (so that one broken document does not
//! hide errors in the others). To keep positions file-relative, a document is
//! cut out at line boundaries and its `---` marker is blanked with spaces, so
//! columns are unchanged and lines only need `line_offset` added.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

use super::{ConfigError, Loc};

/// One YAML document of a file.
#[derive(Debug, Default, Clone)]
pub(crate) struct DocText {
    /// Document text; lines before it are not included.
    pub text: String,
    /// Number of file lines before the first line of `text`.
    pub line_offset: usize,
}

/// `---` (or `...`) at column 0 followed by whitespace or end of line.
fn marker_len(line: &str, marker: &str) -> Option<usize> {
    let rest = line.strip_prefix(marker)?;
    (rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n'])).then_some(marker.len())
}

/// Splits a multi-document stream at `---` lines. YAML forbids document
/// markers at column 0 inside any scalar, so a line-based split is exact.
pub(crate) fn split_documents(src: &str) -> Vec<DocText> {
    let src = src.strip_prefix('\u{feff}').unwrap_or(src);
    // YAML also ends a line at a lone CR. Make it a LF (same length: columns stay) so
    // that documents are split, and lines counted, the way the YAML parsers see them.
    let src = &lone_cr_to_lf(src);
    let mut docs = Vec::new();
    let mut cur = String::new();
    let mut cur_offset = 0;
    for (lineno, line) in src.split_inclusive('\n').enumerate() {
        if marker_len(line, "---").is_some() {
            docs.push(DocText {
                text: std::mem::take(&mut cur),
                line_offset: cur_offset,
            });
            cur_offset = lineno;
            cur.push_str("   ");
            cur.push_str(&line[3..]);
        } else if marker_len(line, "...").is_some() {
            cur.push_str("   ");
            cur.push_str(&line[3..]);
        } else {
            cur.push_str(line);
        }
    }
    docs.push(DocText {
        text: cur,
        line_offset: cur_offset,
    });
    docs.retain(|d| !is_blank(&d.text));
    docs
}

fn lone_cr_to_lf(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(i) = rest.find('\r') {
        let at = src.len() - rest.len() + i;
        out.push_str(&rest[..i]);
        out.push(if b.get(at + 1) == Some(&b'\n') {
            '\r'
        } else {
            '\n'
        });
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
    out
}

/// 1-based line and column (in characters) of byte `index` of `text`, lines ending at
/// LF, CRLF or a lone CR (YAML 1.2's line breaks). libyaml (serde_yaml) also ends lines
/// at U+0085, U+2028 and U+2029 (YAML 1.1), so its own line numbers can run past the
/// file's end; positions are computed from its byte index instead.
pub(crate) fn line_col(text: &str, index: usize) -> (usize, usize) {
    let mut end = index.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let b = text.as_bytes();
    let (mut line, mut start) = (1, 0);
    for (i, &c) in b[..end].iter().enumerate() {
        if c == b'\n' || (c == b'\r' && b.get(i + 1) != Some(&b'\n')) {
            line += 1;
            start = i + 1;
        }
    }
    (line, text[start..end].chars().count() + 1)
}

/// Only whitespace, comments and directives.
fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || l.starts_with('%')
    })
}

/// Positions (file-relative, 1-based line and column) of every node of one
/// document, keyed by path: `spec.servers[0].port.number`. The document root
/// has the empty path.
///
/// Indexed on the first lookup, from the document's text: only an error needs a
/// position, and indexing every document up front cost a second YAML parse and a map
/// of path strings per document (10 000 VirtualServices: a third of `gateway
/// validate`'s time and ~40 MB).
#[derive(Debug, Default, Clone)]
pub(crate) struct Positions {
    doc: Arc<LazyIndex>,
}

#[derive(Debug, Default)]
struct LazyIndex {
    doc: DocText,
    map: OnceLock<Index>,
}

/// Node positions by path, and where each mapping key is written (the key of
/// `spec.http[0].corsPolicy` is the `corsPolicy` token; its node is the value).
#[derive(Debug, Default)]
struct Index {
    nodes: HashMap<String, (usize, usize)>,
    keys: HashMap<String, (usize, usize)>,
}

impl Positions {
    /// Keeps the document for indexing when a position is first asked for.
    pub fn build(doc: &DocText) -> Positions {
        Positions {
            doc: Arc::new(LazyIndex {
                doc: doc.clone(),
                map: OnceLock::new(),
            }),
        }
    }

    fn map(&self) -> &HashMap<String, (usize, usize)> {
        &self.index().nodes
    }

    fn index(&self) -> &Index {
        self.doc
            .map
            .get_or_init(|| Self::build_index(&self.doc.doc))
    }

    /// Builds the index. A document that does not parse yields whatever was
    /// seen before the error (serde_yaml reports the syntax error itself).
    fn build_index(doc: &DocText) -> Index {
        let mut recv = Recorder {
            line_offset: doc.line_offset,
            lines: doc.text.lines().collect(),
            frames: Vec::new(),
            map: HashMap::new(),
            keys: HashMap::new(),
        };
        let _ = Parser::new_from_str(&doc.text).load(&mut recv, false);
        // yaml-rust2 can mark a node that ends the stream (the implicit null key of
        // `? ` at the end of a file) on a line after the last one: keep positions
        // inside the document.
        let last = doc.text.rsplit('\n').next().unwrap_or_default();
        let end = (
            doc.line_offset + doc.text.matches('\n').count() + 1,
            last.chars().count() + 1,
        );
        for pos in recv.map.values_mut().chain(recv.keys.values_mut()) {
            *pos = (*pos).min(end);
        }
        Index {
            nodes: recv.map,
            keys: recv.keys,
        }
    }

    /// Where the key naming `path` is written (`corsPolicy:` for
    /// `spec.http[0].corsPolicy`); for a path that is not a mapping entry, as [`find`].
    ///
    /// [`find`]: Positions::find
    pub fn find_key(&self, path: &str) -> (usize, usize) {
        match self.index().keys.get(path) {
            Some(pos) => *pos,
            None => self.find(path),
        }
    }

    /// Position of `path`, or of its nearest existing ancestor (so that a
    /// missing optional field is reported at the object that lacks it).
    pub fn find(&self, path: &str) -> (usize, usize) {
        let map = self.map();
        let mut p = path;
        loop {
            if let Some(pos) = map.get(p) {
                return *pos;
            }
            if p.is_empty() {
                return (1, 1);
            }
            p = parent(p);
        }
    }
}

fn parent(path: &str) -> &str {
    if path.ends_with(']')
        && let Some(i) = path.rfind('[')
    {
        return &path[..i];
    }
    match path.rfind('.') {
        Some(i) => &path[..i],
        None => "",
    }
}

enum Frame {
    /// `key` is `None` while waiting for a key; `positioned` records whether
    /// the mapping's own position has been fixed to its first key yet.
    Map {
        path: String,
        key: Option<String>,
        positioned: bool,
    },
    Seq {
        path: String,
        index: usize,
    },
}

struct Recorder<'a> {
    line_offset: usize,
    lines: Vec<&'a str>,
    frames: Vec<Frame>,
    map: HashMap<String, (usize, usize)>,
    keys: HashMap<String, (usize, usize)>,
}

impl Recorder<'_> {
    /// yaml-rust2 marks an "indentless" block sequence (`key:\n- item`, with
    /// the dash under the key) at its first item; point at the dash instead.
    fn sequence_start(&self, mark: Marker) -> (usize, usize) {
        let col = mark.col();
        if let Some(line) = self.lines.get(mark.line().wrapping_sub(1)) {
            let before: Vec<char> = line.chars().take(col).collect();
            let trimmed = before.iter().rposition(|c| *c != ' ');
            if let Some(i) = trimmed.filter(|&i| before[i] == '-') {
                return (mark.line() + self.line_offset, i + 1);
            }
        }
        (mark.line() + self.line_offset, col + 1)
    }

    fn child_path(&self) -> String {
        match self.frames.last() {
            None => String::new(),
            Some(Frame::Map { path, key, .. }) => {
                let k = key.as_deref().unwrap_or("?");
                if path.is_empty() {
                    k.to_string()
                } else {
                    format!("{path}.{k}")
                }
            }
            Some(Frame::Seq { path, index }) => format!("{path}[{index}]"),
        }
    }

    /// A value node finished: the parent moves to its next key/item.
    fn advance(&mut self) {
        match self.frames.last_mut() {
            Some(Frame::Map { key, .. }) => {
                *key = if key.is_some() {
                    None
                } else {
                    Some("?".into())
                };
            }
            Some(Frame::Seq { index, .. }) => *index += 1,
            None => {}
        }
    }

    fn record(&mut self, path: String, pos: (usize, usize)) {
        self.map.entry(path).or_insert(pos);
    }
}

impl MarkedEventReceiver for Recorder<'_> {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        // yaml-rust2 lines are 1-based, columns 0-based.
        let pos = (mark.line() + self.line_offset, mark.col() + 1);
        match ev {
            Event::Scalar(value, ..) => {
                if let Some(Frame::Map {
                    path,
                    key: key @ None,
                    positioned,
                }) = self.frames.last_mut()
                {
                    // A key. Block mapping start marks are imprecise; the
                    // first key is where a reader sees the mapping begin.
                    if !*positioned {
                        *positioned = true;
                        let p = path.clone();
                        self.map.insert(p, pos);
                    }
                    let key_path = if path.is_empty() {
                        value.clone()
                    } else {
                        format!("{path}.{value}")
                    };
                    *key = Some(value);
                    self.keys.entry(key_path).or_insert(pos);
                    return;
                }
                let p = self.child_path();
                self.record(p, pos);
                self.advance();
            }
            Event::Alias(_) => {
                let p = self.child_path();
                self.record(p, pos);
                self.advance();
            }
            Event::SequenceStart(..) => {
                let p = self.child_path();
                let pos = self.sequence_start(mark);
                self.record(p.clone(), pos);
                self.frames.push(Frame::Seq { path: p, index: 0 });
            }
            Event::MappingStart(..) => {
                let p = self.child_path();
                self.record(p.clone(), (pos.0, pos.1.saturating_sub(1).max(1)));
                self.frames.push(Frame::Map {
                    path: p,
                    key: None,
                    positioned: false,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                self.frames.pop();
                self.advance();
            }
            _ => {}
        }
    }
}

/// One parsed document: where it came from and where its nodes are.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub file: PathBuf,
    pub positions: Positions,
    /// `Kind namespace/name` of the resource, for warnings (empty when unknown).
    pub subject: Arc<str>,
}

impl Source {
    pub fn loc(&self, path: &str) -> Loc {
        let (line, col) = self.positions.find(path);
        Loc {
            file: self.file.clone(),
            line,
            col,
        }
    }

    /// Position of the key that names `path` (see [`Positions::find_key`]).
    pub fn key_loc(&self, path: &str) -> Loc {
        let (line, col) = self.positions.find_key(path);
        Loc {
            file: self.file.clone(),
            line,
            col,
        }
    }

    pub fn error(&self, path: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            loc: self.loc(path),
            message: message.into(),
        }
    }
}

/// Converts a serde_yaml error on a document into a file-positioned error.
/// serde_yaml appends " at line L column C" to its message; that part is
/// replaced by our own (file-relative) location.
pub(crate) fn serde_error(file: &Path, doc: &DocText, err: &serde_yaml::Error) -> ConfigError {
    let text = err.to_string();
    let message = match text.rfind(" at line ") {
        Some(i) if err.location().is_some() => text[..i].to_string(),
        _ => text,
    };
    let (line, col) = err
        .location()
        .map_or((1, 1), |l| line_col(&doc.text, l.index()));
    ConfigError {
        loc: Loc {
            file: file.to_path_buf(),
            line: line + doc.line_offset,
            col,
        },
        message,
    }
}
