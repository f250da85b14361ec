"""The temporary admin token guarding imports is a secret: read from the environment, never shown."""

from __future__ import annotations

import pytest

from territoire_data.catalog.routes import principal_from
from territoire_data.settings import load_settings


def test_admin_token_is_secret_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERRITOIRE_DATABASE_URL", "postgresql://u@127.0.0.1:5432/db")
    monkeypatch.setenv("TERRITOIRE_ADMIN_TOKEN", "s3cr3t-value")
    settings = load_settings(_env_file=None)
    assert "s3cr3t-value" not in repr(settings)
    assert "s3cr3t-value" not in str(settings.model_dump())
    assert principal_from(settings, "Bearer s3cr3t-value").is_admin
    assert not principal_from(settings, "Bearer s3cr3t-valu").is_admin
    assert not principal_from(settings, None).is_admin
    monkeypatch.delenv("TERRITOIRE_ADMIN_TOKEN")
    assert load_settings(_env_file=None).admin_token is None
