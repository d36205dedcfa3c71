//! Arrows that point one way: no import cycle between the modules of `src/`.
//!
//! Reads every file under `src/` as text (no build of anything), collects the paths it names
//! through `crate::…`, `super::…` and `self::…` (in `use` trees and in expressions), and builds
//! the module graph one level at a time: between the top-level modules (`state`, `actors`,
//! `db`, …), and between the sibling sub-modules of each module (`actors::room`,
//! `actors::registry`, …). A path that names an ancestor or a descendant of the file's own
//! module is not an edge (a parent owns its children; a child may use its parent's shared
//! items). Unit-test modules (`#[cfg(test)] mod … { … }`) are left out: they do not ship.
//!
//! The test fails on an edge that lies on a cycle unless it is in [`ALLOWED_CYCLE_EDGES`], and
//! on an allowed edge that no longer lies on a cycle: the list is a ratchet that can only
//! shrink. A second test checks the direction of the arrows between top-level modules against
//! [`LAYERS`], with the same kind of ratchet. `cargo test --test api architecture::print_module_graph -- --ignored --nocapture`
//! prints the whole graph, with lines per module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Edges that still lie on a cycle, each with what it takes to remove it. Remove an entry when
/// its cycle is gone (the test says so); never add one. Empty since #14: `src/` has no cycle.
const ALLOWED_CYCLE_EDGES: &[(&str, &str)] = &[];

/// The top-level modules from the bottom layer up. A module may import its own layer and those
/// below, never one above ("a module that imports the layer above it is a fence with a hole",
/// docs STYLE). A new top-level module must be placed here.
const LAYERS: &[&[&str]] = &[
    // What everything may import: no dependencies on the rest of the crate.
    &["error_code", "names", "util", "client_addr", "config"],
    &["auth", "metrics", "limits", "hooks"],
    // The operation model, then its storage, then the HTTP edge's error (it wraps `DbError`).
    &["operations"],
    &["db"],
    &["error"],
    // Bytes on the socket, then the wire formats, then the publish path.
    &["transport"],
    &["protocol"],
    &["broker"],
    &["actors"],
    // Several nodes: the Redis broker delivers into this node's registry.
    &["cluster"],
    // The composition: what the routes share, the routes, the application.
    &["state"],
    &["routes"],
    &["startup"],
];

/// Top-level imports that still point up a layer; the same ratchet as the cycles (empty: keep
/// it so).
const ALLOWED_UPWARD_EDGES: &[(&str, &str)] = &[];

/// `from -> to` with where it was first seen (`file:line`).
type Edges = BTreeMap<(String, String), String>;

#[test]
fn no_module_cycle_in_src_beyond_the_allowlist() {
    let graph = module_graph(&src_dir());
    let on_cycle = edges_on_cycles(&graph.edges);
    let allowed: BTreeSet<(String, String)> = ALLOWED_CYCLE_EDGES
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();

    let mut problems = Vec::new();
    for (edge, at) in &on_cycle {
        if !allowed.contains(edge) {
            problems.push(format!(
                "new import cycle: {} -> {} (first at {at}) lies on a cycle:\n{}",
                edge.0,
                edge.1,
                describe_cycle(&graph.edges, edge)
            ));
        }
    }
    for edge in &allowed {
        if !on_cycle.contains_key(edge) {
            problems.push(format!(
                "{} -> {} no longer lies on a cycle: remove it from ALLOWED_CYCLE_EDGES",
                edge.0, edge.1
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

#[test]
fn no_module_imports_a_layer_above_it_beyond_the_allowlist() {
    let graph = module_graph(&src_dir());
    let layer = |m: &str| LAYERS.iter().position(|l| l.contains(&m));
    let allowed: BTreeSet<(&str, &str)> = ALLOWED_UPWARD_EDGES.iter().copied().collect();
    let mut problems = Vec::new();
    let mut upward = BTreeSet::new();
    let top_level = graph.lines.keys().filter(|m| !m.contains("::"));
    for module in top_level {
        if layer(module).is_none() {
            problems.push(format!("src/{module}: put the new module in LAYERS"));
        }
    }
    for ((a, b), at) in &graph.edges {
        let (Some(la), Some(lb)) = (layer(a), layer(b)) else {
            continue;
        };
        if la < lb {
            upward.insert((a.as_str(), b.as_str()));
            if !allowed.contains(&(a.as_str(), b.as_str())) {
                problems.push(format!(
                    "{a} imports {b}, a layer above it (first at {at}): the arrow must point down"
                ));
            }
        }
    }
    for (a, b) in &allowed {
        if !upward.contains(&(*a, *b)) {
            problems.push(format!(
                "{a} -> {b} no longer points up: remove it from ALLOWED_UPWARD_EDGES"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_cycle_check_sees_a_cycle_and_its_way_back() {
    // The check itself, on a tree made up here: a -> b -> c -> a is a cycle, d hangs off it.
    let mut edges = Edges::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        edges.insert((a.into(), b.into()), "here".into());
    }
    let on_cycle: BTreeSet<_> = edges_on_cycles(&edges).into_keys().collect();
    let expected: BTreeSet<_> = [("a", "b"), ("b", "c"), ("c", "a")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(on_cycle, expected);

    // And the reader: grouped `use` trees, `super::`, comments and strings.
    let text = "use crate::{a::{B, c::D}, e};\n// crate::f::G\nfn x() { super::h::i(); \
                let _ = \"crate::j\"; crate::k::l(); }\n#[cfg(test)]\nmod tests { use crate::m; }\n\
                #[cfg(test)]\nmod more;\nfn y() { crate::p::z() }\n";
    let modules: BTreeSet<String> = [
        "a", "a::c", "e", "f", "h", "j", "k", "m", "n", "n::h", "n::o", "p",
    ]
    .iter()
    .map(|m| m.to_string())
    .collect();
    let targets: BTreeSet<String> = referenced_modules("n::o", text, &modules)
        .into_iter()
        .map(|(m, _)| m)
        .collect();
    let expected: BTreeSet<String> = ["a", "a::c", "e", "k", "n::h", "p"]
        .iter()
        .map(|m| m.to_string())
        .collect();
    assert_eq!(targets, expected);
}

#[test]
#[ignore = "prints the module graph; run with --ignored --nocapture"]
fn print_module_graph() {
    let graph = module_graph(&src_dir());
    let on_cycle = edges_on_cycles(&graph.edges);
    println!("lines per module (files under it included):");
    for (module, lines) in &graph.lines {
        println!("  {lines:>6}  {module}");
    }
    println!("edges (* lies on a cycle):");
    for ((a, b), at) in &graph.edges {
        let mark = if on_cycle.contains_key(&(a.clone(), b.clone())) {
            "*"
        } else {
            " "
        };
        println!("  {mark} {a} -> {b}    ({at})");
    }
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

struct Graph {
    /// Edges between siblings at every level (`state -> actors`, `actors::room -> actors::registry`).
    edges: Edges,
    /// Lines of code per module, its sub-modules included.
    lines: BTreeMap<String, usize>,
}

fn module_graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    collect_rs_files(src, &mut files);
    // Module path of each file: src/a.rs and src/a/mod.rs are `a`; src/a/b.rs is `a::b`. The
    // binary's main.rs is another crate (it names the library as `switchyard::`).
    let mut by_module: BTreeMap<String, PathBuf> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(src).expect("under src");
        let mut parts: Vec<String> = rel
            .iter()
            .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
            .collect();
        if parts == ["main"] || parts == ["lib"] {
            continue;
        }
        if parts.last().map(String::as_str) == Some("mod") {
            parts.pop();
        }
        by_module.insert(parts.join("::"), file);
    }
    let modules: BTreeSet<String> = by_module.keys().cloned().collect();

    let mut edges = Edges::new();
    let mut lines = BTreeMap::new();
    for (module, file) in &by_module {
        let text = std::fs::read_to_string(file).expect("read a source file");
        let count = text.lines().count();
        let segments: Vec<&str> = module.split("::").collect();
        for depth in 1..=segments.len() {
            *lines.entry(segments[..depth].join("::")).or_insert(0) += count;
        }
        let rel = file
            .strip_prefix(src.parent().expect("a parent"))
            .expect("under the crate");
        for (target, line) in referenced_modules(module, &text, &modules) {
            if let Some(edge) = sibling_edge(module, &target) {
                edges
                    .entry(edge)
                    .or_insert_with(|| format!("{}:{line}", rel.display()));
            }
        }
    }
    Graph { edges, lines }
}

fn collect_rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src/")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect_rs_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The edge a reference from `from` to `to` makes: between the two children of their deepest
/// common ancestor that lead to each. None when one contains the other.
fn sibling_edge(from: &str, to: &str) -> Option<(String, String)> {
    let a: Vec<&str> = from.split("::").collect();
    let b: Vec<&str> = to.split("::").collect();
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    if common == a.len() || common == b.len() {
        return None;
    }
    Some((a[..=common].join("::"), b[..=common].join("::")))
}

/// The modules a file names, each with the line of its first mention.
fn referenced_modules(
    module: &str,
    text: &str,
    modules: &BTreeSet<String>,
) -> Vec<(String, usize)> {
    let code = strip_tests(&strip_comments_and_strings(text));
    // `self::` is the file's module; `super::` its parent (a mod.rs file *is* its directory).
    let own: Vec<&str> = module.split("::").collect();
    let bytes = code.as_bytes();
    let mut found: BTreeMap<String, usize> = BTreeMap::new();
    let mut i = 0;
    while i < bytes.len() {
        let at_word_start = i == 0 || !is_ident(bytes[i - 1]) || bytes[i - 1] == b'$';
        let rest = &code[i..];
        let root: Option<(Vec<String>, usize)> = if !at_word_start {
            None
        } else if rest.starts_with("crate::") {
            Some((Vec::new(), "crate::".len()))
        } else if rest.starts_with("self::") {
            Some((own.iter().map(|s| s.to_string()).collect(), "self::".len()))
        } else if rest.starts_with("super::") {
            let mut base: Vec<String> = own.iter().map(|s| s.to_string()).collect();
            let mut j = 0;
            while code[i + j..].starts_with("super::") {
                base.pop();
                j += "super::".len();
            }
            Some((base, j))
        } else {
            None
        };
        let Some((prefix, skip)) = root else {
            i += 1;
            continue;
        };
        let line = code[..i].matches('\n').count() + 1;
        let mut paths = Vec::new();
        let end = parse_use_tree(&code, i + skip, prefix, &mut paths);
        for path in paths {
            // The longest prefix of the path that is a module.
            for n in (1..=path.len()).rev() {
                let candidate = path[..n].join("::");
                if modules.contains(&candidate) {
                    found.entry(candidate).or_insert(line);
                    break;
                }
            }
        }
        i = end.max(i + 1);
    }
    found.into_iter().collect()
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Parses `a::b::{c, d::{e, f}}` starting at `i`; pushes every full path. Returns where it ended.
fn parse_use_tree(
    code: &str,
    mut i: usize,
    prefix: Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    let bytes = code.as_bytes();
    let skip_ws = |mut i: usize| {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    let mut path = prefix;
    loop {
        i = skip_ws(i);
        if i < bytes.len() && bytes[i] == b'{' {
            i += 1;
            loop {
                i = skip_ws(i);
                if i >= bytes.len() {
                    return i;
                }
                if bytes[i] == b'}' {
                    return i + 1;
                }
                if bytes[i] == b',' {
                    i += 1;
                    continue;
                }
                let before = i;
                i = parse_use_tree(code, i, path.clone(), out);
                if i == before {
                    i += 1;
                }
            }
        }
        let start = i;
        while i < bytes.len() && is_ident(bytes[i]) {
            i += 1;
        }
        if i == start {
            // `*` or the end of the path.
            out.push(path);
            return i;
        }
        let ident = &code[start..i];
        if ident != "self" {
            path.push(ident.to_string());
        }
        let j = skip_ws(i);
        if code[j..].starts_with("::") {
            i = j + 2;
        } else {
            out.push(path);
            return i;
        }
    }
}

/// The text with comments, string and char literals blanked (newlines kept, so lines count).
fn strip_comments_and_strings(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let blank = |out: &mut Vec<u8>, c: u8| out.push(if c == b'\n' { b'\n' } else { b' ' });
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                out.push(b' ');
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
        } else if b[i] == b'r'
            && (i == 0 || !is_ident(b[i - 1]))
            && matches!(b.get(i + 1), Some(b'"') | Some(b'#'))
        {
            // A raw string: r"…", r#"…"#, …
            let mut j = i + 1;
            let mut hashes = 0;
            while j < b.len() && b[j] == b'#' {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push(b[i]);
                i += 1;
                continue;
            }
            let mut close = vec![b'"'];
            close.extend(std::iter::repeat_n(b'#', hashes));
            j += 1;
            while j < b.len() && !b[j..].starts_with(&close) {
                j += 1;
            }
            let end = (j + close.len()).min(b.len());
            for &c in &b[i..end] {
                blank(&mut out, c);
            }
            i = end;
        } else if b[i] == b'"' {
            blank(&mut out, b[i]);
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    blank(&mut out, b[i]);
                    i += 1;
                }
                blank(&mut out, b[i]);
                i += 1;
            }
            if i < b.len() {
                out.push(b' ');
                i += 1;
            }
        } else if b[i] == b'\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a): only the former is blanked.
            let end = if b.get(i + 1) == Some(&b'\\') {
                b[i + 2..]
                    .iter()
                    .position(|&c| c == b'\'')
                    .map(|p| i + 2 + p + 1)
            } else {
                // One char, possibly multi-byte UTF-8.
                let mut j = i + 1;
                if j < b.len() {
                    j += 1;
                    while j < b.len() && (b[j] & 0xC0) == 0x80 {
                        j += 1;
                    }
                }
                (b.get(j) == Some(&b'\'')).then_some(j + 1)
            };
            match end {
                Some(end) => {
                    for &c in &b[i..end] {
                        blank(&mut out, c);
                    }
                    i = end;
                }
                None => {
                    out.push(b[i]);
                    i += 1;
                }
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The code without its `#[cfg(test)] mod … { … }` blocks (blanked, newlines kept).
fn strip_tests(code: &str) -> String {
    let mut out = code.as_bytes().to_vec();
    let mut from = 0;
    while let Some(p) = code[from..].find("#[cfg(test)]") {
        let start = from + p;
        let after = code[start + "#[cfg(test)]".len()..].trim_start();
        let is_mod = after.starts_with("mod ") || after.starts_with("pub mod ");
        // `mod tests;` (a file of its own) has no block here: only a `{` before any `;` opens one.
        let open = code[start..]
            .find(['{', ';'])
            .map(|o| start + o)
            .filter(|&o| code.as_bytes()[o] == b'{');
        match (is_mod, open) {
            (true, Some(open)) => {
                let mut depth = 0;
                let mut end = code.len();
                for (k, c) in code[open..].bytes().enumerate() {
                    match c {
                        b'{' => depth += 1,
                        b'}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = open + k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                for c in &mut out[start..end] {
                    if *c != b'\n' {
                        *c = b' ';
                    }
                }
                from = end;
            }
            _ => from = start + 1,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The edges whose two ends lie in one strongly connected component (Tarjan's algorithm).
fn edges_on_cycles(edges: &Edges) -> Edges {
    let mut nodes: BTreeSet<&str> = BTreeSet::new();
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges.keys() {
        nodes.insert(a);
        nodes.insert(b);
        next.entry(a).or_default().push(b);
    }
    struct Tarjan<'a> {
        next: &'a BTreeMap<&'a str, Vec<&'a str>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        component: BTreeMap<&'a str, usize>,
        components: usize,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for &w in self.next.get(v).map(Vec::as_slice).unwrap_or(&[]) {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    self.component.insert(w, self.components);
                    if w == v {
                        break;
                    }
                }
                self.components += 1;
            }
        }
    }
    let mut t = Tarjan {
        next: &next,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        component: BTreeMap::new(),
        components: 0,
    };
    for &v in &nodes {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    edges
        .iter()
        .filter(|((a, b), _)| t.component[a.as_str()] == t.component[b.as_str()])
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// One shortest way back from `edge.1` to `edge.0`, each step with where it is made.
fn describe_cycle(edges: &Edges, edge: &(String, String)) -> String {
    let (from, to) = edge;
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([to.as_str()]);
    let mut seen = BTreeSet::from([to.as_str()]);
    while let Some(v) = queue.pop_front() {
        if v == from {
            break;
        }
        for (a, b) in edges.keys() {
            if a == v && seen.insert(b.as_str()) {
                came_from.insert(b, a);
                queue.push_back(b);
            }
        }
    }
    let mut path = vec![from.as_str()];
    while let Some(&prev) = came_from.get(path.last().expect("not empty")) {
        path.push(prev);
    }
    path.reverse();
    let mut steps = vec![format!("  {from} -> {to}    ({})", edges[edge])];
    for pair in path.windows(2) {
        let key = (pair[0].to_string(), pair[1].to_string());
        steps.push(format!("  {} -> {}    ({})", pair[0], pair[1], edges[&key]));
    }
    steps.join("\n")
}
