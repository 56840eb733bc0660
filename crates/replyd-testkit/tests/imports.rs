//! The import rule of ARCHITECTURE.md, checked on every crate's sources:
//! **no import circle spans more than one module and its own submodules.**
//! A module and its children may use one another (a folder's `mod.rs` and
//! the files beside it); its children's subtrees, taken as wholes, are
//! layers that form no circle, at every level, the crate's top-level
//! modules included. Modules that use one another in a circle across
//! subtrees cannot be read on their own (as configuration once could not,
//! being in a circle with the runtime through the broker sections).
//!
//! The check reads the sources as text: every `crate::…`, `super::…` and
//! `self::…` path outside comments, strings and `#[cfg(test)]` modules,
//! resolved to the longest module it names, is an edge from the module
//! whose file it is in. Circles are the strongly connected components of
//! that graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type ModPath = Vec<String>;

/// A crate's modules: each file's module path and the paths it uses.
fn read_crate(src: &Path) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let mut files = Vec::new();
    walk(src, &mut files);
    let mut out = BTreeMap::new();
    for file in files {
        let me = module_of(src, &file);
        let text = strip(&std::fs::read_to_string(&file).unwrap());
        let is_dir_module = matches!(
            file.file_name().and_then(|n| n.to_str()),
            Some("mod.rs" | "lib.rs" | "main.rs")
        );
        let used = paths(&text, &me, is_dir_module);
        out.insert(me, used);
    }
    out
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b.rs` and `src/a/b/mod.rs` are `a::b`; `lib.rs` is the root.
fn module_of(src: &Path, file: &Path) -> ModPath {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The source without comments, string and char literals, and
/// `#[cfg(test)]` items (tests may reach anywhere).
fn strip(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'r' && (b[i + 1..].starts_with(b"\"") || b[i + 1..].starts_with(b"#")) {
            // A raw string: r"…", r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while j < b.len() && b[j] == b'#' {
                hashes += 1;
                j += 1;
            }
            if j < b.len() && b[j] == b'"' {
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                j += 1;
                while j < b.len() && !b[j..].starts_with(&close) {
                    j += 1;
                }
                i = j + close.len();
                out.push_str("\"\"");
            } else {
                out.push('r');
                i += 1;
            }
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal ('a', '\n'), not a lifetime.
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    drop_test_items(&out)
}

/// Removes each `#[cfg(test)]` item (up to its matching closing brace, or
/// the `;` of a one-line item).
fn drop_test_items(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        let brace = item.find('{');
        let semi = item.find(';');
        let end = match (brace, semi) {
            (Some(b), Some(s)) if s < b => s + 1,
            (Some(b), _) => {
                let mut depth = 0;
                let mut end = item.len();
                for (k, c) in item[b..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = b + k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (None, Some(s)) => s + 1,
            (None, None) => item.len(),
        };
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// Every module path the text names through `crate::`, `super::` or
/// `self::` (including inside `use …::{…}` groups).
fn paths(text: &str, me: &ModPath, is_dir_module: bool) -> BTreeSet<ModPath> {
    let b = text.as_bytes();
    let mut found = BTreeSet::new();
    let mut i = 0;
    while i < b.len() {
        let word_start =
            i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_' || b[i - 1] == b':');
        let base = if !word_start {
            None
        } else if b[i..].starts_with(b"crate::") {
            i += "crate::".len();
            Some(Vec::new())
        } else if b[i..].starts_with(b"self::") {
            i += "self::".len();
            Some(if is_dir_module {
                me.clone()
            } else {
                parent(me)
            })
        } else if b[i..].starts_with(b"super::") {
            // In `a/b.rs` (module a::b) `super` is `a`; in `a/b/mod.rs`
            // too. Each further `super::` goes up one more.
            let mut m = me.clone();
            while b[i..].starts_with(b"super::") {
                m.pop();
                i += "super::".len();
            }
            Some(m)
        } else {
            None
        };
        match base {
            Some(base) => i = path_from(b, i, base, &mut found),
            None => i += 1,
        }
    }
    found
}

fn parent(m: &ModPath) -> ModPath {
    m[..m.len().saturating_sub(1)].to_vec()
}

/// Reads `ident::ident::…` or a `{…}` group at `i` after `base`, adding
/// each full path; returns where it ended.
fn path_from(b: &[u8], mut i: usize, base: ModPath, found: &mut BTreeSet<ModPath>) -> usize {
    let mut path = base;
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < b.len() && b[i] == b'{' {
            // A group: each item is a path from here.
            i += 1;
            loop {
                while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b',') {
                    i += 1;
                }
                if i >= b.len() || b[i] == b'}' {
                    return i + 1;
                }
                let before = i;
                i = path_from(b, i, path.clone(), found);
                // Skip `as name` and anything else up to the next item.
                while i < b.len() && b[i] != b',' && b[i] != b'}' {
                    i += 1;
                }
                if i == before {
                    i += 1;
                }
            }
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        if i == start {
            found.insert(path);
            return i;
        }
        path.push(String::from_utf8_lossy(&b[start..i]).into_owned());
        if b[i..].starts_with(b"::") {
            i += 2;
        } else {
            found.insert(path);
            return i;
        }
    }
}

/// The longest known module `p` names (a path ends in an item, which is
/// in the module before it).
fn module_named(p: &ModPath, known: &BTreeSet<ModPath>) -> ModPath {
    let mut m = p.clone();
    while !known.contains(&m) {
        m.pop();
    }
    m
}

/// The circles (strongly connected components of more than one module).
fn circles(graph: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<ModPath>> {
    // Kosaraju: order by finish time, then walk the reversed graph.
    fn visit(
        n: &ModPath,
        g: &BTreeMap<ModPath, BTreeSet<ModPath>>,
        seen: &mut BTreeSet<ModPath>,
        out: &mut Vec<ModPath>,
    ) {
        if !seen.insert(n.clone()) {
            return;
        }
        for m in g.get(n).into_iter().flatten() {
            visit(m, g, seen, out);
        }
        out.push(n.clone());
    }
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for n in graph.keys() {
        visit(n, graph, &mut seen, &mut order);
    }
    let mut reversed: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    for (a, bs) in graph {
        for b in bs {
            reversed.entry(b.clone()).or_default().insert(a.clone());
        }
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for n in order.iter().rev() {
        let mut comp = Vec::new();
        visit(n, &reversed, &mut seen, &mut comp);
        if comp.len() > 1 {
            comp.sort();
            out.push(comp);
        }
    }
    out
}

fn graph_of(src: &Path) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let modules = read_crate(src);
    let known: BTreeSet<ModPath> = modules.keys().cloned().collect();
    modules
        .iter()
        .map(|(me, used)| {
            let mut used = used.clone();
            used.extend(child_paths(src, me, &known));
            // A module using its ancestors' items is the tree's own
            // direction (they are visible to it, privately even); such
            // edges make no circle worth reporting.
            let edges = used
                .iter()
                .map(|p| module_named(p, &known))
                .filter(|m| m != me && !me.starts_with(m))
                .collect();
            (me.clone(), edges)
        })
        .collect()
}

/// The paths a module's file names through its own children
/// (`child::item`, as a `mod.rs` does without `self::`).
fn child_paths(src: &Path, me: &ModPath, known: &BTreeSet<ModPath>) -> BTreeSet<ModPath> {
    let file = [
        src.join(me.join("/")).join("mod.rs"),
        src.join(format!("{}.rs", me.join("/"))),
        src.join("lib.rs"),
        src.join("main.rs"),
    ]
    .into_iter()
    .find(|f| f.exists() && (!me.is_empty() || f.ends_with("lib.rs") || f.ends_with("main.rs")));
    let Some(file) = file else {
        return BTreeSet::new();
    };
    let text = strip(&std::fs::read_to_string(file).unwrap());
    let b = text.as_bytes();
    let mut found = BTreeSet::new();
    for child in known
        .iter()
        .filter(|m| m.len() == me.len() + 1 && m.starts_with(me))
    {
        let name = child.last().unwrap();
        let needle = format!("{name}::");
        let mut from = 0;
        while let Some(at) = text[from..].find(&needle) {
            let i = from + at;
            let before = if i == 0 { b' ' } else { b[i - 1] };
            if !(before.is_ascii_alphanumeric() || before == b'_' || before == b':') {
                path_from(b, i + needle.len(), child.clone(), &mut found);
            }
            from = i + needle.len();
        }
    }
    found
}

fn show(m: &ModPath) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

/// Whether every member is one module or its children, that module not
/// being the crate's root: the root's children are the crate's layers, and
/// layers do not go round in a circle.
fn within_one_module(circle: &[ModPath]) -> bool {
    let candidates = circle.iter().cloned().chain(circle.iter().map(parent));
    candidates.filter(|p| !p.is_empty()).any(|p| {
        circle
            .iter()
            .all(|m| *m == p || (m.len() == p.len() + 1 && m.starts_with(&p)))
    })
}

#[test]
fn no_import_circle_spans_more_than_one_module_and_its_submodules() {
    let crates = replyd_testkit::root().join("crates");
    let mut problems = Vec::new();
    let mut checked = 0;
    for entry in std::fs::read_dir(&crates).unwrap() {
        let src = entry.unwrap().path().join("src");
        if !src.is_dir() {
            continue;
        }
        checked += 1;
        for circle in circles(&graph_of(&src)) {
            if !within_one_module(&circle) {
                let names: Vec<String> = circle.iter().map(show).collect();
                problems.push(format!("{}: {}", src.display(), names.join(" ⇄ ")));
            }
        }
    }
    assert!(checked >= 5, "read {checked} crates");
    assert!(
        problems.is_empty(),
        "import circles:\n{}",
        problems.join("\n")
    );
}

/// The reader itself: paths in groups, `super` and `self`, and what is
/// not code.
#[test]
fn the_reader_finds_paths_and_skips_what_is_not_code() {
    let text = strip(
        r#"
        use crate::a::{b, c::{d, e as f}};
        use super::g;
        // use crate::commented;
        let s = "crate::in_a_string";
        fn x() { crate::h::i(); self::j::k(); }
        #[cfg(test)]
        mod tests { use crate::only_in_tests; }
        "#,
    );
    let me = vec!["m".to_string(), "n".to_string()];
    let got = paths(&text, &me, false);
    let want: BTreeSet<ModPath> = [
        vec!["a", "b"],
        vec!["a", "c", "d"],
        vec!["a", "c", "e"],
        vec!["m", "g"],
        vec!["h", "i"],
        vec!["m", "j", "k"],
    ]
    .into_iter()
    .map(|p| p.into_iter().map(String::from).collect())
    .collect();
    assert_eq!(got, want);
    let circle = |ms: &[&[&str]]| -> Vec<ModPath> {
        ms.iter()
            .map(|m| m.iter().map(|s| s.to_string()).collect())
            .collect()
    };
    assert!(within_one_module(&circle(&[
        &["a"],
        &["a", "b"],
        &["a", "c"]
    ])));
    assert!(
        within_one_module(&circle(&[&["a", "b"], &["a", "c"]])),
        "siblings"
    );
    assert!(!within_one_module(&circle(&[&["a"], &["b"]])), "two layers");
    assert!(!within_one_module(&circle(&[&["a"], &["b", "c"]])));
    assert!(
        !within_one_module(&circle(&[&["a", "b"], &["a", "c", "d"]])),
        "a cousin"
    );
}
