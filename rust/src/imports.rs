//! Import extraction with tree-sitter: Python, JavaScript/TypeScript and shell.
//!
//! Only syntax is read here; resolving a specifier to a file is the Python side's job
//! (python/ciopt/infer/), because it depends on source roots and configuration.
//! tree-sitter recovers from syntax errors, so a half-edited file still yields the
//! imports it can see.

use std::cell::RefCell;
use std::path::Path;

use tree_sitter::{Language, Node, Parser};

/// Guarded by `try: ... except ImportError` or `contextlib.suppress(ImportError)`.
pub const WEAK: u32 = 1;
/// Inside `if TYPE_CHECKING:`; never executed at run time.
pub const TYPE_CHECKING: u32 = 2;
/// `importlib.import_module("x")`, `__import__("x")`, JS `import("x")`.
pub const DYNAMIC: u32 = 4;
/// Inside a function body: imported when called, not when loaded.
pub const LAZY: u32 = 8;
/// A dynamic import whose argument is not a literal; `module` holds the expression text.
pub const UNRESOLVED: u32 = 16;
/// `from x import *`.
pub const STAR: u32 = 32;
/// JS/TS `export ... from "x"`.
pub const REEXPORT: u32 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    Python,
    JavaScript,
    TypeScript,
    Tsx,
    Bash,
}

impl Lang {
    pub fn from_path(p: &Path) -> Option<Lang> {
        let ext = p.extension()?.to_str()?;
        Some(match ext {
            "py" | "pyi" => Lang::Python,
            "js" | "mjs" | "cjs" | "jsx" => Lang::JavaScript,
            "ts" | "mts" | "cts" => Lang::TypeScript,
            "tsx" => Lang::Tsx,
            "sh" | "bash" => Lang::Bash,
            _ => return None,
        })
    }

    pub fn parse_name(name: &str) -> Option<Lang> {
        Some(match name {
            "python" => Lang::Python,
            "javascript" => Lang::JavaScript,
            "typescript" => Lang::TypeScript,
            "tsx" => Lang::Tsx,
            "bash" | "shell" => Lang::Bash,
            _ => return None,
        })
    }

    fn grammar(self) -> Language {
        match self {
            Lang::Python => tree_sitter_python::LANGUAGE.into(),
            Lang::JavaScript => tree_sitter_javascript::LANGUAGE.into(),
            Lang::TypeScript => tree_sitter_typescript::LANGUAGE_TYPESCRIPT.into(),
            Lang::Tsx => tree_sitter_typescript::LANGUAGE_TSX.into(),
            Lang::Bash => tree_sitter_bash::LANGUAGE.into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Import {
    /// Dotted module (Python, without the leading dots), path specifier (JS, shell), or
    /// the expression text of an UNRESOLVED dynamic import.
    pub module: String,
    /// Python relative import level (number of leading dots); 0 otherwise.
    pub level: u32,
    /// Names of `from module import a, b` (each may be a submodule).
    pub names: Vec<String>,
    /// 1-based line of the statement.
    pub line: u32,
    pub flags: u32,
}

thread_local! {
    static PARSERS: RefCell<Vec<(Lang, Parser)>> = const { RefCell::new(Vec::new()) };
}

/// Imports of a source. Python goes through the lexical pre-scanner (`pyscan`), which yields
/// exactly what `extract_full` would, and declines (then `extract_full` runs) whatever it
/// cannot be sure of.
pub fn extract(lang: Lang, source: &[u8]) -> Vec<Import> {
    if lang == Lang::Python {
        if let Ok(v) = crate::pyscan::scan(source) {
            return v;
        }
    }
    extract_full(lang, source)
}

/// Imports of a source from its whole tree-sitter tree: the reference for the fast path.
pub fn extract_full(lang: Lang, source: &[u8]) -> Vec<Import> {
    let tree = PARSERS.with(|cell| {
        let mut parsers = cell.borrow_mut();
        if !parsers.iter().any(|(l, _)| *l == lang) {
            let mut p = Parser::new();
            p.set_language(&lang.grammar()).expect("grammar compatible with the tree-sitter runtime");
            parsers.push((lang, p));
        }
        let (_, parser) = parsers.iter_mut().find(|(l, _)| *l == lang).unwrap();
        parser.parse(source, None)
    });
    let Some(tree) = tree else { return Vec::new() };
    let mut out = Vec::new();
    let root = tree.root_node();
    match lang {
        Lang::Python => {
            // Dynamic imports can sit in any expression, static ones only in statements: a file
            // that never names importlib/__import__ needs only its statement skeleton walked.
            let dynamic = memchr_any(source, &[b"import_module", b"__import__"]);
            python(root, source, 0, dynamic, &mut out)
        }
        Lang::JavaScript | Lang::TypeScript | Lang::Tsx => javascript(root, source, &mut out),
        Lang::Bash => bash(root, source, &mut out),
    }
    out
}

fn text<'a>(n: Node, src: &'a [u8]) -> &'a str {
    std::str::from_utf8(&src[n.byte_range()]).unwrap_or("")
}

fn line(n: Node) -> u32 {
    n.start_position().row as u32 + 1
}

// ---- Python ----------------------------------------------------------------------------

fn memchr_any(hay: &[u8], needles: &[&[u8]]) -> bool {
    needles.iter().any(|n| hay.windows(n.len()).any(|w| w == *n))
}

/// Node kinds that can hold an import statement somewhere below them.
fn holds_statements(kind: &str) -> bool {
    matches!(
        kind,
        "module"
            | "block"
            | "if_statement"
            | "elif_clause"
            | "else_clause"
            | "try_statement"
            | "except_clause"
            | "except_group_clause"
            | "finally_clause"
            | "with_statement"
            | "for_statement"
            | "while_statement"
            | "function_definition"
            | "class_definition"
            | "decorated_definition"
            | "match_statement"
            | "case_clause"
            | "import_statement"
            | "import_from_statement"
    )
}

fn python(n: Node, src: &[u8], flags: u32, dynamic: bool, out: &mut Vec<Import>) {
    match n.kind() {
        "import_statement" => {
            let mut c = n.walk();
            for name in n.children_by_field_name("name", &mut c) {
                let dotted = if name.kind() == "aliased_import" { name.child_by_field_name("name") } else { Some(name) };
                if let Some(d) = dotted {
                    out.push(Import { module: text(d, src).to_string(), level: 0, names: vec![], line: line(n), flags });
                }
            }
            return;
        }
        "import_from_statement" => {
            let Some(m) = n.child_by_field_name("module_name") else { return };
            let (module, level) = if m.kind() == "relative_import" {
                let mut level = 0;
                let mut module = String::new();
                let mut c = m.walk();
                for part in m.children(&mut c) {
                    match part.kind() {
                        "import_prefix" => level = text(part, src).chars().filter(|&ch| ch == '.').count() as u32,
                        "dotted_name" => module = text(part, src).to_string(),
                        _ => {}
                    }
                }
                (module, level)
            } else {
                (text(m, src).to_string(), 0)
            };
            let mut names = Vec::new();
            let mut star = 0;
            let mut c = n.walk();
            for name in n.children_by_field_name("name", &mut c) {
                let dotted = if name.kind() == "aliased_import" { name.child_by_field_name("name") } else { Some(name) };
                if let Some(d) = dotted {
                    names.push(text(d, src).to_string());
                }
            }
            let mut c = n.walk();
            if n.children(&mut c).any(|ch| ch.kind() == "wildcard_import") {
                star = STAR;
            }
            out.push(Import { module, level, names, line: line(n), flags: flags | star });
            return;
        }
        "future_import_statement" => return,
        "call" => python_dynamic(n, src, flags, out),
        _ => {}
    }
    let mut c = n.walk();
    for child in n.children(&mut c) {
        if !dynamic && !holds_statements(child.kind()) {
            continue;
        }
        let mut f = flags;
        match n.kind() {
            "function_definition" | "lambda" => f |= LAZY,
            "try_statement" if child.kind() == "block" && try_catches_import_error(n, src) => f |= WEAK,
            "with_statement" if child.kind() == "block" && with_suppresses(n, src) => f |= WEAK,
            "if_statement" if Some(child) == n.child_by_field_name("consequence") && is_type_checking(n, src) => {
                f |= TYPE_CHECKING
            }
            _ => {}
        }
        python(child, src, f, dynamic, out);
    }
}

fn try_catches_import_error(try_stmt: Node, src: &[u8]) -> bool {
    let mut c = try_stmt.walk();
    let found =
        try_stmt.children(&mut c).filter(|ch| ch.kind() == "except_clause").any(|ex| except_catches_import_error(text(ex, src)));
    found
}

/// Whether an except clause (its text from `except` on, at least up to its first ':') catches
/// ImportError: the text up to that ':' names what it catches; a bare except catches all.
/// Shared with the lexical fast path (`pyscan`), which must decide exactly alike.
pub(crate) fn except_catches_import_error(clause: &str) -> bool {
    let head = clause.split(':').next().unwrap_or("");
    let head = head.trim();
    head == "except"
        || head.contains("ImportError")
        || head.contains("ModuleNotFoundError")
        || head.contains("BaseException")
        || head.split(|ch: char| !ch.is_alphanumeric()).any(|w| w == "Exception")
}

fn with_suppresses(with: Node, src: &[u8]) -> bool {
    let mut c = with.walk();
    let clause = with.children(&mut c).find(|ch| ch.kind() == "with_clause");
    clause.is_some_and(|cl| with_suppresses_import_error(text(cl, src)))
}

/// Whether a with statement's items (`with_clause` text) suppress ImportError.
pub(crate) fn with_suppresses_import_error(clause: &str) -> bool {
    clause.contains("suppress") && (clause.contains("ImportError") || clause.contains("ModuleNotFoundError"))
}

fn is_type_checking(if_stmt: Node, src: &[u8]) -> bool {
    if_stmt.child_by_field_name("condition").is_some_and(|c| is_type_checking_condition(text(c, src)))
}

/// Whether an if condition's text is `TYPE_CHECKING` or `<x>.TYPE_CHECKING`.
pub(crate) fn is_type_checking_condition(cond: &str) -> bool {
    let t = cond.trim();
    t == "TYPE_CHECKING" || t.ends_with(".TYPE_CHECKING")
}

fn string_literal(n: Node, src: &[u8]) -> Option<String> {
    if n.kind() != "string" {
        return None;
    }
    let mut c = n.walk();
    let mut out = String::new();
    for ch in n.children(&mut c) {
        match ch.kind() {
            "string_content" => out.push_str(text(ch, src)),
            "interpolation" => return None, // an f-string is not a literal
            _ => {}
        }
    }
    Some(out)
}

fn python_dynamic(call: Node, src: &[u8], flags: u32, out: &mut Vec<Import>) {
    let Some(func) = call.child_by_field_name("function") else { return };
    let name = text(func, src);
    let is_dynamic = matches!(name, "importlib.import_module" | "import_module" | "__import__");
    if !is_dynamic {
        return;
    }
    let Some(args) = call.child_by_field_name("arguments") else { return };
    let mut c = args.walk();
    let children: Vec<Node> = args.named_children(&mut c).collect();
    let positional: Vec<Node> = children.iter().copied().filter(|a| a.kind() != "keyword_argument").collect();
    let Some(first) = positional.first() else { return };
    // The `package` argument: import_module's second positional or `package=`.
    let package = positional.get(1).copied().or_else(|| {
        children.iter().copied().find(|k| {
            k.kind() == "keyword_argument" && k.child_by_field_name("name").is_some_and(|n| text(n, src) == "package")
        })
        .and_then(|k| k.child_by_field_name("value"))
    });
    out.push(dynamic_import(
        text(call, src),
        line(call),
        flags,
        string_literal(*first, src),
        package.and_then(|p| string_literal(p, src)),
    ));
}

/// A dynamic import call with at least one positional argument: `first` is that argument's
/// value when it is a plain string literal, `package` the package argument's likewise.
/// Shared with the lexical fast path (`pyscan`).
pub(crate) fn dynamic_import(call: &str, line: u32, flags: u32, first: Option<String>, package: Option<String>) -> Import {
    let unresolved =
        || Import { module: call.to_string(), level: 0, names: vec![], line, flags: flags | DYNAMIC | UNRESOLVED };
    let Some(lit) = first else { return unresolved() };
    let level = lit.chars().take_while(|&ch| ch == '.').count();
    if level == 0 {
        return Import { module: lit, level: 0, names: vec![], line, flags: flags | DYNAMIC };
    }
    // A relative name is resolved against the `package` argument, not against the calling
    // file: only a literal package can be followed.
    let Some(pkg) = package else { return unresolved() };
    let mut parts: Vec<&str> = pkg.split('.').filter(|p| !p.is_empty()).collect();
    if level - 1 > parts.len() {
        return unresolved();
    }
    parts.truncate(parts.len() - (level - 1));
    let rest = &lit[level..];
    let module = if rest.is_empty() {
        parts.join(".")
    } else if parts.is_empty() {
        rest.to_string()
    } else {
        format!("{}.{rest}", parts.join("."))
    };
    Import { module, level: 0, names: vec![], line, flags: flags | DYNAMIC }
}

// ---- JavaScript / TypeScript ------------------------------------------------------------

fn js_string(n: Node, src: &[u8]) -> Option<String> {
    match n.kind() {
        "string" => {
            let t = text(n, src);
            (t.len() >= 2).then(|| t[1..t.len() - 1].to_string())
        }
        "template_string" => {
            let t = text(n, src);
            (!t.contains("${") && t.len() >= 2).then(|| t[1..t.len() - 1].to_string())
        }
        _ => None,
    }
}

fn javascript(n: Node, src: &[u8], out: &mut Vec<Import>) {
    match n.kind() {
        "import_statement" | "export_statement" => {
            if let Some(s) = n.child_by_field_name("source").and_then(|s| js_string(s, src)) {
                let flags = if n.kind() == "export_statement" { REEXPORT } else { 0 };
                out.push(Import { module: s, level: 0, names: vec![], line: line(n), flags });
            }
        }
        "call_expression" => {
            if let (Some(func), Some(args)) = (n.child_by_field_name("function"), n.child_by_field_name("arguments")) {
                let fname = text(func, src);
                if fname == "require" || func.kind() == "import" {
                    let mut c = args.walk();
                    let first = args.named_children(&mut c).next();
                    let flags = if func.kind() == "import" { DYNAMIC } else { 0 };
                    match first.and_then(|a| js_string(a, src)) {
                        Some(s) => out.push(Import { module: s, level: 0, names: vec![], line: line(n), flags }),
                        None => out.push(Import {
                            module: text(n, src).to_string(),
                            level: 0,
                            names: vec![],
                            line: line(n),
                            flags: flags | DYNAMIC | UNRESOLVED,
                        }),
                    }
                }
            }
        }
        // TypeScript's `import x = require("y")`.
        "import_require_clause" => {
            if let Some(s) = n.child_by_field_name("source").and_then(|s| js_string(s, src)) {
                out.push(Import { module: s, level: 0, names: vec![], line: line(n), flags: 0 });
            }
        }
        _ => {}
    }
    let mut c = n.walk();
    for child in n.children(&mut c) {
        javascript(child, src, out);
    }
}

// ---- shell -------------------------------------------------------------------------------

fn bash(n: Node, src: &[u8], out: &mut Vec<Import>) {
    if n.kind() == "command" {
        if let Some(name) = n.child_by_field_name("name") {
            let cmd = text(name, src);
            if cmd == "source" || cmd == "." {
                let mut c = n.walk();
                let arg = n.children_by_field_name("argument", &mut c).next();
                if let Some(a) = arg {
                    let t = text(a, src);
                    let literal = !t.contains('$') && !t.contains('`');
                    let module = t.trim_matches(|ch| ch == '"' || ch == '\'').to_string();
                    let flags = if literal { 0 } else { UNRESOLVED };
                    out.push(Import { module, level: 0, names: vec![], line: line(n), flags });
                }
            }
        }
    }
    let mut c = n.walk();
    for child in n.children(&mut c) {
        bash(child, src, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn py(src: &str) -> Vec<Import> {
        extract(Lang::Python, src.as_bytes())
    }

    #[test]
    fn python_forms() {
        let got = py("import a.b as x, c\n\
                      from .. import d\n\
                      from .e.f import g, h as i\n\
                      from j import *\n\
                      try:\n    import k\nexcept ImportError:\n    k = None\n\
                      if TYPE_CHECKING:\n    import l\n\
                      def f():\n    import m\n\
                      importlib.import_module('n.o')\n\
                      __import__(name)\n\
                      with contextlib.suppress(ImportError):\n    import p\n\
                      from __future__ import annotations\n");
        let brief: Vec<(String, u32, Vec<String>, u32)> =
            got.iter().map(|i| (i.module.clone(), i.level, i.names.clone(), i.flags)).collect();
        assert_eq!(
            brief,
            vec![
                ("a.b".into(), 0, vec![], 0),
                ("c".into(), 0, vec![], 0),
                ("".into(), 2, vec!["d".into()], 0),
                ("e.f".into(), 1, vec!["g".into(), "h".into()], 0),
                ("j".into(), 0, vec![], STAR),
                ("k".into(), 0, vec![], WEAK),
                ("l".into(), 0, vec![], TYPE_CHECKING),
                ("m".into(), 0, vec![], LAZY),
                ("n.o".into(), 0, vec![], DYNAMIC),
                ("__import__(name)".into(), 0, vec![], DYNAMIC | UNRESOLVED),
                ("p".into(), 0, vec![], WEAK),
            ]
        );
        assert_eq!(got[8].line, 13);
    }

    #[test]
    fn relative_import_module_uses_its_package_argument() {
        let got = py("import importlib\n\
                      importlib.import_module('.management', 'django.core')\n\
                      importlib.import_module('..x', package='a.b.c')\n\
                      importlib.import_module('.management', app.name)\n\
                      importlib.import_module('.orphan')\n");
        let brief: Vec<(&str, u32, u32)> = got.iter().map(|i| (i.module.as_str(), i.level, i.flags)).collect();
        assert_eq!(
            brief,
            vec![
                ("importlib", 0, 0),
                ("django.core.management", 0, DYNAMIC),
                ("a.b.x", 0, DYNAMIC),
                ("importlib.import_module('.management', app.name)", 0, DYNAMIC | UNRESOLVED),
                ("importlib.import_module('.orphan')", 0, DYNAMIC | UNRESOLVED),
            ]
        );
    }

    #[test]
    fn statement_skeleton_walk_finds_nested_imports() {
        // No importlib/__import__ in the file: only statements are walked.
        let got = py("class A:\n    def f(self):\n        for x in y:\n            with z:\n                import deep\n\
                      @dec\ndef g():\n    while True:\n        match v:\n            case 1:\n                from m import n\n\
                      x = [i for i in 'import fake']\n");
        let mods: Vec<(&str, u32)> = got.iter().map(|i| (i.module.as_str(), i.flags)).collect();
        assert_eq!(mods, vec![("deep", LAZY), ("m", LAZY)]);
    }

    #[test]
    fn javascript_forms() {
        let src = "import x from './a';\nexport { y } from \"../b\";\nconst z = require('c');\nconst w = import('./d.js');\nrequire(name);\n";
        let got: Vec<(String, u32)> =
            extract(Lang::JavaScript, src.as_bytes()).into_iter().map(|i| (i.module, i.flags)).collect();
        assert_eq!(
            got,
            vec![
                ("./a".into(), 0),
                ("../b".into(), REEXPORT),
                ("c".into(), 0),
                ("./d.js".into(), DYNAMIC),
                ("require(name)".into(), DYNAMIC | UNRESOLVED)
            ]
        );
        let ts = extract(Lang::TypeScript, b"import type { T } from './types';\nimport fs = require('fs');\n");
        assert_eq!(ts.iter().map(|i| i.module.as_str()).collect::<Vec<_>>(), vec!["./types", "fs"]);
    }

    #[test]
    fn shell_source() {
        let got = extract(Lang::Bash, b"source ./lib.sh\n. \"$DIR/x.sh\"\necho hi\n");
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].module.as_str(), got[0].flags), ("./lib.sh", 0));
        assert_eq!(got[1].flags, UNRESOLVED);
    }
}
