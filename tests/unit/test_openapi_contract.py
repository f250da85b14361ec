"""The published contract openapi/openapi.json is exactly what the app generates."""

from __future__ import annotations

import json
from pathlib import Path

from territoire_data.api.openapi_doc import openapi_document

CONTRACT = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"


def test_committed_openapi_matches_the_app() -> None:
    generated = openapi_document()
    committed = CONTRACT.read_text(encoding="utf-8")
    assert json.loads(committed) == json.loads(generated), (
        "openapi/openapi.json is stale: run `territoire-data openapi -o openapi/openapi.json`"
    )
    assert committed == generated


def test_every_operation_has_a_summary_and_problem_json_errors_are_documented() -> None:
    document = json.loads(openapi_document())
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert operation.get("summary"), f"{method.upper()} {path} has no summary"
