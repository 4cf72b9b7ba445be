//! The layout rules of the workspace, checked on the source tree (no build artefacts needed):
//!
//! 1. No module cycle inside any crate: module A refers to B (a `use` or a path through `crate::`,
//!    `super::` or `self::`) and B, directly or through others, to A. Re-exports in a `lib.rs` /
//!    `mod.rs` (`pub use child::X`, `mod child`) are the module's interface, not a dependency, and
//!    a module's use of its ancestors is allowed (a parent owns the types its children share).
//! 2. No source file over 600 lines unless its top says why (`Kept in one file` in the first
//!    20 lines).
//! 3. No library crate depends on `tda-eval` (the generators of evaluation data) outside its
//!    dev-dependencies; only the CLI and the benches do.
//! 4. Every library crate's `lib.rs` opens with a doc comment (its job, inputs, outputs, invariants).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 600;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn crates() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("crates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Cargo.toml").exists())
        .collect();
    v.sort();
    v
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/a/b.rs` and `src/a/b/mod.rs` → `["a", "b"]`; `src/lib.rs` / `src/main.rs` → `[]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The source without comments and string literals (so that paths in docs do not count).
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            i += 3; // a char literal such as '"'
        } else {
            let c = src[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// Expands `a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    match tree.find('{') {
        None => vec![tree.split(" as ").next().unwrap().trim().to_string()],
        Some(open) => {
            let prefix = &tree[..open];
            let inner = &tree[open + 1..tree.rfind('}').unwrap()];
            let mut items = Vec::new();
            let (mut depth, mut start) = (0, 0);
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        items.push(&inner[start..i]);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            items.push(&inner[start..]);
            items
                .into_iter()
                .filter(|s| !s.trim().is_empty())
                .flat_map(expand)
                .map(|s| format!("{prefix}{s}"))
                .collect()
        }
    }
}

/// Absolute module paths this file refers to (`crate::`, `super::`, `self::` and inline paths),
/// re-exports of an interface file left out.
fn references(code: &str, me: &[String], interface: bool) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut rest = code;
    // `use` statements (possibly grouped, possibly multi-line).
    while let Some(at) = rest.find("use ") {
        let before = &rest[..at];
        let is_word_start = before
            .chars()
            .last()
            .is_none_or(|c| !c.is_alphanumeric() && c != '_');
        let end = rest[at..].find(';').map_or(rest.len(), |e| at + e);
        let stmt = &rest[at + 4..end];
        let reexport =
            before.trim_end().ends_with("pub") || before.trim_end().ends_with("pub(crate)");
        if is_word_start && !(interface && reexport) {
            paths.extend(expand(stmt));
        }
        rest = &rest[end.min(rest.len())..];
        if rest.is_empty() {
            break;
        }
        rest = &rest[1..];
    }
    // Inline paths: `crate::a::b` outside `use`.
    let mut s = code;
    while let Some(at) = s.find("crate::") {
        let tail: String = s[at..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        paths.push(tail.clone());
        s = &s[at + tail.len().max(1)..];
    }
    paths
        .into_iter()
        .filter_map(|p| {
            let segs: Vec<&str> = p
                .split("::")
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            let mut base: Vec<String> = match *segs.first()? {
                "crate" => Vec::new(),
                "self" => me.to_vec(),
                "super" => me[..me.len().saturating_sub(1)].to_vec(),
                _ => return None,
            };
            let mut i = 1;
            while segs.get(i) == Some(&"super") {
                base.pop();
                i += 1;
            }
            base.extend(segs[i..].iter().map(|s| s.to_string()));
            Some(base)
        })
        .collect()
}

#[test]
fn no_module_cycle_in_any_crate() {
    let mut problems = Vec::new();
    for krate in crates() {
        let src = krate.join("src");
        let mut files = Vec::new();
        rs_files(&src, &mut files);
        let modules: BTreeMap<Vec<String>, PathBuf> = files
            .iter()
            .map(|f| (module_path(&src, f), f.clone()))
            .collect();
        let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
        for (m, f) in &modules {
            let interface = matches!(
                f.file_name().and_then(|n| n.to_str()),
                Some("lib.rs" | "mod.rs" | "main.rs")
            );
            let code = code_only(&std::fs::read_to_string(f).unwrap());
            for r in references(&code, m, interface) {
                // The longest prefix that is a module of this crate.
                let target = (0..=r.len())
                    .rev()
                    .map(|n| r[..n].to_vec())
                    .find(|p| modules.contains_key(p))
                    .unwrap_or_default();
                // A module may use its own items and its ancestors' interface is only re-exports.
                if &target != m && !m.starts_with(&target[..]) {
                    edges.entry(m.clone()).or_default().insert(target);
                }
            }
        }
        // Depth-first search for a back edge.
        fn visit(
            n: &Vec<String>,
            edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
            state: &mut BTreeMap<Vec<String>, u8>,
            stack: &mut Vec<Vec<String>>,
            found: &mut Vec<String>,
        ) {
            state.insert(n.clone(), 1);
            stack.push(n.clone());
            for t in edges.get(n).into_iter().flatten() {
                match state.get(t).copied().unwrap_or(0) {
                    0 => visit(t, edges, state, stack, found),
                    1 => {
                        let from = stack.iter().position(|x| x == t).unwrap();
                        let cyc: Vec<String> = stack[from..]
                            .iter()
                            .chain([t])
                            .map(|m| {
                                if m.is_empty() {
                                    "crate".into()
                                } else {
                                    m.join("::")
                                }
                            })
                            .collect();
                        found.push(cyc.join(" → "));
                    }
                    _ => {}
                }
            }
            stack.pop();
            state.insert(n.clone(), 2);
        }
        let mut state = BTreeMap::new();
        let mut found = Vec::new();
        for m in modules.keys() {
            if !state.contains_key(m) {
                visit(m, &edges, &mut state, &mut Vec::new(), &mut found);
            }
        }
        for c in found {
            problems.push(format!(
                "{}: {c}",
                krate.file_name().unwrap().to_string_lossy()
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "module cycles:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_cycle_checker_sees_a_cycle() {
    // The checker itself must be able to fail: two modules that use each other.
    let a = references(
        &code_only("use crate::b::X;\nfn f() { crate::b::g() }"),
        &["a".into()],
        false,
    );
    let b = references(&code_only("use super::a::{Y, z::W};"), &["b".into()], false);
    assert!(a.contains(&vec!["b".to_string(), "X".to_string()]));
    assert!(b.contains(&vec!["a".to_string(), "Y".to_string()]));
    assert!(b.contains(&vec!["a".to_string(), "z".to_string(), "W".to_string()]));
    // Re-exports of an interface file are not dependencies; comments and strings never count.
    assert!(references(&code_only("pub use b::X; // crate::c"), &[], true).is_empty());
    assert!(references(&code_only("let s = \"crate::c\";"), &[], false).is_empty());
}

#[test]
fn long_files_say_why() {
    let mut long = Vec::new();
    for krate in crates() {
        let mut files = Vec::new();
        rs_files(&krate.join("src"), &mut files);
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            let n = text.lines().count();
            let head: String = text.lines().take(20).collect::<Vec<_>>().join("\n");
            if n > MAX_LINES && !head.contains("Kept in one file") {
                long.push(format!(
                    "{} ({n} lines)",
                    f.strip_prefix(root()).unwrap().display()
                ));
            }
        }
    }
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines without a `Kept in one file` reason at the top:\n{}",
        long.join("\n")
    );
}

/// The `[dependencies]` (not dev-) entries of a Cargo.toml.
fn normal_dependencies(manifest: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(manifest).unwrap();
    let mut deps = Vec::new();
    let mut in_deps = false;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_deps = l == "[dependencies]";
            continue;
        }
        if in_deps {
            if let Some((name, _)) = l.split_once('=') {
                if !name.trim().starts_with('#') {
                    deps.push(name.trim().trim_end_matches(".workspace").to_string());
                }
            }
        }
    }
    deps
}

#[test]
fn only_the_cli_and_benches_depend_on_the_evaluation_crate() {
    for krate in crates() {
        let name = krate.file_name().unwrap().to_string_lossy().to_string();
        if name == "tda-cli" || name == "tda-eval" {
            continue;
        }
        let deps = normal_dependencies(&krate.join("Cargo.toml"));
        assert!(
            !deps.iter().any(|d| d == "tda-eval"),
            "{name} depends on tda-eval outside [dev-dependencies]"
        );
    }
}

#[test]
fn every_library_opens_with_its_job() {
    for krate in crates() {
        let lib = krate.join("src/lib.rs");
        if !lib.exists() {
            continue;
        }
        let text = std::fs::read_to_string(&lib).unwrap();
        let doc: Vec<&str> = text.lines().take_while(|l| l.starts_with("//!")).collect();
        assert!(
            doc.len() >= 5,
            "{}: lib.rs should open with a doc comment of its job, inputs, outputs and invariants",
            lib.display()
        );
    }
}
