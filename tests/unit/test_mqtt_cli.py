"""The `ingest mqtt` and `simulate` commands: clear one-line errors, no traceback."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from territoire_data.cli import app

ENV = {"TERRITOIRE_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}


def test_missing_connector_file_is_one_clear_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["ingest", "mqtt", str(tmp_path / "nope.yaml")], env=ENV)
    assert result.exit_code == 2
    assert "connector file not found" in result.output
    assert "Traceback" not in result.output


def test_invalid_connector_names_the_field(tmp_path: Path) -> None:
    connector = tmp_path / "bad.yaml"
    connector.write_text("name: x\ndecoder: chirpstack-v4\ntopics: ['a/#']\ndataset: {slug: 'Not A Slug', title: T}\n")
    result = CliRunner().invoke(app, ["ingest", "mqtt", str(connector)], env=ENV)
    assert result.exit_code == 2
    assert "dataset.slug" in result.output


def test_simulate_help_lists_its_options() -> None:
    result = CliRunner().invoke(app, ["simulate", "--help"])
    assert result.exit_code == 0
    for option in ("--rate", "--duration", "--count"):
        assert option in result.output
