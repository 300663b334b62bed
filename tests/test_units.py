import pytest

from autoside.errors import ConfigError
from autoside.units import format_bytes, parse_bytes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4GiB", 4 * 1024**3),
        ("6 GB", 6 * 10**9),
        ("512MiB", 512 * 1024**2),
        ("1.5GiB", int(1.5 * 1024**3)),
        (1000, 1000),
        ("2048", 2048),
        (None, None),
    ],
)
def test_parse_bytes_accepts_common_units(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["4 gigs", "GiB", "-1GiB", "0", "four", True])
def test_parse_bytes_rejects_with_field_name(text):
    with pytest.raises(ConfigError, match=r"^memory_budget: "):
        parse_bytes(text)


def test_format_bytes():
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 1024**3) == "3 GiB"
    assert format_bytes(5 * 1024**4) == "5 TiB"
    assert format_bytes(1010 * 1024**2) == "0.986 GiB"  # not 1.01e+03 MiB
    assert format_bytes(1000 * 1024) == "0.977 MiB" and format_bytes(999 * 1024) == "999 KiB"
    assert format_bytes(1023) == "1023 B"
