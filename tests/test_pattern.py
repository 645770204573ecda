import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ciopt.graph.label import Label
from ciopt.graph.pattern import Pattern, PatternKind

# Same shapes as in test_label.py, kept local so each test file stands alone.
def _segment(alphabet: str) -> st.SearchStrategy[str]:
    return st.text(alphabet=alphabet, min_size=1, max_size=6).filter(lambda s: s not in (".", ".."))


packages = st.lists(_segment("abcXYZ019-._@").filter(lambda s: s != "..."), max_size=4).map("/".join)
names = st.lists(_segment("abcXYZ019!%-@^_#$&()*+,;<=>?[]{|}~."), min_size=1, max_size=3).map("/".join)
# A target literally named `all` or `*` is shadowed by the wildcard (as in
# Bazel), so single-target round trips leave those names out.
labels = st.builds(Label, packages, names).filter(lambda label: label.name not in ("all", "*", "all-targets"))


def test_wildcard_names_win_over_targets_of_that_name() -> None:
    assert Pattern.parse("//a:*").kind is PatternKind.PACKAGE
    assert Pattern.parse("//a:all").kind is PatternKind.PACKAGE
    assert Pattern.of(Label("a", "all")).matches(Label("a", "all"))
    assert not Pattern.of(Label("a", "all")).matches(Label("a", "other"))


def L(text: str) -> Label:
    return Label.parse(text)


@pytest.mark.parametrize(
    "text, kind, package, canonical",
    [
        ("//pkg/...", PatternKind.RECURSIVE, "pkg", "//pkg/..."),
        ("//pkg/...:all", PatternKind.RECURSIVE, "pkg", "//pkg/..."),
        ("//pkg/...:*", PatternKind.RECURSIVE, "pkg", "//pkg/..."),
        ("//...", PatternKind.RECURSIVE, "", "//..."),
        ("//...:all", PatternKind.RECURSIVE, "", "//..."),
        ("//pkg:all", PatternKind.PACKAGE, "pkg", "//pkg:all"),
        ("//pkg:*", PatternKind.PACKAGE, "pkg", "//pkg:all"),
        ("//pkg:all-targets", PatternKind.PACKAGE, "pkg", "//pkg:all"),
        ("//:all", PatternKind.PACKAGE, "", "//:all"),
        ("//pkg:name", PatternKind.TARGET, "pkg", "//pkg:name"),
        ("//pkg", PatternKind.TARGET, "pkg", "//pkg:pkg"),
    ],
)
def test_parse(text: str, kind: PatternKind, package: str, canonical: str) -> None:
    pattern = Pattern.parse(text)
    assert pattern.kind is kind
    assert pattern.package == package
    assert str(pattern) == canonical


def test_recursive_matches_whole_segments_only() -> None:
    p = Pattern.parse("//foo/...")
    assert p.matches(L("//foo:x"))
    assert p.matches(L("//foo/bar/baz:y"))
    assert not p.matches(L("//foobar:x"))
    assert not p.matches(L("//:foo"))
    assert not p.matches(L("//other/foo:x"))


def test_everything() -> None:
    p = Pattern.parse("//...")
    assert all(p.matches(L(t)) for t in ["//:a", "//a:b", "//a/b/c:d"])


def test_package_wildcard_does_not_reach_subpackages() -> None:
    p = Pattern.parse("//a:all")
    assert p.matches(L("//a:x"))
    assert p.matches(L("//a:sub/file.py"))
    assert not p.matches(L("//a/b:x"))
    assert not p.matches(L("//:a"))


def test_single_target() -> None:
    p = Pattern.parse("//a:x")
    assert p.matches(L("//a:x"))
    assert not p.matches(L("//a:y"))
    assert p.label == L("//a:x")
    assert Pattern.parse("//a/...").label is None


@pytest.mark.parametrize(
    "text, package, canonical",
    [
        ("...", "a/b", "//a/b/..."),
        ("c/...", "a", "//a/c/..."),
        (":all", "a", "//a:all"),
        (":x", "a", "//a:x"),
        ("x", "a", "//a:x"),
        ("...", "", "//..."),
    ],
)
def test_relative_patterns(text: str, package: str, canonical: str) -> None:
    assert str(Pattern.parse(text, package)) == canonical


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("//a/.../b", "'...' must be the last path segment"),
        ("//a/...:foo", "only ':all' or ':*'"),
        ("-//a/...", "negative patterns"),
        ("@r//a:b", "external repositories"),
        ("//a:b:c", "contains ':'"),
        ("//a/../b/...", "'..' segment"),
        ("//a//b:all", "empty path segment"),
        ("/a/...", "start with '//'"),
        ("//", "root package has no default target"),
    ],
)
def test_parse_errors_name_the_pattern(text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        Pattern.parse(text)
    assert fragment in str(info.value)
    assert repr(text) in str(info.value)


def test_relative_pattern_without_package_is_an_error() -> None:
    with pytest.raises(ValueError, match="needs a current package"):
        Pattern.parse("...")


def test_contains_package() -> None:
    assert Pattern.parse("//a/...").contains_package("a/b")
    assert not Pattern.parse("//a/...").contains_package("ab")
    assert Pattern.parse("//a:all").contains_package("a")
    assert not Pattern.parse("//a:all").contains_package("a/b")
    assert Pattern.parse("//...").contains_package("")


def test_inconsistent_construction_is_rejected() -> None:
    with pytest.raises(ValueError):
        Pattern(PatternKind.PACKAGE, "a", "x")
    with pytest.raises(ValueError):
        Pattern(PatternKind.TARGET, "a", None)


@given(labels)
@example(Label("a", "x*"))
def test_label_round_trip(label: Label) -> None:
    assert Label.parse(str(label)) == label
    assert Pattern.parse(str(label)) == Pattern.of(label)
    assert Pattern.of(label).matches(label)


@given(labels, st.sampled_from(list(PatternKind)))
def test_pattern_round_trip_and_own_package_matches(label: Label, kind: PatternKind) -> None:
    pattern = Pattern(kind, label.package, label.name if kind is PatternKind.TARGET else None)
    assert Pattern.parse(str(pattern)) == pattern
    assert pattern.matches(label)


@given(labels, packages)
def test_recursive_pattern_matches_exactly_the_subtree(label: Label, package: str) -> None:
    inside = package == "" or label.package == package or label.package.startswith(package + "/")
    assert Pattern(PatternKind.RECURSIVE, package).matches(label) == inside
