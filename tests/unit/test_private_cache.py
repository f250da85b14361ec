"""Keyed responses never reach a shared cache: the header rewrite of api.security.ResponseHeadersMiddleware."""

from __future__ import annotations

from territoire_data.api.security import _cache_headers, carries_credentials


def _headers(result: list[tuple[bytes, bytes]]) -> dict[str, str]:
    return {name.decode(): value.decode() for name, value in result}


def test_a_keyed_request_turns_public_into_private_and_drops_shared_cache_directives() -> None:
    out = _headers(
        _cache_headers(
            [(b"cache-control", b"public, max-age=60, s-maxage=600, must-revalidate"), (b"vary", b"Accept")], True
        )
    )
    assert out["cache-control"] == "private, max-age=60, must-revalidate"
    assert out["vary"] == "Accept, Authorization, X-API-Key"


def test_a_keyed_response_without_cache_control_becomes_private() -> None:
    out = _headers(_cache_headers([(b"content-type", b"application/json")], True))
    assert out["cache-control"] == "private"
    assert out["vary"] == "Authorization, X-API-Key"


def test_anonymous_cacheable_responses_vary_on_credentials_and_others_are_left_alone() -> None:
    cacheable = _headers(_cache_headers([(b"cache-control", b"public, max-age=60"), (b"vary", b"accept")], False))
    assert cacheable == {"cache-control": "public, max-age=60", "vary": "accept, Authorization, X-API-Key"}
    assert _cache_headers([(b"content-type", b"text/html")], False) == [(b"content-type", b"text/html")]
    assert _cache_headers([(b"cache-control", b"no-store")], False) == [(b"cache-control", b"no-store")]
    star = _headers(_cache_headers([(b"cache-control", b"public"), (b"vary", b"*")], False))
    assert star["vary"] == "*"


def test_credentials_are_an_authorization_or_x_api_key_header_with_a_value() -> None:
    assert carries_credentials({"headers": [(b"authorization", b"Bearer td_x")]})
    assert carries_credentials({"headers": [(b"x-api-key", b"td_x")]})
    assert not carries_credentials({"headers": [(b"x-api-key", b" ")]})
    assert not carries_credentials({"headers": [(b"cookie", b"lang=en")]})
