//! Fast path of Python import extraction: a lexical pre-scanner.
//!
//! `imports::extract_full` parses every whole file with tree-sitter (~10 MB/s per core). Import
//! statements, however, are found by lexing alone: one pass over the bytes skips comments and
//! every string form (prefixes, triple quotes, escapes, f-string replacement fields), follows
//! bracket nesting and backslash continuations, and cuts the file into logical lines with their
//! indentation. The indentation gives the block structure, and the headers of the few compound
//! statements that matter give the context flags, exactly as the tree walk derives them:
//!
//! - `def` (any depth): LAZY;
//! - the body of a `try:` one of whose `except` clauses (seen later, same indent) catches
//!   ImportError & co.: WEAK; the body of `with ...suppress(ImportError...)`: WEAK;
//! - the consequence of `if TYPE_CHECKING:` / `if x.TYPE_CHECKING:` (not elif/else): TYPE_CHECKING.
//!
//! The statements themselves (`import a.b as c, d`, `from ..x import (y, z)`) are read by a
//! small hand parser that yields the same module/level/names text the tree gives. In a file
//! that names `import_module` or `__import__`, calls of `importlib.import_module`,
//! `import_module` and `__import__` are read too (their arguments: a plain string literal or
//! not, the `package` argument), with the flags of the line they sit on (a `def` line's
//! parameters and annotations are lazy like its body).
//!
//! Whatever this module is not certain to read exactly as tree-sitter does, it declines
//! (`Err(reason)`), and the caller parses that file with tree-sitter: non-UTF-8 bytes, NUL,
//! a lone CR, control characters, form feeds or a tab after spaces in indentation, non-ASCII
//! outside strings and comments (a BOM included), unbalanced brackets, unterminated strings,
//! unknown string prefixes, an f-string replacement field it cannot delimit for sure (a nested
//! string reusing the quote, `:=`, `lambda`, a comment or backslash inside), an unexpected
//! indent or dedent, a header without a body, clauses out of place (else/except/finally), a
//! try without handler, `lambda` in a header, an `import` keyword outside an import statement,
//! an import statement outside the plain forms (blanks inside dotted names, unusual names,
//! a trailing comma without parentheses), a line inside brackets indented less than its block
//! (where tree-sitter's scanner can emit a spurious DEDENT), and dynamic calls it cannot read
//! for sure (in a line with a `lambda`, nested, inside an f-string, with a comment or a
//! generator argument). Safety before speed: a missed import would skip a test it affects.
//!
//! On a file with a syntax error the lexer does not see (a missing comma inside brackets,
//! say), tree-sitter's error recovery may wrap the module in an ERROR node and the tree walk
//! then reports no imports at all; the fast path still reports them.

use crate::imports::{
    dynamic_import, except_catches_import_error, is_type_checking_condition, with_suppresses_import_error,
};
use crate::imports::{Import, LAZY, STAR, TYPE_CHECKING, WEAK};

/// Why the fast path declined a file (the caller then parses it with tree-sitter).
pub type Fallback = &'static str;
type R<T> = Result<T, Fallback>;

/// Imports of a Python source, identical to `imports::extract_full(Lang::Python, src)`, or the
/// reason this scanner cannot be sure of that.
pub fn scan(src: &[u8]) -> R<Vec<Import>> {
    // Every import, static or dynamic, names `import`: a file without it has none. Both
    // `import_module` and `__import__` contain it, so the same search tells whether the file
    // may hold dynamic imports (then calls are looked for too, as the tree walk does).
    let mut any = false;
    let mut dynamic = false;
    let mut from = 0;
    while let Some(k) = find_import(&src[from..]) {
        let at = from + k;
        any = true;
        let after = &src[at + 6..];
        if after.starts_with(b"_module") || (at >= 2 && &src[at - 2..at] == b"__" && after.starts_with(b"__")) {
            dynamic = true;
            break;
        }
        from = at + 6;
    }
    if !any {
        return Ok(Vec::new());
    }
    let text = std::str::from_utf8(src).map_err(|_| "not UTF-8")?;
    if src.contains(&0) {
        return Err("NUL byte");
    }
    let mut lx = Lexer { s: src, i: 0, dynamic, lines: Vec::new(), items: Vec::new() };
    lx.run()?;
    let Lexer { lines, items, .. } = lx;
    structure(text, &lines, &items)
}

/// Offset of the first `import` in `hay`.
fn find_import(hay: &[u8]) -> Option<usize> {
    let mut k = 0;
    while k + 6 <= hay.len() {
        // 'p' is the rarest byte of "import" in source; step between its occurrences.
        let p = hay[k + 2..].iter().position(|&b| b == b'p')?;
        let at = k + p;
        if at + 6 <= hay.len() && &hay[at..at + 6] == b"import" {
            return Some(at);
        }
        k = at + 1;
    }
    None
}

// ---- lexer -------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kw {
    Other,
    If,
    Elif,
    Else,
    Try,
    Except,
    Finally,
    With,
    Def,
    Class,
    For,
    While,
    /// `match` / `case`: soft keywords, a header only when a colon ends them.
    Soft,
}

fn keyword(w: &[u8]) -> Kw {
    match w {
        b"if" => Kw::If,
        b"elif" => Kw::Elif,
        b"else" => Kw::Else,
        b"try" => Kw::Try,
        b"except" => Kw::Except,
        b"finally" => Kw::Finally,
        b"with" => Kw::With,
        b"def" => Kw::Def,
        b"class" => Kw::Class,
        b"for" => Kw::For,
        b"while" => Kw::While,
        b"match" | b"case" => Kw::Soft,
        _ => Kw::Other,
    }
}

/// One logical line.
#[derive(Debug)]
struct Line {
    indent: u32,
    kw: Kw,
    /// Start of the first token (`async` included) and end of the header keyword.
    kw_start: usize,
    kw_end: usize,
    /// The colon ending a compound statement header; usize::MAX if none.
    colon: usize,
    /// A header with nothing after its colon: the next line starts an indented block.
    opener: bool,
    items: std::ops::Range<usize>,
}

/// What the tree walk reports, in source order: an import statement, from its `import`/`from`
/// keyword to its `;` or the end of its line, or a dynamic import call.
#[derive(Debug)]
struct Item {
    start: usize,
    end: usize,
    /// After the header colon of a one-line compound statement (`if x: import y`), or anywhere
    /// in a `def` line (a call in its parameters or annotations is also lazy).
    in_suite: bool,
    /// A call: its first positional argument (None: no positional argument at all; Some(None):
    /// not a plain string literal) and its package argument when that is a literal.
    call: Option<Call>,
}

#[derive(Debug)]
struct Call {
    first: Option<Option<String>>,
    package: Option<String>,
}

struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
    /// The file names import_module/__import__: look for calls.
    dynamic: bool,
    lines: Vec<Line>,
    items: Vec<Item>,
}

#[inline]
fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

#[inline]
fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Index of the '\n' ending the line that holds `i` (or the end of `s`).
#[inline]
fn eol(s: &[u8], i: usize) -> usize {
    s[i..].iter().position(|&b| b == b'\n').map_or(s.len(), |p| i + p)
}

const RAW: u8 = 1;
const FMT: u8 = 2;

/// Flags of a string prefix, as tree-sitter reads it; None for what Python would reject.
fn prefix_flags(w: &[u8]) -> Option<u8> {
    if w.len() > 2 {
        return None;
    }
    let mut l = [0u8; 2];
    for (k, c) in w.iter().enumerate() {
        l[k] = c.to_ascii_lowercase();
    }
    Some(match &l[..w.len()] {
        b"r" => RAW,
        b"u" | b"b" => 0,
        b"br" | b"rb" => RAW,
        b"f" | b"t" => FMT,
        b"fr" | b"rf" | b"tr" | b"rt" => FMT | RAW,
        _ => return None,
    })
}

/// A bracket stack of bounded depth.
struct Brackets {
    st: [u8; 64],
    n: usize,
}

impl Brackets {
    fn new() -> Self {
        Brackets { st: [0; 64], n: 0 }
    }
    #[inline]
    fn push(&mut self, c: u8) -> R<()> {
        if self.n == self.st.len() {
            return Err("brackets nested too deep");
        }
        self.st[self.n] = match c {
            b'(' => b')',
            b'[' => b']',
            _ => b'}',
        };
        self.n += 1;
        Ok(())
    }
    #[inline]
    fn pop(&mut self, c: u8) -> R<()> {
        if self.n == 0 || self.st[self.n - 1] != c {
            return Err("unbalanced brackets");
        }
        self.n -= 1;
        Ok(())
    }
}

impl Lexer<'_> {
    fn run(&mut self) -> R<()> {
        let s = self.s;
        let n = s.len();
        loop {
            // At the start of a physical line that begins a new logical line.
            let mut indent = 0u32;
            let mut spaces = false;
            let mut mixed = false;
            while self.i < n {
                match s[self.i] {
                    b' ' => {
                        indent += 1;
                        spaces = true;
                    }
                    // tree-sitter counts a tab as 8 columns, Python to the next multiple of 8:
                    // they agree unless a tab follows spaces.
                    b'\t' => {
                        mixed |= spaces;
                        indent += 8;
                    }
                    _ => break,
                }
                self.i += 1;
            }
            if self.i >= n {
                return Ok(());
            }
            match s[self.i] {
                b'\n' => {
                    self.i += 1;
                    continue;
                }
                b'\r' => {
                    if s.get(self.i + 1) == Some(&b'\n') {
                        self.i += 2;
                        continue;
                    }
                    return Err("lone CR");
                }
                b'#' => {
                    self.i = eol(s, self.i);
                    continue;
                }
                b'\\' => return Err("backslash at the start of a line"),
                0x0c => return Err("form feed in indentation"),
                _ => {}
            }
            if mixed {
                return Err("tab after spaces in indentation");
            }
            self.line(indent)?;
        }
    }

    /// Lexes one logical line starting at its first token; leaves `i` after its newline.
    fn line(&mut self, indent: u32) -> R<()> {
        let s = self.s;
        let n = s.len();
        let item_lo = self.items.len();
        let mut kw = Kw::Other;
        let (mut kw_start, mut kw_end) = (self.i, self.i);
        let mut header = false;
        let mut colon = usize::MAX;
        let mut after_colon = false;
        let mut last_colon = false;
        let mut seg_pending = true;
        let mut open_seg: Option<usize> = None;
        // The open statement is a from-import still to meet its `import`.
        let mut from_seg = false;
        let mut in_suite = false;
        let mut first = true;
        let mut async_pending = false;
        let mut br = Brackets::new();
        // For telling calls of import_module/__import__: the previous token was '.', was
        // `def`/`class`; where an `importlib` not after a '.' ends; a `lambda` so far.
        let mut prev_dot = false;
        let mut prev_defclass = false;
        let mut importlib_end = usize::MAX;
        let mut lambda_seen = false;
        loop {
            if self.i >= n {
                if br.n > 0 {
                    return Err("unclosed bracket at end of file");
                }
                break;
            }
            let c = s[self.i];
            match c {
                b' ' | b'\t' | 0x0c => {
                    self.i += 1;
                    continue;
                }
                b'\\' => {
                    match (s.get(self.i + 1), s.get(self.i + 2)) {
                        (Some(b'\n'), _) => self.i += 2,
                        (Some(b'\r'), Some(b'\n')) => self.i += 3,
                        _ => return Err("backslash outside a string not before a newline"),
                    }
                    continue;
                }
                b'#' => {
                    self.i = eol(s, self.i);
                    continue;
                }
                b'\n' => {
                    if br.n == 0 {
                        break;
                    }
                    self.i += 1;
                    bracket_break(s, self.i, indent)?;
                    continue;
                }
                b'\r' => {
                    if s.get(self.i + 1) != Some(&b'\n') {
                        return Err("lone CR");
                    }
                    if br.n == 0 {
                        break;
                    }
                    self.i += 2;
                    bracket_break(s, self.i, indent)?;
                    continue;
                }
                _ => {}
            }
            // A significant token starts here.
            let tok = self.i;
            if colon != usize::MAX {
                after_colon = true;
            }
            last_colon = false;
            let seg_start = std::mem::replace(&mut seg_pending, false);
            let is_first = std::mem::replace(&mut first, false);
            let was_dot = std::mem::replace(&mut prev_dot, false);
            let was_defclass = std::mem::replace(&mut prev_defclass, false);
            if is_ident_start(c) {
                let mut j = tok + 1;
                while j < n && is_ident(s[j]) {
                    j += 1;
                }
                let word = &s[tok..j];
                if j < n && (s[j] == b'\'' || s[j] == b'"') {
                    let fl = prefix_flags(word).ok_or("unknown string prefix")?;
                    if async_pending {
                        return Err("async not before def/with/for");
                    }
                    self.i = string(s, j, fl, 0, 0)?.0;
                    continue;
                }
                if j < n && s[j] >= 0x80 {
                    return Err("non-ASCII identifier");
                }
                self.i = j;
                if seg_start && (word == b"import" || word == b"from") {
                    self.items.push(Item { start: tok, end: 0, in_suite, call: None });
                    open_seg = Some(self.items.len() - 1);
                    from_seg = word == b"from";
                } else if word == b"import" {
                    // Only a from-import holds a second `import`; anywhere else the keyword
                    // means a mangled statement, which tree-sitter recovers from its own way.
                    if !std::mem::replace(&mut from_seg, false) || open_seg.is_none() {
                        return Err("import keyword outside an import statement");
                    }
                }
                if is_first {
                    kw_start = tok;
                    kw_end = j;
                    if word == b"async" {
                        async_pending = true;
                    } else {
                        kw = keyword(word);
                        header = kw != Kw::Other;
                    }
                } else if async_pending {
                    async_pending = false;
                    kw = match word {
                        b"def" => Kw::Def,
                        b"with" => Kw::With,
                        b"for" => Kw::For,
                        _ => return Err("async not before def/with/for"),
                    };
                    kw_end = j;
                    header = true;
                } else if word == b"lambda" && header && colon == usize::MAX && br.n == 0 {
                    // Its colon could be taken for the header's.
                    if kw == Kw::Soft {
                        header = false;
                    } else {
                        return Err("lambda in a compound statement header");
                    }
                }
                if self.dynamic {
                    match word {
                        b"lambda" => lambda_seen = true,
                        b"def" | b"class" => prev_defclass = true,
                        b"importlib" if !was_dot => importlib_end = j,
                        b"import_module" | b"__import__" if !was_defclass => {
                            // The tree walk takes a call whose function's text is exactly
                            // `importlib.import_module`, `import_module` or `__import__`.
                            let callee = if !was_dot {
                                Some(tok)
                            } else if word == b"import_module" && importlib_end == tok - 1 && s[tok - 1] == b'.' {
                                Some(tok - 10)
                            } else {
                                None
                            };
                            // Blanks (and, inside brackets, line breaks and comments) may
                            // come before the '('.
                            let mut k = j;
                            loop {
                                match s.get(k) {
                                    Some(b' ' | b'\t' | 0x0c) => k += 1,
                                    Some(b'\\') => match (s.get(k + 1), s.get(k + 2)) {
                                        (Some(b'\n'), _) => k += 2,
                                        (Some(b'\r'), Some(b'\n')) => k += 3,
                                        _ => return Err("backslash outside a string not before a newline"),
                                    },
                                    Some(b'\r') if br.n > 0 => k += 1,
                                    Some(b'\n') if br.n > 0 => {
                                        k += 1;
                                        bracket_break(s, k, indent)?;
                                    }
                                    Some(b'#') if br.n > 0 => k = eol(s, k),
                                    _ => break,
                                }
                            }
                            if let (Some(b'('), Some(start)) = (s.get(k), callee) {
                                if lambda_seen {
                                    return Err("dynamic import in a line with a lambda");
                                }
                                let (end, call) = call_args(s, k, indent)?;
                                let in_suite = in_suite || kw == Kw::Def;
                                self.items.push(Item { start, end, in_suite, call: Some(call) });
                                self.i = end;
                            }
                        }
                        _ => {}
                    }
                }
                continue;
            }
            if async_pending {
                return Err("async not before def/with/for");
            }
            match c {
                b'\'' | b'"' => self.i = string(s, tok, 0, 0, 0)?.0,
                b'0'..=b'9' => self.i = number(s, tok),
                b'.' => {
                    if s.get(tok + 1).is_some_and(u8::is_ascii_digit) {
                        self.i = number(s, tok);
                    } else {
                        prev_dot = true;
                        self.i += 1;
                    }
                }
                b'(' | b'[' | b'{' => {
                    br.push(c)?;
                    self.i += 1;
                }
                b')' | b']' | b'}' => {
                    br.pop(c)?;
                    self.i += 1;
                }
                b':' => {
                    if s.get(tok + 1) == Some(&b'=') {
                        self.i += 2; // walrus
                    } else {
                        self.i += 1;
                        if br.n == 0 {
                            if header && colon == usize::MAX {
                                colon = tok;
                                in_suite = true;
                                seg_pending = true;
                                after_colon = false;
                            }
                            last_colon = true;
                        }
                    }
                }
                b';' => {
                    self.i += 1;
                    if br.n == 0 {
                        if header && colon == usize::MAX {
                            if kw != Kw::Soft {
                                return Err("semicolon in a compound statement header");
                            }
                            header = false;
                        }
                        if let Some(k) = open_seg.take() {
                            self.items[k].end = tok;
                        }
                        seg_pending = true;
                    }
                }
                c if is_operator(c) => self.i += 1,
                c if c >= 0x80 => return Err("non-ASCII outside strings and comments"),
                // A control character (tree-sitter takes \v for a blank), `$`, `?`, a backquote.
                _ => return Err("unexpected character"),
            }
        }
        // End of the logical line: `i` is at its newline (or the end of the file).
        if let Some(k) = open_seg.take() {
            self.items[k].end = self.i;
        }
        if async_pending {
            return Err("async not before def/with/for");
        }
        if header && colon == usize::MAX {
            if kw != Kw::Soft {
                return Err("compound statement header without a colon");
            }
            header = false;
        }
        let opener = header && !after_colon;
        if last_colon && !opener {
            return Err("line ends with a colon that opens no block");
        }
        self.lines.push(Line {
            indent,
            kw: if header { kw } else { Kw::Other },
            kw_start,
            kw_end,
            colon,
            opener,
            items: item_lo..self.items.len(),
        });
        if self.i < n {
            self.i += if s[self.i] == b'\r' { 2 } else { 1 };
        }
        Ok(())
    }
}

/// After a line break inside brackets, at the start of the next physical line: tree-sitter's
/// scanner may emit a DEDENT there (it does after a `.` or an operator, where no closing
/// bracket could follow) when the line is indented less than the enclosing block, which
/// breaks its tree. Such files are declined.
fn bracket_break(s: &[u8], at: usize, indent: u32) -> R<()> {
    let mut col = 0u32;
    for &c in &s[at..] {
        match c {
            b' ' => col += 1,
            b'\t' => col += 8,
            b'\n' | b'\r' => return Ok(()), // a blank line: the next break is checked
            0x0c => return Err("form feed in a continuation line"),
            _ => break,
        }
    }
    if col < indent && at < s.len() {
        return Err("continuation line inside brackets indented less than its block");
    }
    Ok(())
}

/// Punctuation that may stand between tokens (brackets, quotes, ':' and ';' aside).
#[inline]
fn is_operator(c: u8) -> bool {
    matches!(
        c,
        b'!' | b'%' | b'&' | b'*' | b'+' | b',' | b'-' | b'.' | b'/' | b'<' | b'=' | b'>' | b'@' | b'^' | b'|' | b'~'
    )
}

/// Skips a number from `i`.
fn number(s: &[u8], i: usize) -> usize {
    let mut j = i + 1;
    while j < s.len() && (is_ident(s[j]) || s[j] == b'.') {
        j += 1;
    }
    j
}

/// The arguments of a dynamic import call, from its '(' at `open`; returns the offset after
/// its ')' and what the tree walk reads of them. Anything but plain arguments is declined.
fn call_args(s: &[u8], open: usize, indent: u32) -> R<(usize, Call)> {
    let n = s.len();
    let mut j = open + 1;
    let mut br = Brackets::new();
    // Positional arguments' literal values (None: not a plain literal), the package keyword's.
    let mut positional: Vec<Option<String>> = Vec::new();
    let mut package_kw: Option<Option<String>> = None;
    // The argument being read: tokens so far, its keyword name, its one string literal.
    let mut ntok = 0usize;
    let mut kw_name: Option<&[u8]> = None;
    let mut lit: Option<String> = None;
    loop {
        let Some(&c) = s.get(j) else { return Err("unterminated call") };
        if br.n == 0 && (c == b',' || c == b')') {
            // End of an argument.
            match kw_name.take() {
                Some(name) => {
                    if ntok == 0 {
                        return Err("empty keyword argument");
                    }
                    if name == b"package" && package_kw.is_none() {
                        package_kw = Some(if ntok == 1 { lit.take() } else { None });
                    }
                }
                None if ntok > 0 => positional.push(if ntok == 1 { lit.take() } else { None }),
                // Only `f()` and a trailing comma leave an argument empty.
                None if c == b',' => return Err("empty argument"),
                None => {}
            }
            ntok = 0;
            lit = None;
            j += 1;
            if c == b')' {
                break;
            }
            continue;
        }
        match c {
            b' ' | b'\t' => j += 1,
            b'\n' => {
                j += 1;
                bracket_break(s, j, indent)?;
            }
            b'\r' => {
                if s.get(j + 1) != Some(&b'\n') {
                    return Err("lone CR");
                }
                j += 2;
                bracket_break(s, j, indent)?;
            }
            b'\\' => match (s.get(j + 1), s.get(j + 2)) {
                (Some(b'\n'), _) => j += 2,
                (Some(b'\r'), Some(b'\n')) => j += 3,
                _ => return Err("backslash outside a string not before a newline"),
            },
            b'#' => return Err("comment in a dynamic import call"),
            b'\'' | b'"' => {
                let (end, interp) = string(s, j, 0, 0, 0)?;
                if br.n == 0 {
                    ntok += 1;
                    lit = (!interp).then(|| literal(s, j, end));
                }
                j = end;
            }
            c if is_ident_start(c) => {
                let mut k = j + 1;
                while k < n && is_ident(s[k]) {
                    k += 1;
                }
                let word = &s[j..k];
                if k < n && (s[k] == b'\'' || s[k] == b'"') {
                    let fl = prefix_flags(word).ok_or("unknown string prefix")?;
                    let (end, interp) = string(s, k, fl, 0, 0)?;
                    if br.n == 0 {
                        ntok += 1;
                        lit = (!interp).then(|| literal(s, k, end));
                    }
                    j = end;
                    continue;
                }
                if k < n && s[k] >= 0x80 {
                    return Err("non-ASCII identifier");
                }
                match word {
                    b"import_module" | b"__import__" => return Err("dynamic import inside a dynamic import call"),
                    b"lambda" => return Err("lambda in a dynamic import call"),
                    b"for" if br.n == 0 => return Err("generator argument in a dynamic import call"),
                    _ => {}
                }
                if br.n == 0 && ntok == 0 && kw_name.is_none() {
                    // `name=value` (not `name==value`)?
                    let mut m = k;
                    while m < n && (s[m] == b' ' || s[m] == b'\t') {
                        m += 1;
                    }
                    if s.get(m) == Some(&b'=') && s.get(m + 1) != Some(&b'=') {
                        kw_name = Some(word);
                        j = m + 1;
                        continue;
                    }
                }
                if br.n == 0 {
                    ntok += 1;
                    lit = None;
                }
                j = k;
            }
            b'(' | b'[' | b'{' => {
                if br.n == 0 {
                    ntok += 1;
                    lit = None;
                }
                br.push(c)?;
                j += 1;
            }
            b')' | b']' | b'}' => {
                br.pop(c)?;
                j += 1;
            }
            c if c >= 0x80 => return Err("non-ASCII outside strings and comments"),
            c if !is_operator(c) && !c.is_ascii_digit() && c != b':' => return Err("unexpected character"),
            _ => {
                // Operators, numbers, dots, `*`/`**` splats: not a plain literal.
                if br.n == 0 {
                    ntok += 2;
                    lit = None;
                }
                j += 1;
            }
        }
    }
    let first = positional.first().cloned();
    let package = match positional.get(1) {
        Some(p) => p.clone(),
        None => package_kw.flatten(),
    };
    Ok((j, Call { first, package }))
}

/// The text between a string literal's quotes (its opening quote at `q`, its end at `end`).
fn literal(s: &[u8], q: usize, end: usize) -> String {
    let quote = s[q];
    let triple = end - q >= 6 && s.get(q + 1) == Some(&quote) && s.get(q + 2) == Some(&quote);
    let w = if triple { 3 } else { 1 };
    String::from_utf8_lossy(&s[q + w..end - w]).into_owned()
}

#[inline]
fn quote_bit(q: u8) -> u8 {
    if q == b'\'' {
        1
    } else {
        2
    }
}

/// Skips the string whose opening quote is at `i`; returns the offset after it and whether it
/// holds a replacement field. `enclosing`
/// holds the quotes of the f-strings it sits in (a nested string reusing one is declined: how
/// it reads depends on the Python version), `nest` bounds the recursion.
fn string(s: &[u8], i: usize, fl: u8, enclosing: u8, nest: u32) -> R<(usize, bool)> {
    let q = s[i];
    if enclosing & quote_bit(q) != 0 {
        return Err("f-string nests a string with the same quote");
    }
    if nest > 8 {
        return Err("f-strings nested too deep");
    }
    let triple = s.get(i + 1) == Some(&q) && s.get(i + 2) == Some(&q);
    let mut j = if triple { i + 3 } else { i + 1 };
    let mut interp = false;
    loop {
        let Some(&c) = s.get(j) else { return Err("unterminated string") };
        if c == q {
            if !triple {
                return Ok((j + 1, interp));
            }
            if s.get(j + 1) == Some(&q) && s.get(j + 2) == Some(&q) {
                return Ok((j + 3, interp));
            }
            j += 1;
            continue;
        }
        match c {
            b'\\' => {
                j += 1;
                let Some(&e) = s.get(j) else { return Err("unterminated string") };
                let escaped = if fl & RAW != 0 {
                    // A raw string keeps the backslash but still steps over a quote or a
                    // backslash after it, and over a newline.
                    e == q || e == b'\\'
                } else if e == b'N' && fl & FMT != 0 && s.get(j + 1) == Some(&b'{') {
                    // \N{NAME} is an escape, not a replacement field.
                    let close = s[j..].iter().position(|&b| b == b'}' || b == b'\n' || b == q || b == b'\r');
                    match close {
                        Some(p) if s[j + p] == b'}' => {
                            j += p + 1;
                            continue;
                        }
                        _ => return Err("unterminated \\N{...} in an f-string"),
                    }
                } else {
                    e == q || e == b'\\'
                };
                if escaped {
                    j += 1;
                    if !triple && matches!(s.get(j), Some(b'\n') | Some(b'\r')) {
                        return Err("newline in a string");
                    }
                    continue;
                }
                // A backslash-newline continues the string.
                if e == b'\n' {
                    j += 1;
                } else if e == b'\r' {
                    if s.get(j + 1) != Some(&b'\n') {
                        return Err("lone CR");
                    }
                    j += 2;
                }
                // Any other character after the backslash is read as usual.
            }
            b'\n' => {
                if !triple {
                    return Err("newline in a string");
                }
                j += 1;
            }
            b'\r' => {
                if !triple || s.get(j + 1) != Some(&b'\n') {
                    return Err("CR in a string");
                }
                j += 2;
            }
            b'{' if fl & FMT != 0 => {
                if s.get(j + 1) == Some(&b'{') {
                    j += 2;
                } else {
                    interp = true;
                    j = interpolation(s, j + 1, triple, enclosing | quote_bit(q), nest + 1)?;
                }
            }
            b'}' if fl & FMT != 0 => {
                if s.get(j + 1) == Some(&b'}') {
                    j += 2;
                } else {
                    return Err("single '}' in an f-string");
                }
            }
            _ => j += 1,
        }
    }
}

/// Skips an f-string replacement field from just after its `{`; returns the offset after its `}`.
fn interpolation(s: &[u8], mut j: usize, triple: bool, enclosing: u8, nest: u32) -> R<usize> {
    let n = s.len();
    let mut br = Brackets::new();
    loop {
        let Some(&c) = s.get(j) else { return Err("unterminated f-string") };
        match c {
            b' ' | b'\t' => j += 1,
            b'\n' if triple => j += 1,
            b'\'' | b'"' => j = string(s, j, 0, enclosing, nest + 1)?.0,
            c if is_ident_start(c) => {
                let mut k = j + 1;
                while k < n && is_ident(s[k]) {
                    k += 1;
                }
                let word = &s[j..k];
                if k < n && (s[k] == b'\'' || s[k] == b'"') {
                    let fl = prefix_flags(word).ok_or("unknown string prefix")?;
                    j = string(s, k, fl, enclosing, nest + 1)?.0;
                } else if word == b"lambda" && br.n == 0 {
                    return Err("lambda in an f-string");
                } else if word == b"import_module" || word == b"__import__" {
                    return Err("dynamic import name in an f-string");
                } else {
                    j = k;
                }
            }
            b'(' | b'[' | b'{' => {
                br.push(c)?;
                j += 1;
            }
            b')' | b']' => {
                br.pop(c)?;
                j += 1;
            }
            b'}' => {
                if br.n == 0 {
                    return Ok(j + 1);
                }
                br.pop(c)?;
                j += 1;
            }
            b':' if br.n == 0 => {
                if s.get(j + 1) == Some(&b'=') {
                    return Err("':=' in an f-string");
                }
                return format_spec(s, j + 1, triple, enclosing, nest);
            }
            c if c.is_ascii_digit() || is_operator(c) || c == b':' => j += 1,
            _ => return Err("unexpected character in an f-string replacement field"),
        }
    }
}

/// Skips a format spec from just after its `:`; returns the offset after the field's `}`.
fn format_spec(s: &[u8], mut j: usize, triple: bool, enclosing: u8, nest: u32) -> R<usize> {
    loop {
        let Some(&c) = s.get(j) else { return Err("unterminated f-string") };
        match c {
            b'{' => {
                if s.get(j + 1) == Some(&b'{') {
                    return Err("'{{' in a format spec");
                }
                j = interpolation(s, j + 1, triple, enclosing, nest + 1)?;
            }
            b'}' => return Ok(j + 1),
            b'\n' | b'\r' | b'\\' | b'\'' | b'"' => return Err("unexpected character in a format spec"),
            _ => j += 1,
        }
    }
}

// ---- block structure and flags ----------------------------------------------------------

#[derive(Clone, Copy)]
struct Ctx {
    flags: u32,
    /// Innermost enclosing try body (index into `TryBody`s); u32::MAX if none.
    tbody: u32,
}

struct Level {
    indent: u32,
    ctx: Ctx,
    /// The compound statement whose clauses may follow at this level.
    chain: Chain,
}

/// Which clauses may continue the last statement of a level. Clauses out of place are a
/// syntax error, which tree-sitter recovers from in its own way: such files are declined.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Chain {
    None,
    /// After `if`/`elif`: elif or else.
    If,
    /// After `for`/`while`: else.
    Loop,
    /// A try statement (index into the try statements) and the clauses it has so far.
    Try {
        t: u32,
        except: bool,
        els: bool,
        fin: bool,
    },
}

impl Chain {
    /// A `try` needs an except or finally clause before the next statement.
    fn complete(self) -> R<()> {
        match self {
            Chain::Try { except: false, fin: false, .. } => Err("try without except or finally"),
            _ => Ok(()),
        }
    }
}

fn structure(text: &str, lines: &[Line], items: &[Item]) -> R<Vec<Import>> {
    let src = text.as_bytes();
    // Try statements (does one of their except clauses catch ImportError?) and the nesting of
    // try bodies (try statement, enclosing try body).
    let mut weak_try: Vec<bool> = Vec::new();
    let mut tbodies: Vec<(u32, u32)> = Vec::new();
    let mut found: Vec<(usize, Ctx)> = Vec::new();
    let root = Ctx { flags: 0, tbody: u32::MAX };
    let mut stack = vec![Level { indent: 0, ctx: root, chain: Chain::None }];
    let mut opener: Option<Ctx> = None;
    for line in lines {
        let top = stack.last().unwrap().indent;
        if let Some(body) = opener.take() {
            if line.indent <= top {
                return Err("expected an indented block");
            }
            stack.push(Level { indent: line.indent, ctx: body, chain: Chain::None });
        } else {
            if line.indent > top {
                return Err("unexpected indent");
            }
            while stack.last().unwrap().indent > line.indent {
                stack.pop().unwrap().chain.complete()?;
            }
            if stack.last().unwrap().indent != line.indent {
                return Err("dedent to no enclosing level");
            }
        }
        let level = stack.last_mut().unwrap();
        let base = level.ctx;
        let mut body = base;
        level.chain = match (line.kw, level.chain) {
            (Kw::Except, Chain::Try { t, els: false, fin: false, .. }) => {
                // The tree walk reads the clause's text up to its first ':'.
                if except_catches_import_error(&text[line.kw_start..=line.colon]) {
                    weak_try[t as usize] = true;
                }
                Chain::Try { t, except: true, els: false, fin: false }
            }
            (Kw::Elif, Chain::If) => Chain::If,
            (Kw::Else, Chain::If | Chain::Loop) => Chain::None,
            (Kw::Else, Chain::Try { t, except: true, els: false, fin: false }) => {
                Chain::Try { t, except: true, els: true, fin: false }
            }
            (Kw::Finally, Chain::Try { t, except, els, fin: false }) => Chain::Try { t, except, els, fin: true },
            (Kw::Except | Kw::Elif | Kw::Else | Kw::Finally, _) => return Err("clause out of place"),
            (kw, chain) => {
                chain.complete()?;
                match kw {
                    Kw::If => Chain::If,
                    Kw::For | Kw::While => Chain::Loop,
                    Kw::Try => {
                        let t = weak_try.len() as u32;
                        weak_try.push(false);
                        tbodies.push((t, base.tbody));
                        body.tbody = (tbodies.len() - 1) as u32;
                        Chain::Try { t, except: false, els: false, fin: false }
                    }
                    _ => Chain::None,
                }
            }
        };
        match line.kw {
            Kw::Def => body.flags |= LAZY,
            Kw::If if is_type_checking_condition(trim_extras(&text[line.kw_end..line.colon])) => {
                body.flags |= TYPE_CHECKING
            }
            Kw::With if with_suppresses_import_error(&text[line.kw_end..line.colon]) => body.flags |= WEAK,
            _ => {}
        }
        for k in line.items.clone() {
            found.push((k, if items[k].in_suite { body } else { base }));
        }
        if line.opener {
            opener = Some(body);
        }
    }
    if opener.is_some() {
        return Err("header without a body at end of file");
    }
    for level in &stack {
        level.chain.complete()?;
    }

    let mut out = Vec::with_capacity(found.len());
    let (mut row, mut row_at) = (1u32, 0usize);
    for (k, ctx) in found {
        let item = &items[k];
        row += src[row_at..item.start].iter().filter(|&&b| b == b'\n').count() as u32;
        row_at = item.start;
        let mut flags = ctx.flags;
        let mut tb = ctx.tbody;
        while tb != u32::MAX {
            let (t, parent) = tbodies[tb as usize];
            if weak_try[t as usize] {
                flags |= WEAK;
                break;
            }
            tb = parent;
        }
        match &item.call {
            None => parse_statement(&src[item.start..item.end], row, flags, &mut out)?,
            // A call without positional arguments yields nothing.
            Some(Call { first: None, .. }) => {}
            Some(Call { first: Some(first), package }) => {
                out.push(dynamic_import(&text[item.start..item.end], row, flags, first.clone(), package.clone()))
            }
        }
    }
    Ok(out)
}

/// A condition's text as its tree node spans it: without the blanks and backslash
/// continuations between the keyword, the expression and the colon.
fn trim_extras(t: &str) -> &str {
    let mut t = t;
    loop {
        let u = t.trim_matches(|c: char| c == ' ' || c == '\t' || c == '\x0c');
        let u = u
            .strip_prefix("\\\r\n")
            .or_else(|| u.strip_prefix("\\\n"))
            .or_else(|| u.strip_suffix("\\\r\n"))
            .or_else(|| u.strip_suffix("\\\n"))
            .unwrap_or(u);
        if u.len() == t.len() {
            return u;
        }
        t = u;
    }
}

// ---- import statements ------------------------------------------------------------------

/// Words tree-sitter will not take as a name here.
fn reserved(w: &[u8]) -> bool {
    matches!(
        w,
        b"False"
            | b"None"
            | b"True"
            | b"and"
            | b"as"
            | b"assert"
            | b"async"
            | b"await"
            | b"break"
            | b"class"
            | b"continue"
            | b"def"
            | b"del"
            | b"elif"
            | b"else"
            | b"except"
            | b"finally"
            | b"for"
            | b"from"
            | b"global"
            | b"if"
            | b"import"
            | b"in"
            | b"is"
            | b"lambda"
            | b"nonlocal"
            | b"not"
            | b"or"
            | b"pass"
            | b"raise"
            | b"return"
            | b"try"
            | b"while"
            | b"with"
            | b"yield"
            | b"print"
            | b"exec"
            | b"__future__"
    )
}

struct P<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> P<'a> {
    /// Skips blanks, continuations, newlines and comments (the statement's own text only
    /// holds those inside its parentheses or at its end).
    fn ws(&mut self) {
        while let Some(&c) = self.s.get(self.i) {
            match c {
                b' ' | b'\t' | 0x0c | b'\n' | b'\r' | b'\\' => self.i += 1,
                b'#' => self.i = eol(self.s, self.i),
                _ => return,
            }
        }
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn word(&self) -> &'a [u8] {
        let mut j = self.i;
        while j < self.s.len() && is_ident(self.s[j]) {
            j += 1;
        }
        &self.s[self.i..j]
    }
    /// An identifier that may be a name.
    fn name(&mut self) -> R<&'a [u8]> {
        let w = self.word();
        if w.is_empty() || !is_ident_start(w[0]) || reserved(w) {
            return Err("unusual name in an import statement");
        }
        self.i += w.len();
        Ok(w)
    }
    /// `a.b.c`, written without blanks (the tree's text would keep them).
    fn dotted(&mut self) -> R<&'a str> {
        let start = self.i;
        self.name()?;
        while self.peek() == Some(b'.') {
            self.i += 1;
            self.name()?;
        }
        let end = self.i;
        self.ws();
        if self.peek() == Some(b'.') {
            return Err("blank inside a dotted name");
        }
        Ok(std::str::from_utf8(&self.s[start..end]).unwrap())
    }
    /// `dotted [as name]`: the dotted name.
    fn item(&mut self) -> R<&'a str> {
        let d = self.dotted()?;
        if self.word() == b"as" {
            self.i += 2;
            self.ws();
            self.name()?;
            self.ws();
        }
        Ok(d)
    }
    /// `item, item, ...` up to `close` (')' or the end); a trailing comma only before ')'.
    fn items(&mut self, close: Option<u8>) -> R<Vec<&'a str>> {
        let mut v = Vec::new();
        loop {
            v.push(self.item()?);
            if self.peek() != Some(b',') {
                break;
            }
            self.i += 1;
            self.ws();
            if close.is_some() && self.peek() == close {
                break;
            }
        }
        if self.peek() != close {
            return Err("unexpected text in an import statement");
        }
        Ok(v)
    }
}

/// Reads one import statement (its text from the keyword on) into `out`.
fn parse_statement(seg: &[u8], line: u32, flags: u32, out: &mut Vec<Import>) -> R<()> {
    let mut p = P { s: seg, i: 0 };
    let kw = p.word();
    p.i += kw.len();
    p.ws();
    if kw == b"import" {
        for m in p.items(None)? {
            out.push(Import { module: m.to_string(), level: 0, names: vec![], line, flags });
        }
        return Ok(());
    }
    // from
    let mut level = 0u32;
    while p.peek() == Some(b'.') {
        level += 1;
        p.i += 1;
    }
    p.ws();
    if p.peek() == Some(b'.') {
        return Err("blank between the dots of a relative import");
    }
    let module = if level > 0 && p.word() == b"import" {
        ""
    } else if level == 0 && p.word() == b"__future__" {
        p.i += 10;
        p.ws();
        if p.word() != b"import" {
            return Err("unusual __future__ import");
        }
        p.i += 6;
        p.ws();
        // `from __future__ import ...` is a future statement: no import.
        return match p.peek() {
            Some(b'(') => {
                p.i += 1;
                p.ws();
                p.items(Some(b')'))?;
                p.i += 1;
                p.ws();
                if p.peek().is_some() {
                    return Err("unexpected text in an import statement");
                }
                Ok(())
            }
            _ => p.items(None).map(|_| ()),
        };
    } else {
        p.dotted()?
    };
    if p.word() != b"import" {
        return Err("unusual from-import");
    }
    p.i += 6;
    p.ws();
    let (names, star) = match p.peek() {
        Some(b'*') => {
            p.i += 1;
            p.ws();
            if p.peek().is_some() {
                return Err("unexpected text in an import statement");
            }
            (vec![], STAR)
        }
        Some(b'(') => {
            p.i += 1;
            p.ws();
            let v = p.items(Some(b')'))?;
            p.i += 1;
            p.ws();
            if p.peek().is_some() {
                return Err("unexpected text in an import statement");
            }
            (v, 0)
        }
        _ => (p.items(None)?, 0),
    };
    out.push(Import {
        module: module.to_string(),
        level,
        names: names.into_iter().map(str::to_string).collect(),
        line,
        flags: flags | star,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imports::{extract, extract_full, Lang, DYNAMIC, UNRESOLVED};

    /// The fast path takes `src` and yields exactly what the whole-tree walk yields.
    #[track_caller]
    fn same(src: &str) -> Vec<Import> {
        let full = extract_full(Lang::Python, src.as_bytes());
        match scan(src.as_bytes()) {
            Ok(fast) => assert_eq!(fast, full, "fast path differs on:\n{src}"),
            Err(why) => panic!("fast path declined ({why}):\n{src}"),
        }
        full
    }

    /// The fast path declines `src`; `extract` then still equals the reference.
    #[track_caller]
    fn declined(src: &[u8]) {
        assert!(scan(src).is_err(), "expected a fallback on:\n{}", String::from_utf8_lossy(src));
        assert_eq!(extract(Lang::Python, src), extract_full(Lang::Python, src));
    }

    type Brief = (String, u32, Vec<String>, u32, u32);

    fn brief(v: &[Import]) -> Vec<Brief> {
        v.iter().map(|i| (i.module.clone(), i.level, i.names.clone(), i.line, i.flags)).collect()
    }

    fn m(module: &str, line: u32, flags: u32) -> Brief {
        (module.into(), 0, vec![], line, flags)
    }

    const CASES: &[&str] = &[
        // 0: strings and comments that look like imports
        "\"\"\"Docstring.\nimport fake\nfrom fake import x\n\"\"\"\nimport real\n",
        "x = 'it\\'s'; import a\ny = \"say \\\"hi\\\"\"; import b\n",
        "s = '''\nimport no\n''' ; import yes\n",
        "# import commented\n#from x import y\nimport a  # import b\n",
        "x = f\"\"\"\n{y!r:>{w}}\nimport no\n\"\"\"\nimport a\n",
        // 5
        "x = rf'{a}\\'' + Rb'\\x' + BR\"\"\"\n'''\n\"\"\" + u'\\N{DASH}' + f'\\N{BULLET} {x}'\nimport a\n",
        "x = f'{a[\"k\"]}' + f\"{d['k']:{fmt}}\" + f'{{literal}}' + f'{x:%H:%M}'\nimport a\n",
        "x = r'\\\\'\nimport a\nx = '\\\\'\nimport b\n",
        "x = 'a\\\ncontinued'\nimport a\n",
        "x = ''\ny = \"\"\nz = ''''''\nimport a\n",
        // 10
        "x = '''a\\''''\nimport yes\n",
        "import a.b as c, d\nfrom .. import e\nfrom .f.g import h, i as j\nfrom k import *\nfrom . import (l)\n",
        "from a import (\n    b,\n    c,  # comment\n)\nfrom d import (e as f,\n  g)\n",
        "import a, \\\n    b\nfrom c \\\n  import d\n",
        "import a; import b;from c import d ; x = 1; import e\n",
        // 15
        "from __future__ import annotations\nfrom __future__ import (division,\n print_function)\nimport a\n",
        "from.a import b\nfrom .import c\nfrom ...x.y import z\nfrom .... import w\n",
        "from re import match, type, case\nimport typing as t\n",
        "@decorator(1)\n@other\ndef f():\n    import a\n    class C:\n        import b\n        def g(self):\n            import c\nimport d\n",
        "class A:\n    import a\n    class B:\n        import b\n\n    def f(self): import c\n",
        // 20
        "try:\n    import a\nexcept ImportError:\n    import b\nelse:\n    import c\nfinally:\n    import d\nimport e\n",
        "try:\n    import a\nexcept (ValueError, ImportError):\n    pass\ntry:\n    import b\nexcept ImportError as e:\n    pass\ntry:\n    import c\nexcept ValueError:\n    pass\n",
        "try:\n    import a\nexcept ValueError:\n    pass\nexcept:\n    pass\ntry:\n    import b\nexcept Exception:\n    pass\ntry:\n    import c\nexcept BaseException:\n    pass\ntry:\n    import d\nexcept ModuleNotFoundError:\n    pass\ntry:\n    import e\nfinally:\n    pass\n",
        "try:\n    try:\n        import a\n    except KeyError:\n        pass\nexcept ImportError:\n    import b\n",
        "try: import a\nexcept ImportError: a = None\ntry: import b\nexcept KeyError: pass\n",
        // 25
        "try:\n    import a\nexcept* ImportError:\n    pass\n",
        "try:\n    import a\nexcept getattr(x, 'a:b'):\n    pass\n",
        "with suppress(ImportError):\n    import a\nwith contextlib.suppress(ValueError, ModuleNotFoundError) as s, open(f):\n    import b\nwith open(f):\n    import c\nasync def g():\n    async with x:\n        import d\n",
        "with (\n    suppress(ImportError),\n    other(),\n):\n    import a\n",
        "if TYPE_CHECKING:\n    import a\nelse:\n    import b\nif typing.TYPE_CHECKING:\n    import c\nelif TYPE_CHECKING:\n    import d\nif not TYPE_CHECKING:\n    import e\nif TYPE_CHECKING: import f\nelse: import g\n",
        // 30
        "if TYPE_CHECKING :  # why not\n    import a\nif \\\n  TYPE_CHECKING:\n    import b\nif (TYPE_CHECKING):\n    import c\n",
        "if TYPE_CHECKING:\n    try:\n        import a\n    except ImportError:\n        pass\n    def f():\n        import b\n",
        "match x:\n    case 1:\n        import a\n    case [y, z] if y > 0:\n        import b\n    case {'k': v}: import c\n    case _:\n        pass\nmatch = 1\nmatch: int = 2; import d\ncase = 3\n",
        "async def f():\n    import a\n    async for x in y:\n        import b\n",
        "for x in y:\n    import a\nelse:\n    import b\nwhile x:\n    import c\nelse:\n    import d\n",
        // 35
        "if x := f():\n    import a\nwhile (y := g()):\n    import b\n",
        "def f(x: int = 1, *, y: dict[str, int] = {}) -> list[int]:\n    import a\ndef g(): return 1\nimport b\n",
        "def f():\n    x = 1\n# dedented comment\n    import a\n        # deeper comment\n    import b\nimport c\n",
        "def f():\n    pass\n\n\n\n    \nimport a\n",
        "class A(B, metaclass=M): import a\n",
        // 40
        "x = [\n    1,\n    2,\n]\nimport a\ny = {\n  'import b': (\n     3)}\nimport c\n",
        "x = 1 if y else 2\nprint(x)\nlambda: 1\nf = lambda x: x\nimport a\n",
        "def f():\n\timport a\n\tif x:\n\t\timport b\n\timport c\nimport d\n",
        "def f():\r\n    import a\r\n    x = '''\r\nimport no\r\n'''\r\nimport b\r\n",
        "def f():\n    import a",
        // 45
        "import a\nimport b  # no newline at the end",
        "if x:\n    import a\n    # trailing comment\n",
        "import importlib\nm = importlib.import_module('a.b')\nn = import_module(name)\no = __import__('c')\n",
        "importlib.import_module('.x', 'pkg.sub')\nimportlib.import_module('..x', package='pkg.sub')\nimport_module('.x', pkg)\nimport_module('.x')\n",
        "def f():\n    return import_module('a')\nlazy = 1\ntry:\n    m = import_module('b')\nexcept ImportError:\n    m = None\nif TYPE_CHECKING: __import__('c')\n",
        // 50
        "import_module(f'x{y}')\nimport_module('a' 'b')\nimport_module(('a'))\nimport_module(*args)\nimport_module(**kw)\nimport_module()\nimport_module(name='x')\n",
        "x = foo.import_module('a')\ny = importlib .import_module('b')\nz = a.importlib.import_module('c')\nw = builtins.__import__('d')\nv = importlib.import_module\ndef import_module(name): pass\n",
        "m = import_module(\n    'a.b',\n)\nn = import_module(name,\n  package='p')\nfrom importlib import import_module\n",
        "def f(x=import_module('a')) -> import_module('b').T:\n    pass\nclass C(import_module('c').Base):\n    pass\n@register(import_module('d'))\ndef g(): pass\n",
        "import_module('a', package='p.q', extra=1)\nimport_module('..a', 'p')\nimport_module('...a', 'p')\nimport_module('.', 'p.q')\nimport_module(b'x')\n",
        // 55
        "m = import_module('a\\\\.b')\nn = import_module(f'{{x}}')\no = import_module('''t''')\np = import_module(r'q', u'p')\n",
        "x = [import_module(n) for n in names]\ny = {k: import_module(v) for k, v in d.items()}\nz = import_module  (\n'a')\n",
        "m = import_module(names[1:], package={'a': 1}['a'])\nn = import_module(x or 'y', 'p')\no = import_module('a' if x else 'b')\n",
    ];

    #[test]
    fn tricky_cases_equal_the_tree_walk() {
        for src in CASES {
            same(src);
        }
    }

    #[test]
    fn tricky_cases_have_the_expected_flags() {
        // Spot checks that the cases exercise what they claim (not just agree on nothing).
        assert_eq!(brief(&same(CASES[0])), vec![m("real", 5, 0)]);
        assert_eq!(brief(&same(CASES[2])), vec![m("yes", 3, 0)]);
        let v = brief(&same(CASES[20]));
        assert_eq!(v, vec![m("a", 2, WEAK), m("b", 4, 0), m("c", 6, 0), m("d", 8, 0), m("e", 9, 0)]);
        let flags: Vec<u32> = brief(&same(CASES[29])).iter().map(|i| i.4).collect();
        assert_eq!(flags, vec![TYPE_CHECKING, 0, TYPE_CHECKING, 0, 0, TYPE_CHECKING, 0]);
        assert_eq!(brief(&same(CASES[24])), vec![m("a", 1, WEAK), m("b", 3, 0)]);
        assert_eq!(brief(&same(CASES[43])), vec![m("a", 2, LAZY), m("b", 6, 0)]);
        let v = brief(&same(CASES[49]));
        assert_eq!(v, vec![m("a", 2, LAZY | DYNAMIC), m("b", 5, WEAK | DYNAMIC), m("c", 8, TYPE_CHECKING | DYNAMIC)]);
        let v = brief(&same(CASES[50]));
        assert_eq!(v.len(), 5, "{v:?}"); // import_module() and name= only yield nothing
        assert!(v.iter().all(|i| i.4 == DYNAMIC | UNRESOLVED));
        let v = brief(&same(CASES[12]));
        assert_eq!(v[0], ("a".into(), 0, vec!["b".into(), "c".into()], 1, 0));
        let v = brief(&same(CASES[32]));
        assert_eq!(v.iter().map(|i| i.0.as_str()).collect::<Vec<_>>(), ["a", "b", "c", "d"]);
    }

    #[test]
    fn unsure_files_fall_back() {
        for src in [
            &b"import a\nx = '\xff'\n"[..],          // not UTF-8
            b"import a\nx = 'unterminated\n",        // newline in a string
            b"import a\nx = '''never closed\n",      // unterminated at EOF
            b"import a\nx = (1,\n",                  // unclosed bracket
            b"import a\nx = (1]\n",                  // mismatched bracket
            b"import a\n  import b\n",               // unexpected indent
            b"if x:\nimport a\n",                    // missing block
            b"def f():\n    import a\n  import b\n", // dedent to no level
            b"def f():\n  \timport a\n",             // tab after spaces
            b"import a\n\x0cimport b\n",             // form feed in indentation
            b"import a\rimport b\n",                 // lone CR
            b"import a\nx = 1\0\n",                  // NUL
            b"import \xc3\xa9t\xc3\xa9\n",           // non-ASCII name
            b"import a.\\\n  b\n",                   // break inside a dotted name
            b"import a .b\n",                        // blank inside a dotted name
            b"import a,\n",                          // trailing comma without parentheses
            b"from a import b,\n",
            b"from . . import a\n",
            b"import print\n",
            b"if lambda: x: import a\n",
            b"x = f'{a:=1}'\nimport a\n",
            b"import b\nx = f'{'a'}'\n", // PEP 701 nesting
            b"x = ur'x'\nimport a\n",    // unknown prefix
            b"x = `a`\nimport a\n",
            b"x = 1\n\x0bimport a\n", // \v: a blank to tree-sitter
            b"x = $a\nimport a\n",
            b"def f():\n    x = (a.\nb)\n    import c\nimport d\n", // tree-sitter dedents inside ( )
            b"def f():\n    x = (a +\n  # c\n b)\n    import c\n",
            b"def f():\n    m = import_module(a +\nb)\n    import c\n",
            b"fr m a import b\n", // mangled import statements
            b"rom a import b\n",
            b"from a import b import c\n",
            b"x = 1 import a\n",
            b"x = a?\nimport a\n",
            b"import a\nif x:\n", // header without a body at EOF
            b"try:\n    pass\nfinally:\n    pass\nfinally:\n    pass\nfrom . import x\n",
            b"try:\n    import a\nimport b\n", // try without a handler
            b"try:\n    import a\n",
            b"import a\nelse:\n    pass\n",
            b"try:\n    pass\nelse:\n    import a\nexcept E:\n    pass\n",
            b"if x:\n    pass\nimport a\nelif y:\n    pass\n",
            b"while x:\n    pass\nelif y:\n    import a\n",
            b"m = import_module(lambda: 'x')\n",
            b"f = lambda: import_module('x')\n",
            b"m = import_module(import_module('a').name)\n",
            b"m = import_module(  # why\n 'a')\n",
            b"x = f'{import_module(\"a\")}'\n",
        ] {
            declined(src);
        }
    }

    /// A small deterministic generator of programs mixing the constructs above: thousands of
    /// files, each compared with the tree walk; nearly all must take the fast path.
    #[test]
    fn random_programs_equal_the_tree_walk() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % n as u64) as usize
        };
        let (mut fast, mut total, mut imports) = (0, 0, 0);
        let (mut tabs, mut crlf, mut nonl) = (0, 0, 0);
        for _ in 0..3000 {
            // A leading tab line makes the program tab-indented throughout.
            let mut src = String::from(if next(4) == 0 { "\t" } else { "" });
            gen_block(&mut next, &mut src, "", 0);
            let src = src.strip_prefix('\t').map(str::to_string).unwrap_or_else(|| src.clone());
            let mut src = if next(5) == 0 { src.replace('\n', "\r\n") } else { src };
            if next(5) == 0 {
                // No newline at the end of the file.
                src.truncate(src.trim_end_matches(['\r', '\n']).len());
            }
            tabs += src.contains("\n\t") as usize;
            crlf += src.contains("\r\n") as usize;
            nonl += !src.ends_with('\n') as usize;
            let full = extract_full(Lang::Python, src.as_bytes());
            imports += full.len();
            total += 1;
            match scan(src.as_bytes()) {
                Ok(v) => {
                    assert_eq!(v, full, "fast path differs on:\n{src}");
                    fast += 1;
                }
                Err(why) => eprintln!("declined ({why}):\n{src}"),
            }
        }
        eprintln!("random programs: {total}, fast {fast}, imports {imports}, tabs {tabs}, crlf {crlf}, no final newline {nonl}");
        assert!(imports > 3000, "{imports}");
        assert_eq!(fast, total, "only {fast} of {total} took the fast path");
    }

    const SIMPLE: &[&str] = &[
        "import a",
        "import a.b as c, d",
        "from . import x",
        "from ..p.q import (r,\n{i}    s as t,\n{i})",
        "from m import *",
        "from __future__ import annotations",
        "x = 1; import semi",
        "import a, \\\n{i}    b",
        "s = 'import no'",
        "s = \"\"\"\nimport no\n\"\"\"",
        "s = f'{x!r:>{w}} import no'",
        "s = rb'\\\\' + b'\\''",
        "# import comment\n{i}pass",
        "pass",
        "x = [\n{i}  1,\n{i}  2]",
        "m = importlib.import_module('dyn.a')",
        "m = import_module('.rel', 'pkg.sub')",
        "m = __import__(name)",
        "f = lambda: 1",
        "y = x if x else z",
    ];

    const HEADERS: &[&str] = &[
        "def f(a, b=1):",
        "async def g():",
        "class C(Base):",
        "if TYPE_CHECKING:",
        "if x:",
        "for i in range(3):",
        "while x:",
        "with suppress(ImportError):",
        "with open(p) as f:",
        "try:",
        "match v:",
    ];

    fn gen_block(next: &mut dyn FnMut(usize) -> usize, out: &mut String, ind: &str, depth: usize) {
        for _ in 0..1 + next(4) {
            if depth >= 4 || next(3) != 0 {
                let st = SIMPLE[next(SIMPLE.len())].replace("{i}", ind);
                out.push_str(&format!("{ind}{st}\n"));
                continue;
            }
            let h = HEADERS[next(HEADERS.len())];
            // One indentation unit per program: Python rejects ambiguous tab/space mixes.
            let unit = if out.starts_with('\t') { "\t" } else { "    " };
            let inner = format!("{ind}{unit}");
            if h == "match v:" {
                out.push_str(&format!("{ind}{h}\n{inner}case 1:\n"));
                gen_block(next, out, &format!("{inner}{unit}"), depth + 1);
                continue;
            }
            let st = SIMPLE[next(SIMPLE.len())];
            if next(4) == 0 && !st.contains('\n') && !st.starts_with('#') {
                out.push_str(&format!("{ind}{h} {st}\n")); // one-line suite
            } else {
                out.push_str(&format!("{ind}{h}\n"));
                gen_block(next, out, &inner, depth + 1);
            }
            if h == "try:" {
                let mut any = false;
                for clause in ["except ImportError:", "except (KeyError, ValueError) as e:", "except:"] {
                    if next(2) == 0 {
                        any = true;
                        out.push_str(&format!("{ind}{clause}\n"));
                        gen_block(next, out, &inner, depth + 1);
                    }
                }
                if any && next(2) == 0 {
                    out.push_str(&format!("{ind}else:\n"));
                    gen_block(next, out, &inner, depth + 1);
                }
                if !any || next(2) == 0 {
                    out.push_str(&format!("{ind}finally:\n"));
                    gen_block(next, out, &inner, depth + 1);
                }
            } else if h.starts_with("if") && next(2) == 0 {
                out.push_str(&format!("{ind}else:\n"));
                gen_block(next, out, &inner, depth + 1);
            }
        }
    }

    /// Every .py file of the corpus (as in `corpus_fast_equals_full`) mutated 8 times by one
    /// byte (a bracket, quote, colon, newline, comment...): nearly all such files are invalid
    /// Python. The fast path declines a mutant or equals the tree walk, except where tree-sitter's
    /// error recovery loses imports: then the fast path reports a superset, never fewer.
    #[test]
    #[ignore]
    fn corpus_mutants_never_lose_imports() {
        use rayon::prelude::*;
        let files = corpus_files();
        let res: Vec<(usize, usize, usize)> = files
            .par_iter()
            .enumerate()
            .map(|(fi, p)| {
                let src = std::fs::read(p).unwrap();
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (fi as u64).wrapping_mul(0x1234567);
                let mut next = move |n: usize| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    (rng % n as u64) as usize
                };
                let (mut declined, mut equal, mut superset) = (0, 0, 0);
                for _ in 0..if src.len() < 10 { 0 } else { 8 } {
                    let mut s = src.clone();
                    let at = next(s.len());
                    const CH: &[u8] = b":()[]{}'\"\n #\\;,.=\t";
                    match next(3) {
                        0 => drop(s.remove(at)),
                        1 => s.insert(at, CH[next(CH.len())]),
                        _ => s[at] = CH[next(CH.len())],
                    }
                    let Ok(fast) = scan(&s) else {
                        declined += 1;
                        continue;
                    };
                    let full = extract_full(Lang::Python, &s);
                    if fast == full {
                        equal += 1;
                        continue;
                    }
                    let mut rest = fast.clone();
                    for i in &full {
                        let k = rest.iter().position(|f| f == i);
                        assert!(k.is_some(), "fast path lost {i:?} in a mutant of {}", p.display());
                        rest.remove(k.unwrap());
                    }
                    superset += 1;
                }
                (declined, equal, superset)
            })
            .collect();
        let (d, e, s) = res.iter().fold((0, 0, 0), |a, r| (a.0 + r.0, a.1 + r.1, a.2 + r.2));
        eprintln!("mutants: {d} declined, {e} equal, {s} where the fast path finds more");
    }

    fn corpus_files() -> Vec<std::path::PathBuf> {
        let root = std::env::var_os("CIOPT_SCAN_CORPUS")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/.corpus/django-5.1.4"));
        let mut files = Vec::new();
        if !root.exists() {
            eprintln!("no corpus at {}", root.display());
            return files;
        }
        let mut dirs = vec![root];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "py" || x == "pyi") {
                    files.push(p);
                }
            }
        }
        files.sort();
        files
    }

    /// The corpus check: every .py file under benches/.corpus/django-5.1.4 (or the directory
    /// in CIOPT_SCAN_CORPUS), fast path against the whole-tree reference; skipped when absent.
    /// `cargo test --release corpus_fast_equals_full -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn corpus_fast_equals_full() {
        use rayon::prelude::*;
        let files = corpus_files();
        let results: Vec<_> = files
            .par_iter()
            .map(|p| {
                let src = std::fs::read(p).unwrap();
                let full = extract_full(Lang::Python, &src);
                (p.clone(), scan(&src), full)
            })
            .collect();
        let mut reasons: std::collections::BTreeMap<&str, usize> = Default::default();
        let mut diffs = 0;
        let mut imports = 0;
        for (p, fast, full) in &results {
            imports += full.len();
            match fast {
                Err(r) => {
                    *reasons.entry(r).or_default() += 1;
                    if std::env::var_os("CIOPT_SCAN_VERBOSE").is_some() {
                        eprintln!("fallback {}: {r}", p.display());
                    }
                }
                Ok(v) if v != full => {
                    diffs += 1;
                    if diffs <= 10 {
                        eprintln!("DIFF {}", p.display());
                        let n = v.len().max(full.len());
                        for k in 0..n {
                            let (a, b) = (v.get(k), full.get(k));
                            if a != b {
                                eprintln!("  fast {a:?}\n  full {b:?}");
                                break;
                            }
                        }
                    }
                }
                Ok(_) => {}
            }
        }
        let fell: usize = reasons.values().sum();
        eprintln!(
            "{} files, {} imports: {} by the fast path, {} fell back, {} differ",
            results.len(),
            imports,
            results.len() - fell,
            fell,
            diffs
        );
        for (r, n) in &reasons {
            eprintln!("  fallback {n:5}  {r}");
        }
        assert_eq!(diffs, 0);
    }
}
