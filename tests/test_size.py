import pytest
from hypothesis import given
from hypothesis import strategies as st

from ciopt.size import format_size, parse_size


@pytest.mark.parametrize(
    "text, expected",
    [
        ("20GiB", 20 * 1024**3),
        ("20 GiB", 20 * 1024**3),
        ("20gib", 20 * 1024**3),
        ("1.5KiB", 1536),
        ("500MB", 500_000_000),
        ("2TB", 2 * 10**12),
        ("3TiB", 3 * 1024**4),
        ("512", 512),
        ("512B", 512),
        ("1KB", 1000),
        (4096, 4096),
        ("0.3KiB", 307),  # fractions of a byte round down
    ],
)
def test_parse(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["20G", "twenty", "", "-1GiB", "1.2.3MiB", "GiB", "10 parsecs"])
def test_parse_errors_name_the_text(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(text)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize("value", [-1, True, 1.5, None])
def test_parse_rejects_non_sizes(value: object) -> None:
    with pytest.raises(ValueError):
        parse_size(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "n, text",
    [
        (0, "0B"),
        (999, "999B"),
        (1023, "1023B"),
        (1024, "1KiB"),
        (1536, "1.5KiB"),
        (20 * 1024**3, "20GiB"),
        (5 * 1024**4, "5TiB"),
        (500_000_000, "500MB"),
        (1025, "1.0KiB"),
    ],
)
def test_format(n: int, text: str) -> None:
    assert format_size(n) == text


@given(
    st.integers(min_value=0, max_value=4096),
    st.sampled_from(["KiB", "MiB", "GiB", "TiB", "KB", "MB", "GB", "TB"]),
)
def test_sizes_written_with_a_unit_round_trip(count: int, unit: str) -> None:
    n = parse_size(f"{count}{unit}")
    assert parse_size(format_size(n)) == n
