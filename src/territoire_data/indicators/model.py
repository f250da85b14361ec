"""What an indicator definition may say: the model of `indicators/*.yaml` and of `/api/v1/indicators` bodies.

Parsed here (shape, types, unknown fields), checked against the database in `compile` (datasets, fields and their
types, filters that must run), turned into SQL there too. Nothing in a definition ever becomes SQL text: field
names are looked up in the dataset's Table Schema (the allow-list), values are bound parameters.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from territoire_data.catalog.metadata import LICENCES, SLUG_PATTERN, THEMES
from territoire_data.errors import ValidationFailedError

Period = Literal["day", "week", "month", "quarter", "year"]
Function = Literal["count", "sum", "mean", "min", "max", "percentile", "days_above", "share"]

# How a period is written for people and in the published table (PostgreSQL to_char patterns).
PERIOD_LABELS: dict[str, str] = {
    "day": "YYYY-MM-DD",
    "week": 'IYYY-"S"IW',
    "month": "YYYY-MM",
    "quarter": 'YYYY-"T"Q',
    "year": "YYYY",
}
# The same period of the previous year, for growths: 52 weeks back keeps ISO weeks aligned.
PREVIOUS_YEAR: dict[str, str] = {
    "day": "1 year",
    "week": "52 weeks",
    "month": "1 year",
    "quarter": "1 year",
    "year": "1 year",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class DatasetSource(_Strict):
    """Records of a table dataset: those matching `filter` (CQL2 text or JSON), valued by the field `value`."""

    type: Literal["dataset"]
    dataset: str = Field(pattern=SLUG_PATTERN, description="slug of a table dataset")
    filter: str | None = Field(None, max_length=4096, description="CQL2 text or JSON over the dataset's fields")
    value: str | None = Field(None, max_length=200, description="numeric field aggregated (none: count records)")
    time: str | None = Field(
        None,
        max_length=200,
        description="date or datetime field that places a record in a period (none: a snapshot "
        "of the dataset, dated in the current period)",
    )


class SensorSource(_Strict):
    """Observations of the Datastreams of one ObservedProperty, in some sensor datasets (default: the public ones)."""

    type: Literal["sensors"]
    observed_property: str = Field(min_length=1, max_length=200, description="name or key of the ObservedProperty")
    datasets: list[Annotated[str, Field(pattern=SLUG_PATTERN)]] = Field(default_factory=list, max_length=50)
    read: Literal["observations", "rollups"] = Field(
        "observations", description="raw observations, or the 15-minute rollups (count, sum, mean, min, max, days)"
    )


Source = Annotated[DatasetSource | SensorSource, Field(discriminator="type")]


class Aggregation(_Strict):
    function: Function
    percentile: float | None = Field(None, gt=0, lt=100, description="for percentile: which one (e.g. 90)")
    threshold: float | None = Field(
        None, description="days_above: the daily mean to exceed; share for sensors: the value to exceed"
    )
    condition: str | None = Field(None, max_length=4096, description="share for datasets: CQL2 of the records counted")

    @model_validator(mode="after")
    def _parameters(self) -> Aggregation:
        if self.function == "percentile" and self.percentile is None:
            raise ValueError("percentile needs `percentile` (e.g. 90)")
        if self.function == "days_above" and self.threshold is None:
            raise ValueError("days_above needs `threshold` (the daily mean to exceed)")
        if self.function == "share" and self.threshold is None and self.condition is None:
            raise ValueError("share needs `condition` (dataset) or `threshold` (sensors)")
        return self


class Breakdown(_Strict):
    division: str = Field(pattern=SLUG_PATTERN, description="slug of a dataset declared as a division")


class Denominator(_Strict):
    """Divide by a division attribute (rates per N inhabitants), by another indicator, or compare with last year."""

    attribute: str | None = Field(None, max_length=200)
    indicator: str | None = Field(None, pattern=SLUG_PATTERN)
    growth: Literal["previous_year"] | None = None
    per: float = Field(1.0, gt=0, description="multiplier: 10000 for a rate per 10,000")

    @model_validator(mode="after")
    def _one(self) -> Denominator:
        given = [x for x in (self.attribute, self.indicator, self.growth) if x is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of attribute, indicator, growth")
        return self


class Target(_Strict):
    value: float
    direction: Literal["at_most", "at_least"]
    date: dt.date | None = None
    label: str | None = Field(None, max_length=200)


class IndicatorDefinition(_Strict):
    """A declared indicator, as written in `indicators/*.yaml` or sent to `/api/v1/indicators`."""

    slug: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,50}$")
    title: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=5000)
    methodology: str = Field(min_length=1, max_length=10000, description="how it is computed, in words")
    unit: str = Field(min_length=1, max_length=100)
    licence: str = "etalab-2.0"
    themes: list[str] = Field(default_factory=list, max_length=10)
    keywords: list[str] = Field(default_factory=list, max_length=30)
    publisher: str | None = Field(None, max_length=300)
    source: Source
    aggregation: Aggregation
    period: Period
    timezone: str = "Europe/Paris"
    breakdown: Breakdown | None = None
    denominator: Denominator | None = None
    target: Target | None = None
    thresholds: list[float] = Field(default_factory=list, max_length=8, description="legend class limits")
    decimals: int = Field(1, ge=0, le=6)

    @field_validator("licence")
    @classmethod
    def _licence(cls, value: str) -> str:
        if value not in LICENCES:
            raise ValueError(f"unknown licence {value!r}; known: {', '.join(LICENCES)}")
        return value

    @field_validator("themes")
    @classmethod
    def _themes(cls, value: list[str]) -> list[str]:
        unknown = [t for t in value if t not in THEMES]
        if unknown:
            raise ValueError(f"unknown themes {unknown}; EU data themes: {', '.join(THEMES)}")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("thresholds")
    @classmethod
    def _sorted(cls, value: list[float]) -> list[float]:
        if value != sorted(value):
            raise ValueError("thresholds must be in increasing order")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> IndicatorDefinition:
        sensors = isinstance(self.source, SensorSource)
        fn = self.aggregation.function
        if sensors and self.source.read == "rollups" and fn in ("percentile", "share"):  # type: ignore[union-attr]
            raise ValueError(f"aggregation {fn} needs the observations themselves: source.read must be observations")
        if not sensors and fn == "days_above" and self.source.time is None:  # type: ignore[union-attr]
            raise ValueError("days_above needs source.time (the date of each record)")
        if not sensors and fn == "share" and self.aggregation.condition is None:
            raise ValueError("share over a dataset needs aggregation.condition (CQL2)")
        if fn == "days_above" and self.period == "day":
            raise ValueError("days_above counts days: its period must be week, month, quarter or year")
        if self.denominator and self.denominator.attribute and self.breakdown is None:
            raise ValueError("a denominator attribute needs a breakdown by division")
        if self.denominator and self.denominator.indicator == self.slug:
            raise ValueError("an indicator cannot be its own denominator")
        return self


def _location(loc: tuple[Any, ...]) -> str:
    # Pydantic names the member of a union it tried ("DatasetSource"); people wrote `source.value`.
    parts = [str(p) for p in loc if not (isinstance(p, str) and p[:1].isupper()) and p not in ("dataset", "sensors")]
    return ".".join(parts) or "(definition)"


def describe_errors(exc: ValidationError) -> list[dict[str, str]]:
    """Pydantic's errors in words a person fixing a YAML file understands (where, what)."""
    described = []
    for error in exc.errors():
        where = _location(tuple(error["loc"]))
        kind = error["type"]
        if kind == "extra_forbidden":
            message = "unknown field"
        elif kind == "missing":
            message = "required field missing"
        elif kind.endswith("_type") or kind.endswith("_parsing"):
            message = f"type mismatch: {error['msg'].lower()} (got {str(error.get('input'))[:60]!r})"
        else:
            message = error["msg"].removeprefix("Value error, ")
        described.append({"field": where, "message": message})
    return described


def parse_definition(data: Any, *, origin: str = "body") -> IndicatorDefinition:
    """A definition from parsed YAML or JSON, or a 422 listing every problem (field: message)."""
    if not isinstance(data, dict):
        raise ValidationFailedError(f"{origin}: an indicator definition is a mapping of fields")
    try:
        return IndicatorDefinition.model_validate(data)
    except ValidationError as exc:
        errors = describe_errors(exc)
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        raise ValidationFailedError(f"{origin}: invalid indicator definition: {summary}", errors=errors) from None
