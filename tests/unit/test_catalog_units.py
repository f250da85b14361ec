"""Pure parts of the catalog: content negotiation, warnings, SCDL text."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from territoire_data.catalog.dcat import negotiate
from territoire_data.catalog.metadata import DatasetCreate, DatasetUpdate, formats_for, quality_warnings
from territoire_data.catalog.scdl import plain_lower


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "jsonld"),
        ("", "jsonld"),
        ("*/*", "jsonld"),
        ("text/turtle", "ttl"),
        ("application/rdf+xml", "rdf"),
        ("application/ld+json;q=0.2, application/rdf+xml;q=0.8", "rdf"),
        ("text/turtle;q=0, */*;q=0.1", "jsonld"),
        ("text/*", "ttl"),
        ("image/png", None),
        ("text/turtle;q=0", None),
    ],
)
def test_negotiate_picks_the_best_serialisation(accept: str | None, expected: str | None) -> None:
    assert negotiate(accept) == expected


def test_quality_warnings() -> None:
    full = {"licence": "etalab-2.0", "description": "x" * 40, "contact_name": "A", "contact_email": "a@b.fr"}
    assert quality_warnings(**full) == []
    assert [w.field for w in quality_warnings(**{**full, "licence": None})] == ["licence"]
    assert [w.field for w in quality_warnings(**{**full, "description": "court"})] == ["description"]
    assert [w.field for w in quality_warnings(**{**full, "contact_email": None})] == ["contact"]


def test_keywords_are_trimmed_and_deduplicated() -> None:
    created = DatasetCreate(slug="a", title="A", keywords=["  vélo ", "vélo", "pistes  cyclables"])
    assert created.keywords == ["vélo", "pistes cyclables"]
    with pytest.raises(ValidationError):
        DatasetCreate(slug="a", title="A", keywords=["   "])
    assert DatasetUpdate(keywords=None).keywords is None


def test_formats_follow_kind_and_geometry() -> None:
    assert formats_for("table", "Point") == ["csv", "geojson", "parquet", "gpkg", "fgb", "shapefile"]
    assert formats_for("table", None) == ["csv", "parquet"]
    assert formats_for("sensors", None) == ["sensorthings"]


def test_scdl_text_is_lower_case_without_accents_or_separators() -> None:
    assert plain_lower(" Propreté;Hygiène ") == "proprete,hygiene"
