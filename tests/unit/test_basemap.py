"""The basemap setting: none by default (the CSP stays closed to the outside), the Géoplateforme as an explicit
opt-in with its attribution, or the city's own style URL; the CSP opens to that origin only."""

from __future__ import annotations

import pytest

from territoire_data.api.security import CONTENT_SECURITY_POLICY, content_security_policy
from territoire_data.errors import ConfigurationError
from territoire_data.settings import IGN_ATTRIBUTION, Settings, basemap_origins, basemap_style, load_settings


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, database_url="postgresql://u@127.0.0.1/db", **values)  # type: ignore[call-arg, arg-type]


def test_no_basemap_by_default_and_the_policy_unchanged() -> None:
    default = settings()
    assert default.basemap == "none"
    assert basemap_style(default) == (None, None)
    assert content_security_policy(basemap_origins(default)) == CONTENT_SECURITY_POLICY
    assert "connect-src 'self';" in CONTENT_SECURITY_POLICY


def test_ign_is_an_opt_in_with_its_attribution() -> None:
    ign = settings(basemap="ign")
    style, attribution = basemap_style(ign)
    assert style is not None and style.startswith("https://data.geopf.fr/")
    assert attribution == IGN_ATTRIBUTION and "IGN" in attribution
    policy = content_security_policy(basemap_origins(ign))
    assert "connect-src 'self' https://data.geopf.fr;" in policy
    assert "img-src 'self' https://data.geopf.fr data: blob:;" in policy
    assert "script-src 'self';" in policy, "scripts stay ours"


def test_the_citys_own_style_opens_its_origin_only() -> None:
    own = settings(basemap="https://tuiles.ville.fr/styles/plan.json")
    assert basemap_origins(own) == ("https://tuiles.ville.fr",)
    assert "connect-src 'self' https://tuiles.ville.fr;" in content_security_policy(basemap_origins(own))


@pytest.mark.parametrize("value", ["osm", "javascript:alert(1)", "ftp://x/style.json", "https://"])
def test_a_bad_basemap_is_refused_naming_the_setting(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERRITOIRE_DATABASE_URL", "postgresql://u@127.0.0.1/db")
    monkeypatch.setenv("TERRITOIRE_BASEMAP", value)
    with pytest.raises(ConfigurationError, match="TERRITOIRE_BASEMAP"):
        load_settings()
