"""How a template's declared checksum is read."""

from __future__ import annotations

import pytest

from cloud_engine.effectors.storage.templates import TemplateError, parse_checksum

MD5 = "d41d8cd98f00b204e9800998ecf8427e"
SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@pytest.mark.parametrize(
    ("declared", "expected"),
    [
        (MD5, ("md5", MD5)),
        (SHA256.upper(), ("sha256", SHA256)),
        (f"sha256:{SHA256}", ("sha256", SHA256)),
        (f"{{SHA-256}}{SHA256}", ("sha256", SHA256)),
        (f"  md5:{MD5} ", ("md5", MD5)),
    ],
)
def test_algorithm_from_prefix_or_length(declared: str, expected: tuple[str, str]) -> None:
    assert parse_checksum(declared) == expected


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ("abc", "unknown algorithm"),
        ("crc32:deadbeef", "unknown algorithm"),
        ("sha256:" + "z" * 64, "not a hex digest"),
    ],
)
def test_unusable_checksums_are_refused_with_the_reason(declared: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        parse_checksum(declared)
