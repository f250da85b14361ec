"""Connectors may declare `publish: auto`, only with the metadata publication needs (checked when read)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from territoire_data.ingest.files.connector import DatasetDef
from territoire_data.ingest.mqtt.config import DatasetSpec

COMPLETE: dict[str, Any] = {
    "slug": "capteurs-air",
    "title": "Qualité de l'air",
    "description": "Mesures des capteurs de qualité de l'air de la ville, toutes les quinze minutes.",
    "licence": "etalab-2.0",
    "publisher": "Ville de Nantes",
    "themes": ["ENVI"],
    "update_frequency": "UPDATE_CONT",
}


@pytest.mark.parametrize("model", [DatasetSpec, DatasetDef])
def test_auto_publication_needs_complete_metadata(model: Any) -> None:
    assert model(**COMPLETE, publish="auto").publish == "auto"
    assert model(**{**COMPLETE, "publisher": None}).publish == "manual", "manual (a draft) by default"
    with pytest.raises(ValidationError, match="Producteur"):
        model(**{**COMPLETE, "publisher": None}, publish="auto")
    with pytest.raises(ValidationError, match="Description"):
        model(**{**COMPLETE, "description": "court"}, publish="auto")
