"""Indicators without a database: definitions and their errors, periods, legends, the SVG drawings."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from territoire_data.errors import ValidationFailedError
from territoire_data.indicators import svg
from territoire_data.indicators.model import Target, parse_definition
from territoire_data.indicators.read import period_label, target_status

BASE: dict[str, Any] = {
    "slug": "essai",
    "title": "Essai",
    "methodology": "Une méthode.",
    "unit": "jours",
    "source": {"type": "sensors", "observed_property": "pm10"},
    "aggregation": {"function": "days_above", "threshold": 50},
    "period": "year",
}


def errors_of(data: dict[str, Any]) -> list[dict[str, str]]:
    with pytest.raises(ValidationFailedError) as caught:
        parse_definition(data)
    errors: list[dict[str, str]] = caught.value.extra["errors"]
    return errors


def test_a_valid_definition_parses_with_its_defaults() -> None:
    d = parse_definition(BASE)
    assert (d.timezone, d.licence, d.decimals) == ("Europe/Paris", "etalab-2.0", 1)


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"unite": "x"}, "unite", "unknown field"),
        ({"source": {**BASE["source"], "champ": "x"}}, "source.champ", "unknown field"),
        ({"period": "decade"}, "period", "Input should be 'day', 'week', 'month', 'quarter' or 'year'"),
        ({"decimals": "deux"}, "decimals", "type mismatch"),
        ({"licence": "cc0"}, "licence", "unknown licence 'cc0'"),
        ({"timezone": "Mars/Olympus"}, "timezone", "unknown time zone 'Mars/Olympus'"),
        ({"thresholds": [3, 1]}, "thresholds", "thresholds must be in increasing order"),
        ({"aggregation": {"function": "days_above"}}, "aggregation", "days_above needs `threshold`"),
        ({"period": "day"}, "(definition)", "days_above counts days"),
        ({"denominator": {"attribute": "population", "growth": "previous_year"}}, "denominator", "exactly one"),
        ({"denominator": {"attribute": "population"}}, "(definition)", "needs a breakdown"),
    ],
)
def test_errors_name_the_field_and_say_what_is_wrong(change: dict[str, Any], field: str, message: str) -> None:
    errors = errors_of({**BASE, **change})
    assert any(e["field"] == field and message in e["message"] for e in errors), errors


def test_a_missing_field_and_a_definition_that_is_not_a_mapping() -> None:
    assert {"field": "methodology", "message": "required field missing"} in errors_of(
        {k: v for k, v in BASE.items() if k != "methodology"}
    )
    with pytest.raises(ValidationFailedError, match="is a mapping of fields"):
        parse_definition(["slug", "essai"])


def test_periods_are_labelled_in_the_indicators_time_zone() -> None:
    d = parse_definition(BASE)
    new_year_in_paris = datetime(2025, 12, 31, 23, tzinfo=UTC)
    assert period_label(new_year_in_paris, d) == "2026"
    assert period_label(new_year_in_paris, d.model_copy(update={"period": "week"})) == "2026-S01"
    assert period_label(new_year_in_paris, d.model_copy(update={"period": "quarter"})) == "2026-T1"
    assert period_label(new_year_in_paris, d.model_copy(update={"period": "day"})) == "2026-01-01"


def test_target_status_in_words() -> None:
    at_most = Target(value=35, direction="at_most")
    assert [target_status(v, at_most) for v in (10, 35, 36, None)] == [
        "atteint",
        "atteint",
        "non atteint",
        "sans donnée",
    ]
    assert target_status(1, None) is None
    assert target_status(57.9, Target(value=58, direction="at_least")) == "non atteint"


def test_legends_from_thresholds_or_quantiles_and_french_numbers() -> None:
    legend = svg.legend_for([1, 2, 3], [10, 20], lower_is_better=True)
    assert legend.limits == (10, 20) and len(legend.colours) == 3
    assert [legend.colour(v) for v in (5, 10, 25, None)] == [*legend.colours, svg.NO_DATA]
    labels = svg.legend_labels(legend, 0)
    assert [label for _, label in labels] == ["moins de 10", "de 10 à moins de 20", "20 et plus", "pas de donnée"]
    quantiles = svg.legend_for([float(v) for v in range(100)], [], lower_is_better=False)
    assert len(quantiles.colours) == 5
    assert svg.fmt(12345.678, 1) == "12\u202f345,7"


def test_drawings_escape_names_and_say_what_they_show() -> None:
    shape = svg.Shape("1", "<script>alert(1)</script>", "M 0 0 L 1 1 Z", 3.0)
    legend = svg.legend_for([3.0], [], lower_is_better=False)
    drawn = str(svg.choropleth([shape], (0, 0, 1, 1), legend, title="Carte", unit="jours", decimals=0, label_id="m"))
    assert "<script>" not in drawn and "&lt;script&gt;" in drawn
    assert 'role="img"' in drawn and '<title id="m">Carte</title>' in drawn
    chart = str(
        svg.series_chart(
            [(datetime(2026, 1, 1, tzinfo=UTC), 1.0), (datetime(2026, 1, 2, tzinfo=UTC), None)],
            ["2026-01-01", "2026-01-02"],
            target=2.0,
            target_label="Cible : 2",
            title="Série",
            unit="jours",
            decimals=0,
            label_id="s",
        )
    )
    assert "stroke-dasharray" in chart and "Cible : 2" in chart
    assert (
        str(svg.series_chart([], [], target=None, target_label="", title="", unit="", decimals=0, label_id="x")) == ""
    )
