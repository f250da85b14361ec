"""OpenID Connect pieces that need no issuer: the settings' rules, the JWT shape, roles and grants from claims."""

from __future__ import annotations

import pytest

from territoire_data.auth.oidc import OidcVerifier, claim_at, looks_like_jwt
from territoire_data.errors import ConfigurationError
from territoire_data.settings import load_settings

BASE = {"database_url": "postgresql://u@127.0.0.1/d", "_env_file": None}


def verifier(**extra: object) -> OidcVerifier:
    return OidcVerifier(load_settings(**BASE, oidc_issuer="https://sso.ville.fr/realms/v", oidc_audience="td", **extra))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"oidc_issuer": "https://sso.ville.fr/realms/v"}, "TERRITOIRE_OIDC_AUDIENCE must be set"),
        ({"oidc_issuer": "sso.ville.fr"}, "TERRITOIRE_OIDC_ISSUER is invalid"),
        ({"oidc_algorithms": ["HS256"]}, "TERRITOIRE_OIDC_ALGORITHMS is invalid"),
        ({"oidc_algorithms": ["none"]}, "TERRITOIRE_OIDC_ALGORITHMS is invalid"),
        ({"oidc_role_map": {"chef": "root"}}, "TERRITOIRE_OIDC_ROLE_MAP is invalid"),
        (
            {
                "oidc_issuer": "https://a/r",
                "oidc_audience": "td",
                "oidc_jwks_url": "https://a/k",
                "oidc_jwks_file": "k",
            },
            "not both",
        ),
    ],
)
def test_oidc_settings_are_checked_with_a_clear_message(extra: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_settings(**BASE, **extra)


def test_jwt_shape() -> None:
    assert looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln")
    assert looks_like_jwt("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.")  # alg none: refused later, with its reason
    assert not looks_like_jwt("td_0000test_secret")
    assert not looks_like_jwt("a.b.c")
    assert not looks_like_jwt("eyJh bGc.eyJzdWIiOiJ4In0.c2ln")
    assert not looks_like_jwt("eyJhbGciOiJSUzI1NiJ9." + "x" * 20_000 + ".c2ln")


def test_claim_at_follows_dotted_paths() -> None:
    claims = {"realm_access": {"roles": ["a"]}, "resource_access": {"territoire-data": {"roles": ["b"]}}}
    assert claim_at(claims, "realm_access.roles") == ["a"]
    assert claim_at(claims, "resource_access.territoire-data.roles") == ["b"]
    assert claim_at(claims, "realm_access.roles.x") is None
    assert claim_at(claims, "missing.path") is None


def test_roles_map_to_the_highest_platform_role_and_dataset_roles_to_grants() -> None:
    identity = verifier().identity(
        {
            "sub": "1234",
            "preferred_username": "agent",
            "realm_access": {
                "roles": [
                    "territoire-reader",
                    "territoire-publisher",
                    "dataset:parcs:write",
                    "dataset:bruit:read",
                    "dataset:odd:name:read",
                    "dataset:bad:delete",
                    "dataset::read",
                    42,
                ]
            },
        }
    )
    assert identity.role == "publisher"
    assert identity.read_slugs == {"parcs", "bruit", "odd:name"}
    assert identity.write_slugs == {"parcs"}
    assert (identity.subject, identity.username) == ("1234", "agent")


def test_client_roles_claim_and_custom_role_map() -> None:
    v = verifier(oidc_roles_claim="resource_access.td.roles", oidc_role_map={"sig-admin": "admin"})
    claims = {"sub": "x", "resource_access": {"td": {"roles": ["sig-admin"]}}, "realm_access": {"roles": []}}
    assert v.identity(claims).role == "admin"
    assert v.identity({"sub": "x", "realm_access": {"roles": ["territoire-admin"]}}).role == "reader"
    assert v.identity({"sub": "x", "resource_access": {"td": {"roles": "sig-admin"}}}).role == "reader"
