"""Unknown TERRITOIRE_* variables are reported by name; the platform's own variables are not."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from territoire_data.logging_setup import report_unknown_variables, unknown_variables


def test_a_misspelt_or_newer_variable_is_reported_and_the_platforms_own_are_not() -> None:
    environ = {
        "TERRITOIRE_LOG_JSNO": "true",  # misspelt
        "TERRITOIRE_SOMETHING_NEW": "1",  # a setting of a newer release
        "TERRITOIRE_LOG_JSON": "true",
        "TERRITOIRE_SHARED_LIMITS_FILE": "/tmp/x",  # set by `serve` for its workers
        "TERRITOIRE_PORT": "8000",  # scripts/quickstart
        "TERRITOIRE_TEST_ADMIN_URL": "postgresql://postgres@127.0.0.1/postgres",
        "PROMETHEUS_MULTIPROC_DIR": "/tmp/metrics",  # set by `serve`, not ours to judge
        "PATH": "/usr/bin",
    }
    assert unknown_variables(environ, env_file=None) == ["TERRITOIRE_LOG_JSNO", "TERRITOIRE_SOMETHING_NEW"]


def test_the_env_file_is_checked_too(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("TERRITOIRE_DATABASE_URL=postgresql://u@h/d\nTERRITOIRE_RATE_LIMIT_PER_MINUTES=10\n")
    assert unknown_variables({}, env_file=env_file) == ["TERRITOIRE_RATE_LIMIT_PER_MINUTES"]


def test_the_warning_names_the_variable_and_the_closest_setting(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert report_unknown_variables({"TERRITOIRE_LOG_JSNO": "1"}) == ["TERRITOIRE_LOG_JSNO"]
    assert "TERRITOIRE_LOG_JSNO is not a setting of this release" in caplog.text
    assert "did you mean TERRITOIRE_LOG_JSON?" in caplog.text
