import pytest
from hypothesis import given
from hypothesis import strategies as st

from ciopt.graph.label import Label

PACKAGE_SEGMENT_CHARS = "abcXYZ019-._@"
NAME_SEGMENT_CHARS = "abcXYZ019!%-@^_\"#$&'()*+,;<=>?[]{|}~."


def _segment(alphabet: str) -> st.SearchStrategy[str]:
    return st.text(alphabet=alphabet, min_size=1, max_size=6).filter(lambda s: s not in (".", ".."))


packages = st.lists(_segment(PACKAGE_SEGMENT_CHARS).filter(lambda s: s != "..."), max_size=4).map("/".join)
names = st.lists(_segment(NAME_SEGMENT_CHARS), min_size=1, max_size=3).map("/".join)
labels = st.builds(Label, packages, names)


@pytest.mark.parametrize(
    "text, package, name",
    [
        ("//pkg/path:name", "pkg/path", "name"),
        ("//pkg/path", "pkg/path", "path"),
        ("//pkg", "pkg", "pkg"),
        ("//:name", "", "name"),
        ("//a/b:file.txt", "a/b", "file.txt"),
        ("//a:sub/dir/file.py", "a", "sub/dir/file.py"),
        ("//a-b_c.d@e:x+y=z", "a-b_c.d@e", "x+y=z"),
    ],
)
def test_parse_absolute(text: str, package: str, name: str) -> None:
    label = Label.parse(text)
    assert (label.package, label.name) == (package, name)


@pytest.mark.parametrize(
    "text, current, expected",
    [
        (":name", "pkg/sub", "//pkg/sub:name"),
        ("name", "pkg/sub", "//pkg/sub:name"),
        ("dir/file.py", "pkg", "//pkg:dir/file.py"),
        (":x", "", "//:x"),
        ("x", "", "//:x"),
        ("//other:y", "pkg", "//other:y"),  # absolute ignores the current package
    ],
)
def test_parse_relative(text: str, current: str, expected: str) -> None:
    assert str(Label.parse(text, current)) == expected


def test_spellings_of_one_target_are_equal_and_print_the_same() -> None:
    spellings = [Label.parse("//a/b"), Label.parse("//a/b:b"), Label.parse(":b", "a/b"), Label.parse("b", "a/b")]
    assert len(set(spellings)) == 1
    assert {str(s) for s in spellings} == {"//a/b:b"}
    assert repr(spellings[0]) == "Label('//a/b:b')"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("//a/../b:c", "'..' segment"),
        ("//a/./b:c", "'.' segment"),
        ("//a//b:c", "empty path segment"),
        ("//a/:c", "empty path segment"),
        ("///a:c", "empty path segment"),
        ("//a:", "empty target name"),
        ("//", "root package has no default target"),
        ("//a:b:c", "contains ':'"),
        ("//a b:c", "contains ' '"),
        ("//a:b c", "contains ' '"),
        ("//a:x/../y", "'..' segment"),
        ("//a/.../b:c", "'...' segment"),
        ("//a:x//y", "empty path segment"),
        ("//a:/x", "empty path segment"),
        ("@repo//a:b", "external repositories"),
        ("/a:b", "start with '//'"),
        ("a:b", "did you mean '//a:b'?"),
        ("", "empty target name"),
    ],
)
def test_invalid_labels_name_the_text_and_the_problem(text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        Label.parse(text, "pkg")
    message = str(info.value)
    assert fragment in message
    assert repr(text) in message or text == ""


def test_relative_label_without_a_package_is_an_error() -> None:
    with pytest.raises(ValueError, match="needs a current package"):
        Label.parse(":x")
    with pytest.raises(ValueError, match="needs a current package"):
        Label.parse("x")


def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="'..' segment"):
        Label("a/..", "x")
    with pytest.raises(ValueError, match="empty target name"):
        Label("a", "")


def test_non_string_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="expected a string"):
        Label.parse(3)  # type: ignore[arg-type]


def test_labels_sort_by_package_then_name() -> None:
    got = sorted(Label.parse(t) for t in ["//b:a", "//a:z", "//a:b", "//:q"])
    assert [str(x) for x in got] == ["//:q", "//a:b", "//a:z", "//b:a"]


def test_path_and_relative_spelling() -> None:
    assert Label.parse("//a/b:c/d.py").path == "a/b/c/d.py"
    assert Label.parse("//:top.txt").path == "top.txt"
    assert Label.parse("//a:x").relative_to("a") == ":x"
    assert Label.parse("//a:x").relative_to("b") == "//a:x"


def test_labels_are_immutable() -> None:
    label = Label.parse("//a:b")
    with pytest.raises(AttributeError):
        label.name = "c"  # type: ignore[misc]


@given(labels)
def test_round_trip_through_str(label: Label) -> None:
    assert Label.parse(str(label)) == label


@given(labels)
def test_relative_spelling_round_trips(label: Label) -> None:
    assert Label.parse(label.relative_to(label.package), label.package) == label
