//! The crate's structure, checked from its source (parsed with `syn`, no build needed):
//! - no import cycle among modules: at every level of the tree, the sibling modules' `crate::`/`super::`
//!   references form a graph without cycles (a child using its parent, or a parent its child, is not
//!   an edge between siblings);
//! - every `unsafe` block, function and impl lives under `src/sys/`;
//! - no source file is longer than `MAX_LINES`, except those whose module doc says why (`//! Size:`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use syn::visit::Visit;

const MAX_LINES: usize = 600;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src/` with its module path (`logs/mod.rs` → `["logs"]`, `main.rs` → `[]`).
fn files() -> Vec<(PathBuf, Vec<String>)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut paths = Vec::new();
    walk(&src(), &mut paths);
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(src()).unwrap().with_extension("");
            let mut m: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(m.last().map(String::as_str), Some("mod" | "main")) {
                m.pop();
            }
            (p, m)
        })
        .collect()
}

/// One reference from a module to a path in the crate.
struct Reference {
    target: Vec<String>,
    line: usize,
}

/// Collects the crate-relative paths a file names, and its `unsafe` sites.
struct Refs {
    /// The module the visitor is in: the file's module plus the inline modules around the item.
    here: Vec<String>,
    found: Vec<Reference>,
    unsafe_lines: Vec<usize>,
    /// Calls (or module imports) of `nix`/`libc` functions outside test code: (path, line).
    syscalls: Vec<(String, usize)>,
    /// How many `#[cfg(test)]` items the visitor is inside.
    in_test: usize,
    /// Out-of-line `#[cfg(test)] mod NAME;` declared in this file, as module paths.
    test_modules: Vec<Vec<String>>,
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Path>()
                .is_ok_and(|p| p.is_ident("test"))
    })
}

/// A `nix::…`/`libc::…` path naming a function or a module (a call can follow), not a type or constant.
fn names_a_syscall(segments: &[String]) -> bool {
    matches!(segments.first().map(String::as_str), Some("nix" | "libc"))
        && segments.len() > 1
        && segments[1..]
            .iter()
            .all(|s| s.starts_with(|c: char| c.is_ascii_lowercase()) || s == "self")
}

impl Refs {
    fn resolve(&self, segments: &[String]) -> Option<Vec<String>> {
        let mut at = match segments.first().map(String::as_str) {
            Some("crate") => Vec::new(),
            Some("super") | Some("self") => self.here.clone(),
            _ => return None,
        };
        let mut rest = segments;
        if rest[0] == "crate" {
            rest = &rest[1..];
        }
        while let Some(first) = rest.first() {
            match first.as_str() {
                "super" => {
                    at.pop();
                }
                "self" => {}
                _ => break,
            }
            rest = &rest[1..];
        }
        at.extend(rest.iter().cloned());
        Some(at)
    }

    fn note(&mut self, segments: Vec<String>, line: usize) {
        if self.in_test == 0 && names_a_syscall(&segments) {
            self.syscalls.push((segments.join("::"), line));
        }
        if let Some(target) = self.resolve(&segments) {
            self.found.push(Reference { target, line });
        }
    }

    /// Every `crate::a::b…`, `super::…` and `self::…` path in a token stream, groups included.
    fn tokens(&mut self, stream: proc_macro2::TokenStream) {
        use proc_macro2::TokenTree;
        let tokens: Vec<TokenTree> = stream.into_iter().collect();
        let ident = |t: &TokenTree| match t {
            TokenTree::Ident(i) => Some(i.to_string()),
            _ => None,
        };
        let colon =
            |t: Option<&TokenTree>| matches!(t, Some(TokenTree::Punct(p)) if p.as_char() == ':');
        let mut i = 0;
        while i < tokens.len() {
            if let TokenTree::Group(g) = &tokens[i] {
                self.tokens(g.stream());
                i += 1;
                continue;
            }
            let starts =
                ident(&tokens[i]).is_some_and(|s| matches!(s.as_str(), "crate" | "super" | "self"));
            // Not the tail of a longer path (`x::crate` cannot occur; `::super` after `super` is read below).
            let preceded = i >= 1 && colon(tokens.get(i - 1));
            if starts && !preceded {
                let line = tokens[i].span().start().line;
                let mut segments = vec![ident(&tokens[i]).unwrap_or_default()];
                let mut j = i + 1;
                while colon(tokens.get(j)) && colon(tokens.get(j + 1)) {
                    match tokens.get(j + 2).and_then(ident) {
                        Some(s) => segments.push(s),
                        None => break,
                    }
                    j += 3;
                }
                if segments.len() > 1 {
                    self.note(segments, line);
                }
                i = j.max(i + 1);
            } else {
                i += 1;
            }
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let mut s = prefix.clone();
                if n.ident != "self" {
                    s.push(n.ident.to_string());
                }
                self.note(s, n.ident.span().start().line);
            }
            syn::UseTree::Rename(r) => {
                let mut s = prefix.clone();
                if r.ident != "self" {
                    s.push(r.ident.to_string());
                }
                self.note(s, r.ident.span().start().line);
            }
            syn::UseTree::Glob(g) => self.note(prefix.clone(), g.star_token.spans[0].start().line),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Refs {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        let test = is_cfg_test(&m.attrs);
        self.here.push(m.ident.to_string());
        if test && m.content.is_none() {
            self.test_modules.push(self.here.clone());
        }
        self.in_test += usize::from(test);
        syn::visit::visit_item_mod(self, m);
        self.in_test -= usize::from(test);
        self.here.pop();
    }
    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        let test = is_cfg_test(&f.attrs) || f.attrs.iter().any(|a| a.path().is_ident("test"));
        self.in_test += usize::from(test);
        syn::visit::visit_item_fn(self, f);
        self.in_test -= usize::from(test);
    }
    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }
    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        if let Some(first) = p.segments.first() {
            self.note(segments, first.ident.span().start().line);
        }
        syn::visit::visit_path(self, p);
    }
    /// Macro arguments are not parsed by syn (`assert!(crate::x::f())`): their paths are read from the
    /// tokens.
    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.tokens(m.tokens.clone());
        syn::visit::visit_macro(self, m);
    }
    fn visit_expr_unsafe(&mut self, e: &'ast syn::ExprUnsafe) {
        self.unsafe_lines.push(e.unsafe_token.span.start().line);
        syn::visit::visit_expr_unsafe(self, e);
    }
    fn visit_signature(&mut self, s: &'ast syn::Signature) {
        if let Some(u) = &s.unsafety {
            self.unsafe_lines.push(u.span.start().line);
        }
        syn::visit::visit_signature(self, s);
    }
    fn visit_item_impl(&mut self, i: &'ast syn::ItemImpl) {
        if let Some(u) = &i.unsafety {
            self.unsafe_lines.push(u.span.start().line);
        }
        syn::visit::visit_item_impl(self, i);
    }
}

struct Crate {
    /// Every module that is a file, by path.
    modules: BTreeSet<Vec<String>>,
    /// (from module, to path, file, line) for every crate-relative reference.
    refs: Vec<(Vec<String>, Vec<String>, PathBuf, usize)>,
    unsafe_sites: Vec<(PathBuf, usize)>,
    lines: Vec<(PathBuf, usize, String)>,
    /// (module, file, `nix::…` path, line) outside test code.
    syscalls: Vec<(Vec<String>, PathBuf, String, usize)>,
    /// Modules that exist only in tests (`#[cfg(test)] mod tests;`).
    test_modules: Vec<Vec<String>>,
}

fn read_crate() -> Crate {
    let files = files();
    let mut c = Crate {
        modules: files.iter().map(|(_, m)| m.clone()).collect(),
        refs: Vec::new(),
        unsafe_sites: Vec::new(),
        lines: Vec::new(),
        syscalls: Vec::new(),
        test_modules: Vec::new(),
    };
    for (path, module) in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let file = syn::parse_file(&text)
            .unwrap_or_else(|e| panic!("{}: does not parse: {e}", path.display()));
        let mut v = Refs {
            here: module.clone(),
            found: Vec::new(),
            unsafe_lines: Vec::new(),
            syscalls: Vec::new(),
            in_test: 0,
            test_modules: Vec::new(),
        };
        v.visit_file(&file);
        for r in v.found {
            c.refs
                .push((module.clone(), r.target, path.clone(), r.line));
        }
        for l in v.unsafe_lines {
            c.unsafe_sites.push((path.clone(), l));
        }
        for (call, l) in v.syscalls {
            c.syscalls.push((module.clone(), path.clone(), call, l));
        }
        c.test_modules.extend(v.test_modules);
        let doc: String = text
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .collect::<Vec<_>>()
            .join("\n");
        c.lines.push((path, text.lines().count(), doc));
    }
    c
}

/// The longest prefix of `path` that is a file module.
fn module_of(modules: &BTreeSet<Vec<String>>, path: &[String]) -> Vec<String> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
        .unwrap_or_default()
}

type Edges = BTreeMap<String, BTreeMap<String, (PathBuf, usize)>>;

/// The sibling edges at every level: parent module → (child → child → where).
fn sibling_graphs(c: &Crate) -> BTreeMap<Vec<String>, Edges> {
    let mut graphs: BTreeMap<Vec<String>, Edges> = BTreeMap::new();
    for (from, to, file, line) in &c.refs {
        let from = module_of(&c.modules, from);
        let to = module_of(&c.modules, to);
        let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
        // One is the other's ancestor: a parent and its child, not siblings.
        if common == from.len() || common == to.len() {
            continue;
        }
        graphs
            .entry(from[..common].to_vec())
            .or_default()
            .entry(from[common].clone())
            .or_default()
            .entry(to[common].clone())
            .or_insert((file.clone(), *line));
    }
    graphs
}

/// A cycle in `edges`, as the list of nodes around it, if there is one.
fn find_cycle(edges: &Edges) -> Option<Vec<String>> {
    fn dfs(
        n: &str,
        edges: &Edges,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_owned(), 1);
        stack.push(n.to_owned());
        for next in edges.get(n).into_iter().flat_map(|m| m.keys()) {
            match state.get(next).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| s == next).unwrap();
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = dfs(next, edges, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if state.get(n).copied().unwrap_or(0) == 0 {
            if let Some(c) = dfs(n, edges, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn modules_have_no_import_cycle() {
    let c = read_crate();
    let mut failures = Vec::new();
    for (parent, edges) in sibling_graphs(&c) {
        if let Some(cycle) = find_cycle(&edges) {
            let at = if parent.is_empty() {
                "crate".to_owned()
            } else {
                format!("crate::{}", parent.join("::"))
            };
            let hops: Vec<String> = cycle
                .windows(2)
                .map(|w| {
                    let (file, line) = &edges[&w[0]][&w[1]];
                    format!("{} → {} ({}:{line})", w[0], w[1], file.display())
                })
                .collect();
            failures.push(format!("cycle among {at}'s modules: {}", hops.join(", ")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_checker_finds_a_cycle_it_is_shown() {
    let mut edges = Edges::new();
    let at = (PathBuf::from("x.rs"), 1);
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        edges
            .entry(a.into())
            .or_default()
            .insert(b.into(), at.clone());
    }
    assert_eq!(
        find_cycle(&edges),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    edges.get_mut("c").unwrap().remove("a");
    assert_eq!(find_cycle(&edges), None);
}

#[test]
fn unsafe_lives_only_under_sys() {
    let c = read_crate();
    let sys = src().join("sys");
    let outside: Vec<String> = c
        .unsafe_sites
        .iter()
        .filter(|(p, _)| !p.starts_with(&sys))
        .map(|(p, l)| format!("{}:{l}", p.display()))
        .collect();
    assert!(
        outside.is_empty(),
        "unsafe outside src/sys (move it behind a safe function there): {}",
        outside.join(", ")
    );
}

#[test]
fn syscalls_are_made_only_under_sys() {
    let c = read_crate();
    let sys = src().join("sys");
    let outside: Vec<String> = c
        .syscalls
        .iter()
        .filter(|(m, p, _, _)| {
            !p.starts_with(&sys) && !c.test_modules.iter().any(|t| m.starts_with(t))
        })
        .map(|(_, p, call, l)| format!("{call} ({}:{l})", p.display()))
        .collect();
    assert!(
        outside.is_empty(),
        "nix/libc functions called outside src/sys (wrap them in a safe function there; types and constants are fine): {}",
        outside.join(", ")
    );
}

#[test]
fn the_syscall_check_tells_calls_from_types() {
    let p = |s: &str| s.split("::").map(String::from).collect::<Vec<_>>();
    assert!(names_a_syscall(&p("nix::unistd::geteuid")));
    assert!(names_a_syscall(&p("nix::sys::signal::self")));
    assert!(!names_a_syscall(&p("nix::unistd::Uid")));
    assert!(!names_a_syscall(&p("nix::libc::O_NOFOLLOW")));
    assert!(!names_a_syscall(&p("nix::errno::Errno::EINTR")));
    assert!(!names_a_syscall(&p("std::fs::rename")));
}

#[test]
fn files_stay_short_or_say_why() {
    let c = read_crate();
    let long: Vec<String> = c
        .lines
        .iter()
        .filter(|(_, n, doc)| *n > MAX_LINES && !doc.contains("//! Size:"))
        .map(|(p, n, _)| format!("{} ({n} lines)", p.display()))
        .collect();
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines whose module doc does not say why (`//! Size: ...`): {}",
        long.join(", ")
    );
}

/// The top-level modules: `src/NAME.rs` and `src/NAME/`.
fn top_level_modules() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(src())
        .unwrap()
        .flatten()
        .map(|e| {
            let p = e.path();
            p.file_stem().unwrap().to_string_lossy().into_owned()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn the_readme_and_the_architecture_page_name_every_module() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let row = readme
        .lines()
        .find(|l| l.starts_with("| `agent/src/` |"))
        .expect("README's layout has an `agent/src/` row");
    let architecture = std::fs::read_to_string(repo.join("docs/architecture.md")).unwrap();
    let table: String = architecture
        .lines()
        .filter(|l| l.starts_with("| `"))
        .collect::<Vec<_>>()
        .join("\n");
    for m in top_level_modules() {
        let dir = src().join(&m).is_dir();
        let shown = if dir {
            format!("`{m}/`")
        } else {
            format!("`{m}")
        };
        assert!(
            row.contains(&shown),
            "README's agent/src row does not name {shown}"
        );
        let file = if dir {
            format!("`{m}/`")
        } else {
            format!("`{m}.rs`")
        };
        assert!(
            table.contains(&file),
            "docs/architecture.md's table does not name {file}"
        );
    }
}
