//! The module layout holds: memgate's top-level modules (`src/<name>.rs` or
//! `src/<name>/`) sit in layers and import only from layers below their own,
//! so they form no circle, and pingora is named only where memgate meets the
//! network. The lists of exceptions below are what the layout still owes;
//! each test fails when an exception is no longer needed, so the lists only
//! shrink.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// Circles the layout still has, as (module, module) in name order.
const KNOWN_CIRCLES: &[(&str, &str)] = &[];

/// Every top-level module by layer, the entry points first. A module may
/// import from any layer below its own, never from its own or one above.
const LAYERS: &[&[&str]] = &[
    &["main", "server", "lib"],
    &["cli", "admin"],
    // The request phases.
    &["proxy"],
    &["ownership"],
    // The upstream side streams a client's body, so it sits on the client side.
    &["upstream"],
    &[
        "listener",
        "auth",
        "audit",
        "ratelimit",
        "scopes",
        "sessions",
    ],
    &["store", "config", "flights", "window"],
    &["metrics", "access_log", "lifecycle"],
    // Pure: decisions and wire code.
    &["policy", "deadline"],
    &["identity", "http1", "token"],
];

/// Imports that still point up a layer or across one, as (from, to): none.
const KNOWN_UPWARD: &[(&str, &str)] = &[];

/// Top-level modules that may name pingora: the server and the listeners,
/// and (until they stop using pingora's error and head types) the upstream
/// client, the request phases and the admin listener.
const PINGORA_ALLOWED: &[&str] = &["admin", "listener", "proxy", "server", "upstream"];

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The top-level module a file belongs to.
fn module_of(path: &Path) -> String {
    let rel = path.strip_prefix(SRC).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The code of a file without comments (a comment may name any module).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Each top-level module with the top-level modules its code names through
/// `crate::`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in rust_files(Path::new(SRC)) {
        let from = module_of(&path);
        let text = code(&std::fs::read_to_string(&path).unwrap());
        let names = graph.entry(from.clone()).or_default();
        for (at, _) in text.match_indices("crate::") {
            let to: String = text[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !to.is_empty() && to != from {
                names.insert(to);
            }
        }
    }
    graph
}

/// Whether `to` is reachable from `from`.
fn reaches(graph: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_string()];
    while let Some(at) = stack.pop() {
        if at == to {
            return true;
        }
        if seen.insert(at.clone()) {
            stack.extend(graph.get(&at).into_iter().flatten().cloned());
        }
    }
    false
}

#[test]
fn top_level_modules_import_each_other_in_no_circle() {
    let graph = imports();
    let mut circles = BTreeSet::new();
    for (from, names) in &graph {
        for to in names {
            if reaches(&graph, to, from) {
                let pair = if from < to { (from, to) } else { (to, from) };
                circles.insert((pair.0.clone(), pair.1.clone()));
            }
        }
    }
    only_the_known(
        &circles,
        KNOWN_CIRCLES,
        "modules that import each other (directly or round about)",
        "KNOWN_CIRCLES",
    );
}

/// Fails on a pair `found` that `known` does not list, and on a listed pair
/// no longer found (the list only shrinks).
fn only_the_known(
    found: &BTreeSet<(String, String)>,
    known: &[(&str, &str)],
    what: &str,
    list: &str,
) {
    let known: BTreeSet<(String, String)> = known
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let new: Vec<_> = found.difference(&known).collect();
    assert!(new.is_empty(), "{what}: {new:?}");
    let gone: Vec<_> = known.difference(found).collect();
    assert!(
        gone.is_empty(),
        "no longer found: take {gone:?} out of {list}"
    );
}

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|layer| layer.contains(&module))
        .unwrap_or_else(|| panic!("src/{module} is in no layer: add it to LAYERS"))
}

#[test]
fn modules_import_only_from_layers_below_their_own() {
    let mut upward = BTreeSet::new();
    for (from, names) in imports() {
        for to in names {
            if layer_of(&to) <= layer_of(&from) {
                upward.insert((from.clone(), to));
            }
        }
    }
    only_the_known(
        &upward,
        KNOWN_UPWARD,
        "imports from the same or a higher layer (see LAYERS)",
        "KNOWN_UPWARD",
    );
}

#[test]
fn pingora_is_named_only_where_memgate_meets_the_network() {
    let mut naming = BTreeSet::new();
    for path in rust_files(Path::new(SRC)) {
        let text = code(&std::fs::read_to_string(&path).unwrap());
        if text.contains("pingora") {
            naming.insert(module_of(&path));
        }
    }
    let allowed: BTreeSet<String> = PINGORA_ALLOWED.iter().map(|m| m.to_string()).collect();
    let outside: Vec<_> = naming.difference(&allowed).collect();
    assert!(outside.is_empty(), "pingora named in {outside:?}");
    let unneeded: Vec<_> = allowed.difference(&naming).collect();
    assert!(
        unneeded.is_empty(),
        "pingora no longer named in {unneeded:?}: take them out of PINGORA_ALLOWED"
    );
}

#[test]
fn the_check_sees_a_circle_and_ignores_comments() {
    let mut graph = BTreeMap::new();
    graph.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    graph.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
    graph.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    assert!(reaches(&graph, "b", "a"));
    graph.get_mut("c").unwrap().clear();
    assert!(!reaches(&graph, "b", "a"));
    assert_eq!(code("use x; // crate::proxy"), "use x; ");
    assert!(imports()["policy"].iter().all(|m| m != "proxy"));
    assert!(layer_of("proxy") < layer_of("policy"));
}

#[test]
fn readme_lists_every_top_level_module() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let layout = readme
        .split("## Layout")
        .nth(1)
        .and_then(|rest| rest.split("```").nth(1))
        .expect("README has a Layout section with a listing");
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(SRC).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let listed = if path.is_dir() {
            // `name.rs` beside `name/` is the module; the folder holds its parts.
            if path.with_extension("rs").exists() {
                continue;
            }
            format!("src/{name}/")
        } else {
            format!("src/{name}")
        };
        if name != "lib.rs" && !layout.contains(&listed) {
            missing.push(listed);
        }
    }
    missing.sort();
    assert!(
        missing.is_empty(),
        "README's Layout does not list {missing:?}"
    );
}
