//! The relay's source has no import cycle, and its modules are layered in the order `lib.rs`
//! declares them: every file's `crate::…`, `super::…`, `self::…` and child-module paths are read
//! (comments and string literals left out), resolved to the file that defines that module, and
//! the graph of files is searched for a cycle. A failure names the files of the cycle (or the
//! module that imports one declared above it) and the path that ties them.
//!
//! Only the standard library: this reads files as text, it does not compile them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A file of the crate, by its module path (`[]` = `lib.rs`, `["session", "req"]`).
type ModPath = Vec<String>;

/// The edges of the import graph: file → (imported file → one path that shows it).
type Graph = BTreeMap<String, BTreeMap<String, String>>;

#[test]
fn the_relay_has_no_import_cycle() {
    let graph = relay_graph();
    assert!(
        graph.len() > 20,
        "expected the relay's files, read {}: {:?}",
        graph.len(),
        graph.keys()
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "import cycle in crates/relay/src: {}",
            describe(&graph, &cycle)
        );
    }
}

/// `lib.rs` declares its modules in groups (blank lines between), one group a layer, from the
/// top down; a module may import only modules of its own group or of the groups below it.
#[test]
fn modules_import_only_their_own_layer_or_those_below() {
    let lib = std::fs::read_to_string(src_dir().join("lib.rs")).unwrap();
    let layers = layers_of(&lib);
    assert!(layers.len() >= 5, "layers of lib.rs: {layers:?}");
    let upward = upward_imports(&relay_graph(), &layers);
    assert!(
        upward.is_empty(),
        "imports of a module that lib.rs declares in a higher layer (move the shared part \
         down, or the module up): {upward:#?}\nlayers: {layers:?}"
    );
}

/// The edges from a file to a file of a higher layer (`layers` from the top down; files of
/// modules in no layer, such as `lib.rs`, are not ranked).
fn upward_imports(graph: &Graph, layers: &[Vec<String>]) -> Vec<String> {
    let rank = |file: &str| {
        let top = file.split(['/', '.']).next().unwrap_or_default();
        layers
            .iter()
            .position(|layer| layer.iter().any(|m| m == top))
    };
    let mut upward = Vec::new();
    for (from, tos) in graph {
        for (to, path) in tos {
            if let (Some(a), Some(b)) = (rank(from), rank(to)) {
                if b < a {
                    upward.push(format!("{from} -> {to} ({path})"));
                }
            }
        }
    }
    upward
}

/// The groups of `mod` declarations of `lib`, in order (comments and blank lines separate them).
fn layers_of(lib: &str) -> Vec<Vec<String>> {
    let mut layers: Vec<Vec<String>> = vec![Vec::new()];
    for line in code_only(lib).lines().map(str::trim) {
        let line = line.strip_prefix("pub ").unwrap_or(line);
        if let Some(name) = line.strip_prefix("mod ").and_then(|l| l.strip_suffix(';')) {
            layers.last_mut().unwrap().push(name.to_owned());
        } else if line.is_empty() && !layers.last().unwrap().is_empty() {
            layers.push(Vec::new());
        }
    }
    layers.retain(|l| !l.is_empty());
    layers
}

#[test]
fn the_layer_check_reads_groups_and_flags_an_upward_import() {
    let lib =
        "// top\npub mod http;\n\n// middle\nmod session;\nmod app;\n\n#[cfg(test)]\nmod t;\n";
    let layers = layers_of(lib);
    assert_eq!(layers, [vec!["http"], vec!["session", "app"], vec!["t"]]);
    let graph = made_up(&[
        ("http/mod.rs", "use crate::session::run;"),
        ("session/mod.rs", "use crate::app::App;"),
        ("app.rs", "use crate::http::router;"),
        ("t.rs", ""),
    ]);
    // Downward and same-layer imports pass; app -> http runs up two layers.
    assert_eq!(
        upward_imports(&graph, &layers),
        ["app.rs -> http/mod.rs (crate::http::router)"]
    );
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The graph of `crates/relay/src`, keyed by path relative to `src/`.
fn relay_graph() -> Graph {
    let src = src_dir();
    let mut files = Vec::new();
    collect_rs(&src, &mut files);
    let modules: BTreeMap<ModPath, String> = files
        .iter()
        .map(|f| {
            let rel = f.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
            (module_of(&rel), rel)
        })
        .collect();
    let sources: Vec<(String, String)> = modules
        .values()
        .map(|rel| (rel.clone(), std::fs::read_to_string(src.join(rel)).unwrap()))
        .collect();
    graph_of(&sources)
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `lib.rs` → `[]`, `session/mod.rs` → `[session]`, `session/req.rs` → `[session, req]`.
fn module_of(rel: &str) -> ModPath {
    let rel = rel.trim_end_matches(".rs");
    let mut parts: ModPath = rel.split('/').map(str::to_owned).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// The import graph of `(path relative to src/, source)` files.
fn graph_of(files: &[(String, String)]) -> Graph {
    let modules: BTreeMap<ModPath, &str> = files
        .iter()
        .map(|(rel, _)| (module_of(rel), rel.as_str()))
        .collect();
    let mut graph = Graph::new();
    for (rel, source) in files {
        let edges = graph.entry(rel.clone()).or_default();
        for (path, target) in imports(&module_of(rel), &code_only(source)) {
            // The longest module prefix that is a file: `crate::auth::Access` is auth/mod.rs.
            let file = (0..=target.len())
                .rev()
                .find_map(|n| modules.get(&target[..n]))
                .copied();
            if let Some(file) = file.filter(|f| f != rel) {
                edges.entry(file.to_owned()).or_insert(path);
            }
        }
    }
    graph
}

/// Every module path `source` names, resolved from its own module `me`: `(as written, target)`.
/// Paths start at `crate`, `super`, `self` or a child module the file declares (`mod x;`);
/// `use` groups (`crate::{a, b::c}`) are expanded. Inside an inline `mod tests { … }`, `super`
/// is the file's own module.
fn imports(me: &ModPath, code: &str) -> Vec<(String, ModPath)> {
    let tokens = tokenize(code);
    let children: BTreeSet<&str> = tokens
        .windows(3)
        .filter(|w| w[0] == "mod" && w[2] == ";")
        .map(|w| w[1].as_str())
        .collect();
    let mut out = Vec::new();
    // Inline modules (`mod name {`) open at a brace depth; `super` inside one is the file.
    let mut inline: Vec<usize> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i].as_str();
        match t {
            "{" => depth += 1,
            "}" => {
                depth = depth.saturating_sub(1);
                if inline.last() == Some(&depth) {
                    inline.pop();
                }
            }
            "mod" if tokens.get(i + 2).map(String::as_str) == Some("{") => inline.push(depth),
            _ => {}
        }
        let after_colons = i > 0 && tokens[i - 1] == "::";
        let starts = t == "crate" || t == "super" || t == "self" || children.contains(t);
        if starts && !after_colons && tokens.get(i + 1).map(String::as_str) == Some("::") {
            let mut base: ModPath = match t {
                "crate" => Vec::new(),
                "super" if !inline.is_empty() => me.clone(),
                "super" => me[..me.len().saturating_sub(1)].to_vec(),
                "self" => me.clone(),
                child => {
                    let mut p = me.clone();
                    p.push(child.to_owned());
                    p
                }
            };
            let mut j = i + 1;
            while tokens.get(j).map(String::as_str) == Some("::") {
                match tokens.get(j + 1).map(String::as_str) {
                    Some("super") => {
                        base.pop();
                    }
                    Some("{") => break,
                    Some(name) if is_ident(name) => base.push(name.to_owned()),
                    _ => break,
                }
                j += 2;
            }
            let written = tokens[i..j.min(tokens.len())].concat();
            if tokens.get(j).map(String::as_str) == Some("::")
                && tokens.get(j + 1).map(String::as_str) == Some("{")
            {
                // A group: each member is a path from `base`.
                let (members, end) = group(&tokens, j + 2);
                for m in members {
                    let mut p = base.clone();
                    p.extend(m.iter().cloned());
                    out.push((format!("{written}::{{{}}}", m.join("::")), p));
                }
                i = end;
                continue;
            }
            out.push((written, base));
            i = j;
            continue;
        }
        i += 1;
    }
    out
}

/// The paths of a `use` group starting after its `{`, and the index after its `}` (nested
/// groups are flattened to their common prefix).
fn group(tokens: &[String], mut i: usize) -> (Vec<ModPath>, usize) {
    let mut members = Vec::new();
    let mut current: ModPath = Vec::new();
    let mut nested = 0;
    while i < tokens.len() {
        match tokens[i].as_str() {
            "{" => nested += 1,
            "}" if nested == 0 => {
                if !current.is_empty() {
                    members.push(current);
                }
                return (members, i + 1);
            }
            "}" => nested -= 1,
            "," if nested == 0 && !current.is_empty() => {
                members.push(std::mem::take(&mut current));
            }
            "::" | "as" | "*" | "," => {}
            name if nested == 0 && is_ident(name) && tokens[i - 1] != "as" => {
                current.push(name.to_owned())
            }
            _ => {}
        }
        i += 1;
    }
    (members, i)
}

fn is_ident(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_alphanumeric() || c == '_')
}

/// Identifiers, `::`, and single punctuation characters.
fn tokenize(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(chars[start..i].iter().collect());
            continue;
        }
        if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push("::".to_owned());
            i += 2;
            continue;
        }
        if !c.is_whitespace() {
            out.push(c.to_string());
        }
        i += 1;
    }
    out
}

/// `source` without comments, string literals and char literals (a path in a doc comment or
/// a message is not an import).
fn code_only(source: &str) -> String {
    let s: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        let next = s.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < s.len() && s[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < s.len() {
                if s[i] == '/' && s.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if s[i] == '*' && s.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r'
            && matches!(next, Some('"' | '#'))
            && (i == 0 || !(s[i - 1].is_alphanumeric() || s[i - 1] == '_'))
        {
            // r"…" or r#"…"#
            let mut j = i + 1;
            let mut hashes = 0;
            while s.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if s.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= s.len() {
                    break;
                }
                if s[j] == '"' && (1..=hashes).all(|k| s.get(j + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < s.len() && s[i] != '"' {
                i += if s[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && next == Some('\\') {
            // '\n', '\'', '\u{…}'
            let mut j = i + 2;
            while j < s.len() && s[j] != '\'' {
                j += 1;
            }
            if s.get(j - 1) == Some(&'\\') && s.get(j + 1) == Some(&'\'') {
                j += 1;
            }
            i = j + 1;
            out.push_str("' '");
        } else if c == '\'' && s.get(i + 2) == Some(&'\'') {
            i += 3; // 'x' (a lifetime `'a` has no closing quote)
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// A cycle of the graph, as its files in order with the first repeated at the end; `None`
/// when the graph has none.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit(
        node: &str,
        graph: &Graph,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(node.to_owned(), Mark::OnPath);
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flat_map(|e| e.keys()) {
            match marks.get(next.as_str()).copied().unwrap_or(Mark::New) {
                Mark::OnPath => {
                    let from = path.iter().position(|n| n == next).unwrap();
                    let mut cycle = path[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(cycle) = visit(next, graph, marks, path) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if marks.get(node.as_str()).copied().unwrap_or(Mark::New) == Mark::New {
            if let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new()) {
                return Some(cycle);
            }
        }
    }
    None
}

/// `a.rs -> b.rs (crate::b::X) -> a.rs (crate::a::Y)`.
fn describe(graph: &Graph, cycle: &[String]) -> String {
    let mut out = cycle[0].clone();
    for pair in cycle.windows(2) {
        out.push_str(&format!(" -> {} ({})", pair[1], graph[&pair[0]][&pair[1]]));
    }
    out
}

// The checker itself: it must see cycles, see through comments and groups, and pass a DAG.

fn made_up(files: &[(&str, &str)]) -> Graph {
    let files: Vec<(String, String)> = files
        .iter()
        .map(|(f, s)| (f.to_string(), s.to_string()))
        .collect();
    graph_of(&files)
}

#[test]
fn the_checker_names_a_cycle_through_three_files() {
    let graph = made_up(&[
        ("lib.rs", "mod app; mod session; mod subscriptions;"),
        ("app.rs", "use crate::subscriptions::SubscriptionIndex;"),
        ("session/mod.rs", "use crate::app::App;"),
        (
            "subscriptions.rs",
            "fn f() { let _ = crate::session::ConnectionHandle::new(); }",
        ),
    ]);
    let cycle = find_cycle(&graph).expect("the cycle app -> subscriptions -> session -> app");
    let text = describe(&graph, &cycle);
    for file in ["app.rs", "subscriptions.rs", "session/mod.rs"] {
        assert!(text.contains(file), "{text}");
    }
    assert!(text.contains("crate::session::ConnectionHandle"), "{text}");
    assert_eq!(cycle.first(), cycle.last(), "{cycle:?}");
}

#[test]
fn the_checker_passes_a_layered_graph_and_ignores_comments_strings_and_test_modules() {
    let graph = made_up(&[
        ("lib.rs", "mod http; mod session; mod outbox;\nuse http::router;"),
        (
            "http/mod.rs",
            "mod api;\nuse crate::{session::{self, run}, outbox::Outbox as O};",
        ),
        ("http/api.rs", "use super::router; // crate::lib_only\n"),
        (
            "session/mod.rs",
            "use crate::outbox::Outbox;\n/// See `crate::http::router`.\nfn f() { let _ = \"crate::http\"; let _ = 'x'; }\n#[cfg(test)]\nmod tests { use super::*; }",
        ),
        ("outbox.rs", "pub struct Outbox;"),
    ]);
    assert_eq!(find_cycle(&graph), None, "{graph:#?}");
    let edges = |f: &str| graph[f].keys().cloned().collect::<Vec<_>>();
    assert_eq!(edges("lib.rs"), ["http/mod.rs"]);
    assert_eq!(edges("http/mod.rs"), ["outbox.rs", "session/mod.rs"]);
    assert_eq!(edges("http/api.rs"), ["http/mod.rs"]);
    assert_eq!(edges("session/mod.rs"), ["outbox.rs"]);
}

#[test]
fn the_checker_sees_a_cycle_through_super_and_child_modules() {
    // A child that imports its parent, whose code names the child: a two-file cycle.
    let graph = made_up(&[
        ("session/mod.rs", "mod req;\nfn f() { req::answer(); }"),
        ("session/req.rs", "use super::Session;"),
    ]);
    let cycle = find_cycle(&graph).expect("session/mod.rs <-> session/req.rs");
    assert_eq!(cycle.len(), 3, "{cycle:?}");
}
