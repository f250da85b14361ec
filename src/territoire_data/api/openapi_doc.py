"""The published contract: the app's OpenAPI document, rendered the same way every time."""

from __future__ import annotations

import json

from territoire_data.api.app import create_app
from territoire_data.settings import Settings

# The contract must not depend on where it is generated: fixed, placeholder settings.
CONTRACT_SETTINGS = {
    "database_url": "postgresql://territoire@127.0.0.1:5432/territoire",
    "mqtt_url": "mqtt://127.0.0.1:1883",
    "base_url": "http://127.0.0.1:8000",
}


def openapi_document() -> str:
    app = create_app(Settings.model_validate(CONTRACT_SETTINGS))
    return json.dumps(app.openapi(), indent=2, ensure_ascii=False, sort_keys=False) + "\n"
