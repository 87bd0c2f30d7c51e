//! The layer map of ARCHITECTURE.md, enforced: every `crate::…` and `super::…` path in `src/`
//! (in `use` lines and in code; comments and doc links do not count) is an import of one file
//! by another, and
//!
//! * imports point down the layers `cmd` → `daemon` → `config` → `tunnel` → `files` → `proto`,
//!   with `addr` beside `proto` at the bottom;
//! * `cmd` reaches the runtime only through `daemon` (nothing of `tunnel`), `config` knows only
//!   `tunnel::settings` of the runtime, and `proto` and `addr` import nothing else of the crate;
//! * there is no import cycle between files (a `mod.rs` and its own children aside).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One file of `src/` as a module path (`tunnel::pool`; `tunnel` for `tunnel/mod.rs`).
#[derive(Debug)]
struct File {
    path: PathBuf,
    text: String,
}

/// An import: from one module to another, with where it is written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Edge {
    from: String,
    to: String,
    at: String,
}

fn sources() -> BTreeMap<String, File> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&root).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            // The crate root and the binary sit above every layer.
            if parts == ["lib"] || parts == ["main"] {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            out.insert(parts.join("::"), File { path, text });
        }
    }
    out
}

/// The text with comments blanked (lines kept) and string and char literals emptied, so that
/// only code is searched for paths.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            while i < b.len() && !b[i..].starts_with(b"*/") {
                if b[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' || (b[i] == b'r' && b[i..].starts_with(b"r#\"")) {
            // A string (or a raw string with one `#`): skip to its end.
            let raw = b[i] == b'r';
            i += if raw { 3 } else { 1 };
            while i < b.len() {
                if raw && b[i..].starts_with(b"\"#") {
                    i += 2;
                    break;
                }
                if !raw && b[i] == b'\\' {
                    i += 2;
                    continue;
                }
                if !raw && b[i] == b'"' {
                    i += 1;
                    break;
                }
                if b[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            out.push_str("\"\"");
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal ('x' or '\n'); lifetimes have no closing quote and stay.
            let end = b[i + 1..].iter().position(|&c| c == b'\'').unwrap_or(0);
            i += end + 2;
            out.push_str("' '");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The paths a use-tree names, from just after `crate::` or `super::`: `a::b::{c, d::e}` gives
/// `a::b::c` and `a::b::d::e` (and `a::b` itself).
fn use_tree(b: &[u8], mut i: usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix;
    loop {
        let start = i;
        while i < b.len() && is_ident(b[i]) {
            i += 1;
        }
        if i > start {
            path.push(String::from_utf8_lossy(&b[start..i]).into_owned());
        }
        if b[i..].starts_with(b"::{") {
            out.push(path.clone());
            i += 3;
            loop {
                while i < b.len() && b[i].is_ascii_whitespace() {
                    i += 1;
                }
                if i >= b.len() || b[i] == b'}' {
                    return i + 1;
                }
                i = use_tree(b, i, path.clone(), out);
                while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b',') {
                    i += 1;
                }
            }
        } else if b[i..].starts_with(b"::") && i + 2 < b.len() && is_ident(b[i + 2]) {
            i += 2;
        } else {
            out.push(path);
            // Skip an `as NAME` and anything else up to the end of this tree item.
            while i < b.len() && !matches!(b[i], b',' | b'}' | b';') {
                i += 1;
            }
            return i;
        }
    }
}

fn edges(files: &BTreeMap<String, File>) -> Vec<Edge> {
    let mut out = BTreeSet::new();
    for (module, file) in files {
        let code = code_only(&file.text);
        let b = code.as_bytes();
        // `super` of this file's module; inside its inline `mod tests` it is the module itself.
        let mut parent: Vec<String> = module.split("::").map(str::to_owned).collect();
        parent.pop();
        let tests_at = code.find("\nmod tests {").unwrap_or(usize::MAX);
        let mut i = 0;
        while i < b.len() {
            let at_word = i == 0 || !is_ident(b[i - 1]) && b[i - 1] != b':';
            let (base, skip) = if at_word && b[i..].starts_with(b"crate::") {
                (Vec::new(), 7)
            } else if at_word && b[i..].starts_with(b"super::") {
                if i > tests_at {
                    (module.split("::").map(str::to_owned).collect(), 7)
                } else {
                    (parent.clone(), 7)
                }
            } else {
                i += 1;
                continue;
            };
            let mut paths = Vec::new();
            let line = code[..i].matches('\n').count() + 1;
            let end = if b[i + skip] == b'{' {
                use_tree(b, i + skip - 2, base, &mut paths)
            } else {
                use_tree(b, i + skip, base, &mut paths)
            };
            for path in paths {
                // The longest prefix of the path that is a file of `src/`.
                let target = (1..=path.len())
                    .rev()
                    .map(|n| path[..n].join("::"))
                    .find(|m| files.contains_key(m));
                if let Some(to) = target.filter(|to| to != module) {
                    let rel = file
                        .path
                        .strip_prefix(env!("CARGO_MANIFEST_DIR"))
                        .unwrap()
                        .display()
                        .to_string();
                    out.insert(Edge {
                        from: module.clone(),
                        to,
                        at: format!("{rel}:{line}"),
                    });
                }
            }
            i = end.max(i + 1);
        }
    }
    out.into_iter().collect()
}

/// The layer a module belongs to, lowest first.
fn rank(module: &str) -> usize {
    match module.split("::").next().unwrap() {
        "proto" | "addr" => 0,
        "files" => 1,
        "tunnel" => 2,
        "config" => 3,
        "daemon" => 4,
        "cmd" => 5,
        other => panic!("module {other} is in no layer: add it to the map (ARCHITECTURE.md)"),
    }
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap()
}

/// True when one module is the other's ancestor (a `mod.rs` and its own children).
fn related(a: &str, b: &str) -> bool {
    a.starts_with(&format!("{b}::")) || b.starts_with(&format!("{a}::"))
}

fn forbidden(e: &Edge) -> Option<&'static str> {
    let (from, to) = (top(&e.from), top(&e.to));
    if from == to {
        return None;
    }
    if matches!(from, "proto" | "addr") {
        return Some("proto and addr import nothing else of the crate");
    }
    if rank(&e.to) > rank(&e.from) {
        return Some("imports point down the layers");
    }
    if from == "cmd" && to == "tunnel" {
        return Some("cmd reaches the runtime through daemon");
    }
    if from == "config" && to == "tunnel" && e.to != "tunnel::settings" {
        return Some("config knows only tunnel::settings of the runtime");
    }
    None
}

#[test]
fn imports_point_down_the_layers() {
    let files = sources();
    let all = edges(&files);
    assert!(
        all.iter()
            .any(|e| e.from == "daemon::build" || e.from.starts_with("cmd")),
        "no import found at all: the scanner is broken"
    );
    let bad: Vec<String> = all
        .iter()
        .filter_map(|e| forbidden(e).map(|why| format!("{}: {} -> {} ({why})", e.at, e.from, e.to)))
        .collect();
    assert!(
        bad.is_empty(),
        "imports against the layer map:\n{}",
        bad.join("\n")
    );
}

#[test]
fn no_import_cycle_between_files() {
    let files = sources();
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut at: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    let all = edges(&files);
    for e in &all {
        if related(&e.from, &e.to) {
            continue;
        }
        graph.entry(&e.from).or_default().insert(&e.to);
        at.entry((&e.from, &e.to)).or_insert(&e.at);
    }
    // Tarjan's strongly connected components; any with two or more files is a cycle.
    struct Scc<'a> {
        graph: &'a BTreeMap<&'a str, BTreeSet<&'a str>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<&'a str>>,
    }
    impl<'a> Scc<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for &w in self.graph.get(v).into_iter().flatten() {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut comp = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    comp.push(w);
                    if w == v {
                        break;
                    }
                }
                if comp.len() > 1 {
                    comp.sort_unstable();
                    self.found.push(comp);
                }
            }
        }
    }
    let mut scc = Scc {
        graph: &graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for m in files.keys() {
        if !scc.index.contains_key(m.as_str()) {
            scc.visit(m);
        }
    }
    let report: Vec<String> = scc
        .found
        .iter()
        .map(|comp| {
            let inside: Vec<String> = comp
                .iter()
                .flat_map(|a| comp.iter().map(move |b| (*a, *b)))
                .filter_map(|k| at.get(&k).map(|w| format!("  {w}: {} -> {}", k.0, k.1)))
                .collect();
            format!("cycle {comp:?}:\n{}", inside.join("\n"))
        })
        .collect();
    assert!(report.is_empty(), "{}", report.join("\n"));
}

/// The scanner itself: it must see a path in a use group, an in-body path and `super::`, and
/// nothing in comments or strings.
#[test]
fn the_import_scanner_sees_what_it_must() {
    let text = "use crate::{a::B, b::{c::D, e}};\n// crate::x::Y\nfn f() { let s = \"crate::x\"; crate::f::g(); super::h::i(); }\n";
    let code = code_only(text);
    assert!(!code.contains("crate::x"), "{code}");
    let mut files = BTreeMap::new();
    for m in ["a", "b::c", "b::e", "f", "z::h", "z::me", "x"] {
        files.insert(
            m.to_owned(),
            File {
                path: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("src/{m}.rs")),
                text: String::new(),
            },
        );
    }
    files.get_mut("z::me").unwrap().text = text.to_owned();
    let found: BTreeSet<String> = edges(&files).into_iter().map(|e| e.to).collect();
    let want: BTreeSet<String> = ["a", "b::c", "b::e", "f", "z::h"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(found, want);
}
