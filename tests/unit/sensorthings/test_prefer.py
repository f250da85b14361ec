"""`Prefer` header parsing (RFC 7240): which requests ask for `return=minimal`."""

from __future__ import annotations

import pytest

from territoire_data.sensorthings.service import wants_minimal


@pytest.mark.parametrize(
    ("header", "minimal"),
    [
        (None, False),
        ("", False),
        ("return=minimal", True),
        ("Return=Minimal", True),
        ('return="minimal"', True),
        ("respond-async, return=minimal; foo=bar", True),
        ("return=representation", False),
        ("return-minimal", False),
        ("odata.maxpagesize=10", False),
        ("returns=minimal", False),
    ],
)
def test_return_minimal_is_recognised(header: str | None, minimal: bool) -> None:
    assert wants_minimal(header) is minimal
