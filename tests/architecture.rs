//! The workspace's shape, checked from the code's own imports: inside every crate, no more than two
//! files import one another in a circle (ARCHITECTURE.md). Cargo forbids circles between crates; this
//! test keeps the modules inside each crate layered as well.
//!
//! A file imports another when it names an item through that file's module path: `crate::a::b`,
//! `super::x`, `self::x`, or a child module declared with `mod x;`, in `use` trees and in paths in code.
//! Comments, strings and character literals are skipped; `use super::*` in an inline test module names
//! its own file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crates whose modules are checked: each `src` folder of the workspace.
fn crate_roots() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut roots = vec![root.join("src")];
    for e in std::fs::read_dir(root.join("crates")).unwrap() {
        let src = e.unwrap().path().join("src");
        if src.is_dir() {
            roots.push(src);
        }
    }
    roots.sort();
    roots
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file below a crate's `src`: `a/b.rs` and `a/b/mod.rs` are `[a, b]`; `lib.rs` and
/// `main.rs` are the root.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts == ["lib"] || parts == ["main"] {
        parts.clear();
    }
    parts
}

/// The source with comments, strings and character literals blanked, so that only code is read.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let (mut out, mut i) = (String::with_capacity(b.len()), 0);
    while i < b.len() {
        let rest = &src[i..];
        if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
        } else if rest.starts_with("/*") {
            i += rest.find("*/").map_or(rest.len(), |e| e + 2);
        } else if let Some(hashes) = raw_string_start(rest) {
            let close = format!("\"{}", "#".repeat(hashes));
            let body = 2 + hashes;
            i += rest[body..]
                .find(&close)
                .map_or(rest.len(), |e| body + e + close.len());
            out.push_str("\"\"");
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            i = j + 1;
            out.push_str("\"\"");
        } else if let Some(n) = char_literal_len(rest) {
            i += n;
            out.push_str("' '");
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// `r"` or `r#"`…: the number of `#`s, if a raw string starts here.
fn raw_string_start(rest: &str) -> Option<usize> {
    let after = rest.strip_prefix('r')?;
    let hashes = after.len() - after.trim_start_matches('#').len();
    after[hashes..].starts_with('"').then_some(hashes)
}

/// The length of a character literal starting here (`'a'`, `'\n'`, `'\u{1F600}'`), not of a lifetime.
fn char_literal_len(rest: &str) -> Option<usize> {
    let after = rest.strip_prefix('\'')?;
    if let Some(esc) = after.strip_prefix('\\') {
        // The escaped character, then anything up to the closing quote (`\u{…}`).
        return esc.get(1..)?.find('\'').map(|e| e + 4);
    }
    let c = after.chars().next()?;
    after[c.len_utf8()..]
        .starts_with('\'')
        .then_some(2 + c.len_utf8())
}

/// Every path (a `::`-separated list of identifiers) in the code, with the depth of inline `mod x {`
/// blocks it stands in; `use` trees with braces expanded.
fn paths_in(code: &str) -> Vec<(Vec<String>, usize)> {
    let mut out = Vec::new();
    let tokens = tokenize(code);
    let mut depth_stack: Vec<bool> = Vec::new(); // per open brace: does it open an inline module?
    let mut inline = 0;
    let mut i = 0;
    while i < tokens.len() {
        match tokens[i].as_str() {
            "{" => {
                let is_mod = i >= 2 && tokens[i - 2] == "mod";
                inline += usize::from(is_mod);
                depth_stack.push(is_mod);
            }
            "}" => inline -= usize::from(depth_stack.pop().unwrap_or(false)),
            "use" => {
                let end = (i..tokens.len())
                    .find(|&j| tokens[j] == ";")
                    .unwrap_or(tokens.len());
                for p in expand_use(&tokens[i + 1..end]) {
                    out.push((p, inline));
                }
                i = end;
            }
            t if is_ident(t) && tokens.get(i + 1).is_some_and(|n| n == "::") => {
                let mut p = vec![t.to_owned()];
                let mut j = i + 1;
                while tokens.get(j).is_some_and(|n| n == "::")
                    && tokens.get(j + 1).is_some_and(|n| is_ident(n))
                {
                    p.push(tokens[j + 1].clone());
                    j += 2;
                }
                out.push((p, inline));
                i = j - 1;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

fn is_ident(t: &str) -> bool {
    t.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
        && t.chars().all(|c| c.is_alphanumeric() || c == '_')
}

/// Identifiers, `::`, and single punctuation characters.
fn tokenize(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = code.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c.is_alphanumeric() || c == '_' {
            let mut end = i + c.len_utf8();
            while let Some(&(j, d)) = chars.peek() {
                if !(d.is_alphanumeric() || d == '_') {
                    break;
                }
                end = j + d.len_utf8();
                chars.next();
            }
            out.push(code[i..end].to_owned());
        } else if c == ':' && chars.peek().is_some_and(|&(_, d)| d == ':') {
            chars.next();
            out.push("::".into());
        } else if !c.is_whitespace() {
            out.push(c.to_string());
        }
    }
    out
}

/// The paths a `use` tree names: `a::{b, c::{d, self}}` is `a::b`, `a::c::d` and `a::c`.
fn expand_use(tokens: &[String]) -> Vec<Vec<String>> {
    fn walk(tokens: &[String], prefix: &[String], out: &mut Vec<Vec<String>>) {
        let mut path = prefix.to_vec();
        let mut i = 0;
        while i < tokens.len() {
            match tokens[i].as_str() {
                "::" => {}
                "{" => {
                    let mut depth = 0;
                    let mut start = i + 1;
                    for j in i..tokens.len() {
                        match tokens[j].as_str() {
                            "{" => depth += 1,
                            "}" => depth -= 1,
                            "," if depth == 1 => {
                                walk(&tokens[start..j], &path, out);
                                start = j + 1;
                            }
                            _ => {}
                        }
                        if depth == 0 {
                            walk(&tokens[start..j], &path, out);
                            return;
                        }
                    }
                    return;
                }
                "as" => break,
                "self" if !path.is_empty() => {}
                t => path.push(t.to_owned()),
            }
            i += 1;
        }
        if !path.is_empty() {
            out.push(path);
        }
    }
    let mut out = Vec::new();
    walk(tokens, &[], &mut out);
    out
}

/// The file-level import graph of one crate.
fn imports(src: &Path) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeMap<Vec<String>, PathBuf> = files
        .iter()
        .map(|f| (module_of(src, f), f.clone()))
        .collect();
    let mut graph = BTreeMap::new();
    for file in &files {
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        let me = module_of(src, file);
        let children: BTreeSet<String> = tokenize(&code)
            .windows(3)
            .filter(|w| w[0] == "mod" && w[2] == ";")
            .map(|w| w[1].clone())
            .collect();
        let mut targets = BTreeSet::new();
        for (path, mut inline) in paths_in(&code) {
            let mut segs = path.as_slice();
            let mut base = me.clone();
            match segs.first().map(String::as_str) {
                Some("crate") => {
                    base.clear();
                    segs = &segs[1..];
                }
                Some("super") | Some("self") => {
                    while let Some(s) = segs.first().map(String::as_str) {
                        match s {
                            "super" if inline > 0 => inline -= 1,
                            "super" => {
                                base.pop();
                            }
                            "self" => {}
                            _ => break,
                        }
                        segs = &segs[1..];
                    }
                }
                Some(first) if children.contains(first) => {}
                _ => continue,
            }
            let full: Vec<String> = base.into_iter().chain(segs.iter().cloned()).collect();
            let target = (0..=full.len()).rev().find_map(|n| modules.get(&full[..n]));
            if let Some(t) = target.filter(|t| *t != file) {
                targets.insert(t.clone());
            }
        }
        graph.insert(file.clone(), targets);
    }
    graph
}

/// The strongly connected components of more than one file (Tarjan's algorithm).
fn circles(graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<Vec<PathBuf>> {
    struct State<'a> {
        graph: &'a BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        index: BTreeMap<&'a PathBuf, usize>,
        low: BTreeMap<&'a PathBuf, usize>,
        stack: Vec<&'a PathBuf>,
        on_stack: BTreeSet<&'a PathBuf>,
        found: Vec<Vec<PathBuf>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a PathBuf) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in &s.graph[v] {
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                s.low.entry(v).and_modify(|l| *l = (*l).min(lw));
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                s.low.entry(v).and_modify(|l| *l = (*l).min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.clone());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.found
}

#[test]
fn no_more_than_two_files_import_one_another_in_a_circle() {
    let mut too_big = Vec::new();
    for src in crate_roots() {
        for circle in circles(&imports(&src)) {
            if circle.len() > 2 {
                too_big.push(circle);
            }
        }
    }
    assert!(
        too_big.is_empty(),
        "files that import one another in a circle of more than two: {too_big:#?}"
    );
}

/// The agent crate's modules by layer, from the top (ARCHITECTURE.md, `src/lib.rs`): a module may import
/// its own layer and those below, never one above.
const AGENT_LAYERS: &[&[&str]] = &[
    &[
        "main",
        "lib",
        "commands",
        "upload",
        "pull",
        "demo",
        "sandbox_command",
        "manual",
    ],
    &["start"],
    &["agent"],
    &["after"],
    &["notify", "metrics", "status", "receipt", "preflight"],
    &["deliver", "outbox", "item_folder"],
    &["journal"],
    &["rules", "settle", "watch", "access"],
    &[
        "config",
        "cli",
        "clock",
        "fsutil",
        "share",
        "service",
        "statelock",
    ],
];

#[test]
fn the_agent_s_modules_import_only_their_own_layer_and_those_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let layer_of = |file: &Path| {
        let top = module_of(&src, file).first().cloned();
        let name = top.unwrap_or_else(|| file.file_stem().unwrap().to_string_lossy().into_owned());
        AGENT_LAYERS
            .iter()
            .position(|l| l.contains(&name.as_str()))
            .unwrap_or_else(|| panic!("{} is in no layer of AGENT_LAYERS", file.display()))
    };
    let mut upward = Vec::new();
    for (file, targets) in imports(&src) {
        for t in targets {
            if layer_of(&t) < layer_of(&file) {
                upward.push((file.clone(), t));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "modules importing a layer above their own: {upward:#?}"
    );
}

#[test]
fn the_import_reader_sees_circles_where_there_are_some() {
    // Three files, each naming the next: through `crate::`, `super::` and a re-export of the root.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir(src.join("b")).unwrap();
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\n").unwrap();
    std::fs::write(
        src.join("a.rs"),
        "use crate::b::c::Thing; // crate::nothing\n",
    )
    .unwrap();
    std::fs::write(
        src.join("b/mod.rs"),
        "pub mod c;\nfn f() { super::a::g(\"crate::c\"); }\n",
    )
    .unwrap();
    std::fs::write(
        src.join("b/c.rs"),
        "use super::{self, super::a};\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\n",
    )
    .unwrap();
    let found = circles(&imports(src));
    let names: Vec<Vec<String>> = found
        .iter()
        .map(|c| {
            c.iter()
                .map(|f| f.strip_prefix(src).unwrap().display().to_string())
                .collect()
        })
        .collect();
    assert_eq!(names, [["a.rs", "b/c.rs", "b/mod.rs"]]);
}
