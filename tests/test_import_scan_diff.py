"""The lexical fast path of Python import extraction equals the whole tree-sitter walk.

`extract_imports_source(src, "python")` goes through the pre-scanner (rust/src/pyscan.rs),
`full=True` through the reference walk; they must agree on every file: on a real corpus
(Django, when benches/.corpus holds it) and on generated programs mixing strings, comments,
continuations, one-line suites, nested blocks, try/except, TYPE_CHECKING and dynamic imports.
"""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ciopt._native import (
    IMPORT_DYNAMIC,
    IMPORT_LAZY,
    IMPORT_TYPE_CHECKING,
    IMPORT_WEAK,
    extract_imports_source,
)

DJANGO = Path(__file__).resolve().parent.parent / "benches" / ".corpus" / "django-5.1.4"


def fast_and_full(src: bytes):
    return extract_imports_source(src, "python"), extract_imports_source(src, "python", full=True)


@pytest.mark.skipif(not DJANGO.is_dir(), reason="no Django corpus (make bench fetches it)")
def test_django_corpus_fast_equals_full():
    files = sorted(DJANGO.rglob("*.py"))
    assert len(files) > 2000
    differ = []
    imports = 0
    for f in files:
        src = f.read_bytes()
        fast, full = fast_and_full(src)
        imports += len(full)
        if fast != full:
            differ.append(str(f.relative_to(DJANGO)))
    assert differ == [], f"{len(differ)} of {len(files)} files differ: {differ[:10]}"
    assert imports > 10000


def test_flags_through_the_fast_path():
    src = (
        b"import os\n"
        b"try:\n    import a\nexcept ImportError:\n    pass\n"
        b"if TYPE_CHECKING:\n    from b import c\n"
        b"def f():\n    import d\n    return importlib.import_module('e')\n"
    )
    fast, full = fast_and_full(src)
    assert fast == full
    assert [(m, fl) for m, _, _, _, fl in fast] == [
        ("os", 0),
        ("a", IMPORT_WEAK),
        ("b", IMPORT_TYPE_CHECKING),
        ("d", IMPORT_LAZY),
        ("e", IMPORT_LAZY | IMPORT_DYNAMIC),
    ]


# ---- generated programs -----------------------------------------------------------------

names = st.sampled_from(["a", "b", "os", "path", "x1", "_p", "match", "case", "type", "TYPE_CHECKING"])
dotted = st.lists(names, min_size=1, max_size=3).map(".".join)


@st.composite
def import_stmt(draw, ind: str) -> str:
    kind = draw(st.integers(0, 6))
    if kind == 0:
        items = draw(st.lists(st.tuples(dotted, st.one_of(st.none(), names)), min_size=1, max_size=3))
        sep = draw(st.sampled_from([", ", ",", ", \\\n" + ind + "    "]))
        return "import " + sep.join(d + (f" as {a}" if a else "") for d, a in items)
    level = draw(st.integers(0, 3))
    module = draw(dotted) if level == 0 or draw(st.booleans()) else ""
    if kind == 1:
        return f"from {'.' * level}{module} import *"
    items = draw(st.lists(st.tuples(names, st.one_of(st.none(), names)), min_size=1, max_size=3))
    parts = [n + (f" as {a}" if a else "") for n, a in items]
    head = f"from {'.' * level}{module} import "
    if kind == 2:
        inner = ind + "    "
        comment = draw(st.sampled_from(["", "  # import no", "  # )"]))
        trailing = draw(st.sampled_from(["", ","]))
        return head + "(\n" + ",\n".join(inner + p + comment for p in parts) + trailing + "\n" + ind + ")"
    if kind == 3:
        return head + "(" + ", ".join(parts) + draw(st.sampled_from(["", ","])) + ")"
    if kind == 4:
        return head + "(" + parts[0] + ")"
    return head + ", ".join(parts)


text_chars = st.text(alphabet=string.ascii_letters + " _.#:;()[]{}=\\'\"", max_size=12)


def plain_escape(s: str, quote: str) -> str:
    return s.replace("\\", "\\\\").replace(quote, "\\" + quote)


@st.composite
def string_expr(draw) -> str:
    body = draw(text_chars)
    kind = draw(st.integers(0, 6))
    if kind == 0:
        q = draw(st.sampled_from(["'", '"']))
        return draw(st.sampled_from(["", "b", "u", "R"])) + q + plain_escape(body, q) + q
    if kind == 1:
        q = draw(st.sampled_from(["'''", '"""']))
        lines = "\n".join(plain_escape(s, q[0]) for s in draw(st.lists(st.sampled_from(["import fake", "from x import y", body, ""]), max_size=3)))
        return q + lines + q
    if kind == 2:
        q = draw(st.sampled_from(["'", '"']))
        other = "'" if q == '"' else '"'
        expr = draw(st.sampled_from(["x", "x!r", "x:>{w}", f"d[{other}k{other}]", "a + 1", "x=", "y:%H:%M", " {1: 2}[1] "]))
        return "f" + q + plain_escape(body, q).replace("{", "{{").replace("}", "}}") + "{" + expr + "}" + q
    if kind == 3:
        return "rf'\\d{x}'" if draw(st.booleans()) else "rb'\\\\'"
    if kind == 4:
        return 'f"""\n{x}\nimport fake {{y}}\n"""'
    if kind == 5:
        return "'a' 'b'"
    return "''"


@st.composite
def dynamic_call(draw) -> str:
    func = draw(st.sampled_from(["importlib.import_module", "import_module", "__import__", "foo.import_module"]))
    first = draw(st.sampled_from(["'m.n'", "'.rel'", "'..up'", "name", "f'{x}'", "'a' 'b'"]))
    rest = draw(st.sampled_from(["", ", 'pkg.sub'", ", package='p.q'", ", pkg", ",\n    package='p'"]))
    return f"{func}({first}{rest})"


@st.composite
def simple_stmt(draw, ind: str) -> str:
    kind = draw(st.integers(0, 7))
    if kind <= 2:
        return draw(import_stmt(ind))
    if kind == 3:
        return "x = " + draw(string_expr())
    if kind == 4:
        return "m = " + draw(dynamic_call())
    if kind == 5:
        return draw(st.sampled_from(["pass", "x = [\n" + ind + "  1,\n" + ind + "]", "y = {'k': (1,\n" + ind + "     2)}", "f = lambda: 1", "z = a if b else c"]))
    if kind == 6:
        return draw(import_stmt(ind)) + "; " + draw(import_stmt(ind))
    return "x = 1  # import no"


HEADERS = [
    "def f(a, b=1) -> int:",
    "async def g():",
    "class C(Base):",
    "if TYPE_CHECKING:",
    "if typing.TYPE_CHECKING:",
    "if x:",
    "for i in y:",
    "while (n := f()):",
    "with suppress(ImportError):",
    "with open(p) as fh, suppress(ValueError):",
    "try:",
]
EXCEPTS = ["except ImportError:", "except (KeyError, ModuleNotFoundError) as e:", "except ValueError:", "except:", "except Exception:"]


@st.composite
def block(draw, ind: str, unit: str, depth: int) -> str:
    out = []
    for _ in range(draw(st.integers(1, 3))):
        if depth >= 3 or draw(st.integers(0, 2)):
            out.append(ind + draw(simple_stmt(ind)) + "\n")
            continue
        h = draw(st.sampled_from(HEADERS))
        inner = ind + unit
        if draw(st.integers(0, 3)) == 0:
            one = draw(simple_stmt(ind))
            if "\n" not in one:
                out.append(f"{ind}{h} {one}\n")
            else:
                out.append(f"{ind}{h}\n" + draw(block(inner, unit, depth + 1)))
        else:
            out.append(f"{ind}{h}\n" + draw(block(inner, unit, depth + 1)))
        if h == "try:":
            handlers = draw(st.lists(st.sampled_from(EXCEPTS), max_size=2))
            for e in handlers:
                out.append(f"{ind}{e}\n" + draw(block(inner, unit, depth + 1)))
            if handlers and draw(st.booleans()):
                out.append(f"{ind}else:\n" + draw(block(inner, unit, depth + 1)))
            if not handlers or draw(st.booleans()):
                out.append(f"{ind}finally:\n" + draw(block(inner, unit, depth + 1)))
        elif h.startswith("if") and draw(st.booleans()):
            out.append(f"{ind}elif y:\n" + draw(block(inner, unit, depth + 1)))
            out.append(f"{ind}else:\n" + draw(block(inner, unit, depth + 1)))
    if draw(st.integers(0, 4)) == 0:
        out.insert(draw(st.integers(0, len(out))), draw(st.sampled_from(["\n", "# import no\n", ind + "'''doc\nimport no\n'''\n"])))
    return "".join(out)


@st.composite
def program(draw) -> bytes:
    unit = draw(st.sampled_from(["    ", "  ", "\t"]))
    src = draw(st.sampled_from(["", "from __future__ import annotations\n", '"""Doc.\nimport fake\n"""\n']))
    src += draw(block("", unit, 0))
    if draw(st.booleans()):
        src = src.replace("\n", "\r\n")
    if draw(st.booleans()):
        src = src.rstrip("\r\n")
    return src.encode()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(program())
def test_generated_programs_fast_equals_full(src: bytes):
    try:
        compile(src, "<generated>", "exec", dont_inherit=True)
    except SyntaxError:
        assume(False)  # only valid Python: on broken files tree-sitter's recovery is its own
    fast, full = fast_and_full(src)
    assert fast == full, src.decode()
