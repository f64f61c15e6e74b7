//! The gateway's modules form layers that only look down (DESIGN.md, "Architecture";
//! issue 11): this reads every `crate::…` path in `gateway-userspace/src` (with `syn`,
//! so comments and strings don't count) and fails on any top-level module that uses
//! a module of its own layer or of a layer above it. No import cycle can pass.
//!
//! Test code (`tests.rs`, `*_tests.rs`, `tests/` directories, `#[cfg(test)]` items) may
//! reach anywhere and is not read.
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use syn::visit::Visit;

/// Lowest first. A module may use modules of lower layers only; modules of one layer
/// are independent of each other.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "model: the Istio resources as parsed and validated",
        &["config"],
    ),
    (
        "primitives: process signals, kernel programs, balancers, ClientHello parsing",
        &["sys", "kernel", "lb", "tls"],
    ),
    ("the XDP guard's maps", &["xdp"]),
    ("policies and telemetry", &["authz", "telemetry"]),
    ("the compiled, immutable Plan", &["plan"]),
    ("the running gateway's shared state", &["server"]),
    ("data plane: HTTP", &["http"]),
    ("data plane: L4", &["proxy"]),
    ("data plane: accept and classify", &["listener"]),
    ("runtime: ports, reload, shutdown, DNS", &["runtime"]),
    ("views: proxy-config renders the Plan", &["proxyconfig"]),
    ("the admin endpoints", &["admin"]),
    ("the command line", &["cli"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, ms)| ms.contains(&module))
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway-userspace/src")
}

fn is_test_file(rel: &Path) -> bool {
    rel.components().any(|c| c.as_os_str() == "tests")
        || rel
            .file_stem()
            .and_then(|s| s.to_str())
            .is_some_and(|s| s == "tests" || s.ends_with("_tests"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Collects the top-level module every `crate::x…` path and `use crate::{x, …}` names.
#[derive(Default)]
struct Uses {
    found: Vec<(String, usize)>,
}

fn cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.meta.require_list().is_ok_and(|l| {
                l.tokens
                    .to_string()
                    .split(|c: char| !c.is_alphanumeric() && c != '_')
                    .any(|t| t == "test")
            })
    })
}

impl Uses {
    fn tree(&mut self, t: &syn::UseTree, under_crate: bool, line: usize) {
        match t {
            syn::UseTree::Path(p) if !under_crate && p.ident == "crate" => {
                self.tree(&p.tree, true, line);
            }
            syn::UseTree::Path(_) if !under_crate => {}
            syn::UseTree::Path(p) => self.found.push((p.ident.to_string(), line)),
            syn::UseTree::Name(n) if under_crate => self.found.push((n.ident.to_string(), line)),
            syn::UseTree::Rename(r) if under_crate => self.found.push((r.ident.to_string(), line)),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.tree(t, under_crate, line);
                }
            }
            _ => {}
        }
    }
}

impl<'a> Visit<'a> for Uses {
    fn visit_item(&mut self, i: &'a syn::Item) {
        let attrs = match i {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Impl(x) => &x.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Struct(s) => &s.attrs,
            syn::Item::Enum(e) => &e.attrs,
            syn::Item::Const(c) => &c.attrs,
            syn::Item::Static(s) => &s.attrs,
            _ => return syn::visit::visit_item(self, i),
        };
        if !cfg_test(attrs) {
            syn::visit::visit_item(self, i);
        }
    }

    fn visit_item_use(&mut self, u: &'a syn::ItemUse) {
        let line = u.use_token.span.start().line;
        self.tree(&u.tree, false, line);
    }

    fn visit_path(&mut self, p: &'a syn::Path) {
        let mut segs = p.segments.iter();
        if let (Some(first), Some(second)) = (segs.next(), segs.next())
            && first.ident == "crate"
        {
            self.found
                .push((second.ident.to_string(), first.ident.span().start().line));
        }
        syn::visit::visit_path(self, p);
    }
}

#[test]
fn modules_only_look_down() {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut violations = BTreeMap::<String, Vec<String>>::new();
    let mut unknown = Vec::new();
    let mut read = 0;
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        if is_test_file(rel) {
            continue;
        }
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap();
        let top = top.strip_suffix(".rs").unwrap_or(top);
        if top == "lib" || top == "main" {
            continue;
        }
        let Some(mine) = layer_of(top) else {
            unknown.push(format!(
                "{}: module `{top}` is in no layer of LAYERS",
                rel.display()
            ));
            continue;
        };
        let text = fs::read_to_string(f).unwrap();
        let ast = syn::parse_file(&text)
            .unwrap_or_else(|e| panic!("{}: does not parse: {e}", rel.display()));
        let mut uses = Uses::default();
        uses.visit_file(&ast);
        read += 1;
        for (used, line) in uses.found {
            if used == top || used == "self" || used == "super" {
                continue;
            }
            let Some(theirs) = layer_of(&used) else {
                unknown.push(format!(
                    "{}:{line}: `crate::{used}` is in no layer of LAYERS",
                    rel.display()
                ));
                continue;
            };
            if theirs >= mine {
                violations
                    .entry(format!("{top} -> {used}"))
                    .or_default()
                    .push(format!("{}:{line}", rel.display()));
            }
        }
    }
    assert!(read > 50, "read only {read} files under {}", src.display());
    assert!(unknown.is_empty(), "{}", unknown.join("\n"));
    let report: Vec<String> = violations
        .iter()
        .map(|(edge, at)| {
            let mut at = at.clone();
            at.dedup();
            format!("{edge} (same or higher layer): {}", at.join(", "))
        })
        .collect();
    assert!(
        report.is_empty(),
        "{} upward or sideways use(s); the layers, lowest first: {:?}\n{}",
        report.len(),
        LAYERS.iter().map(|(_, m)| m).collect::<Vec<_>>(),
        report.join("\n")
    );
}
