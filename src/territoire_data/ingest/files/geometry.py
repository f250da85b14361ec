"""Where a row's geometry comes from (lon/lat columns, "lat,lon", "[lon,lat]", WKT, GeoJSON) and its reprojection.

Points are kept as (lon, lat) pairs, reprojected a batch at a time with pyproj; other geometries go through
shapely and leave as WKB. A coordinate outside the source CRS's area of use is refused, never stored.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

import orjson

from territoire_data.errors import BadRequestError
from territoire_data.ingest.files.values import parse_number

if TYPE_CHECKING:  # imported where used: a plain WGS84 point file needs neither (a quicker CLI start)
    import pyproj
    import shapely

GeometryKind = Literal["lonlat", "latlon", "lonlat_text", "lonlat_array", "wkt", "geojson"]

# (longitude column, latitude column), compared case-insensitively, first match wins.
LONLAT_PAIRS: tuple[tuple[str, str], ...] = (
    ("longitude", "latitude"),
    ("lon", "lat"),
    ("lng", "lat"),
    ("long", "lat"),
    ("xlong", "ylat"),
    ("x_long", "y_lat"),
    ("consolidated_longitude", "consolidated_latitude"),
    ("longitude_wgs84", "latitude_wgs84"),
    ("lon_wgs84", "lat_wgs84"),
    ("x_wgs84", "y_wgs84"),
    ("x", "y"),
    ("coord_x", "coord_y"),
    ("coordx", "coordy"),
)
# Opendatasoft exports name them `geo_point_2d`/`geo_shape` (API names) or `Geo Point`/`Geo Shape` (labels):
# names are compared lower-cased with spaces and hyphens as underscores.
LATLON_COLUMNS = ("geo_point_2d", "geo_point", "geopoint", "geolocalisation", "coordonnees_gps")
LONLAT_ARRAY_COLUMNS = ("coordonneesxy",)
SHAPE_COLUMNS = ("geometry", "geom", "the_geom", "wkt", "geo_shape", "geojson", "shape", "geometrie")


class GeometryError(ValueError):
    """A row's geometry cannot be read or lies outside the CRS's area of use."""


@dataclass(frozen=True)
class GeometrySpec:
    """The geometry source of a file: its kind, the column(s) (as indexes in the header) and source CRS;
    `reason` says why these columns became the geometry, `notes` what the import should warn about."""

    kind: GeometryKind
    columns: tuple[str, ...]
    crs: str = "EPSG:4326"
    reason: str = field(default="", compare=False)
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def is_point(self) -> bool:
        return self.kind in ("lonlat", "latlon", "lonlat_text", "lonlat_array")


def _normal(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def detect_geometry(
    header: Sequence[str],
    *,
    crs: str = "EPSG:4326",
    geopoint_fields: dict[str, str] | None = None,
    sample_values: dict[str, list[str]] | None = None,
    crs_given: bool = True,
) -> GeometrySpec | None:
    """Recognise the geometry of a file by its column names (those of French open data), else by the content
    of a column (every sampled value a `lat,lon` pair, a GeoJSON geometry, WKT or a `[lon,lat]` array); None
    when the file has none.

    `geopoint_fields` maps Table Schema geopoint fields to their format; `sample_values` (column -> first
    values) lets content speak; `crs_given` False lets Lambert-93-looking coordinates produce a hint.
    """
    samples = {name: [v for v in values if v.strip()] for name, values in (sample_values or {}).items()}
    spec = _by_name(header, crs, geopoint_fields or {}, samples) or _by_content(header, crs, samples)
    if spec is not None and not crs_given:
        hint = _projected_hint(spec, samples)
        if hint:
            spec = replace(spec, notes=(*spec.notes, hint))
    return spec


def _by_name(
    header: Sequence[str], crs: str, geopoint_fields: dict[str, str], samples: dict[str, list[str]]
) -> GeometrySpec | None:
    lowered: dict[str, str] = {}
    for name in header:
        lowered.setdefault(_normal(name), name)
    for lon, lat in LONLAT_PAIRS:
        if lon in lowered and lat in lowered:
            return GeometrySpec(
                "lonlat", (lowered[lon], lowered[lat]), crs, f"columns named {lowered[lon]!r} and {lowered[lat]!r}"
            )
    for name, fmt in geopoint_fields.items():
        if name in header:
            kind: GeometryKind = "lonlat_array" if fmt == "array" else "lonlat_text"
            if _normal(name) in LATLON_COLUMNS:
                kind = "latlon"
            return GeometrySpec(kind, (name,), crs, f"the Table Schema's geopoint field {name!r}")
    point = next((lowered[n] for n in LATLON_COLUMNS if n in lowered), None)
    shape = next((lowered[n] for n in SHAPE_COLUMNS if n in lowered), None)
    if shape is not None:
        values = samples.get(shape, [])
        kind = "geojson" if values and values[0].lstrip().startswith("{") else "wkt"
        if point is None:
            return GeometrySpec(kind, (shape,), crs, f"a column named {shape!r}")
        # Opendatasoft's pair: the shape is the geometry (points, lines, areas), the point its centre; both must
        # tell the same place, or the file's columns are not what their names say.
        if not values or not _parses(kind, values):
            return GeometrySpec("latlon", (point,), crs, f"a column named {point!r} ({shape!r} is empty or unreadable)")
        notes = _disagreements(kind, samples.get(shape, []), samples.get(point, []), shape, point)
        if not notes and _single_points(kind, values):
            # shapes that hold one point each say no more than the point column: a Point layer is simpler
            return GeometrySpec(
                "latlon", (point,), crs, f"a column named {point!r} (its {shape!r} holds the same single points)"
            )
        reason = f"the {shape!r} column (preferred to {point!r}, its centre" + (
            ", which agrees with it on the sampled rows)" if not notes else ")"
        )
        return GeometrySpec(kind, (shape,), crs, reason, notes)
    if point is not None:
        return GeometrySpec("latlon", (point,), crs, f"a column named {point!r}")
    for name in LONLAT_ARRAY_COLUMNS:
        if name in lowered:
            return GeometrySpec("lonlat_array", (lowered[name],), crs, f"a column named {lowered[name]!r}")
    return None


# A `lat,lon` (or `lon,lat`) pair: two decimals with a point each (so a French decimal such as "48,85" is no pair).
_PAIR = re.compile(r"^\s*(-?\d{1,3}\.\d+)\s*,\s*(-?\d{1,3}\.\d+)\s*$")
_ARRAY = re.compile(r"^\s*\[\s*(-?\d{1,3}(?:\.\d+)?)\s*,\s*(-?\d{1,3}(?:\.\d+)?)\s*\]\s*$")
_WKT = re.compile(r"^\s*(?:SRID=\d+;)?\s*(?:MULTI)?(?:POINT|LINESTRING|POLYGON)|^\s*GEOMETRYCOLLECTION", re.IGNORECASE)
SAMPLE_MIN = 1  # a column speaks by content when every one of its sampled non-empty values fits


def _by_content(header: Sequence[str], crs: str, samples: dict[str, list[str]]) -> GeometrySpec | None:
    for name in header:
        values = samples.get(name, [])
        if len(values) < SAMPLE_MIN:
            continue
        pairs = [_PAIR.match(v) for v in values]
        if all(pairs):
            firsts = [float(m.group(1)) for m in pairs if m]
            seconds = [float(m.group(2)) for m in pairs if m]
            if all(abs(a) <= 90 for a in firsts) and all(abs(b) <= 180 for b in seconds):
                # lat,lon (Opendatasoft's order) unless the values read as France's lon,lat and not its lat,lon
                if all(-6 <= a <= 10 for a in firsts) and all(41 <= b <= 52 for b in seconds):
                    return GeometrySpec(
                        "lonlat_text", (name,), crs, f"every sampled value of {name!r} is a 'lon,lat' pair"
                    )
                return GeometrySpec("latlon", (name,), crs, f"every sampled value of {name!r} is a 'lat,lon' pair")
            if all(abs(a) <= 180 for a in firsts) and all(abs(b) <= 90 for b in seconds):
                return GeometrySpec("lonlat_text", (name,), crs, f"every sampled value of {name!r} is a 'lon,lat' pair")
        arrays = [_ARRAY.match(v) for v in values]
        if all(arrays) and all(abs(float(m.group(2))) <= 90 for m in arrays if m):
            return GeometrySpec("lonlat_array", (name,), crs, f"every sampled value of {name!r} is a [lon,lat] array")
        if all(v.lstrip().startswith("{") for v in values) and _parses("geojson", values):
            return GeometrySpec("geojson", (name,), crs, f"every sampled value of {name!r} is a GeoJSON geometry")
        if all(_WKT.match(v) for v in values) and _parses("wkt", values):
            return GeometrySpec("wkt", (name,), crs, f"every sampled value of {name!r} is a WKT geometry")
    return None


def _parses(kind: GeometryKind, values: Sequence[str]) -> bool:
    try:
        return all(read_shape(kind, v) is not None for v in values)
    except GeometryError:
        return False


def _single_points(kind: GeometryKind, values: Sequence[str]) -> bool:
    import shapely

    for value in values:
        shape = read_shape(kind, value)
        if shape is None or shapely.get_type_id(shape) not in (0, 4) or shapely.get_num_coordinates(shape) != 1:
            return False
    return True


def _disagreements(
    kind: GeometryKind, shapes: Sequence[str], points: Sequence[str], shape_column: str, point_column: str
) -> tuple[str, ...]:
    """Sampled rows where the point lies away from its shape (more than 0.001° past its bounding box)."""
    import shapely

    far = 0
    for shape_text, point_text in zip(shapes, points, strict=False):
        try:
            shape = read_shape(kind, shape_text)
            lon_lat = read_point("latlon", [point_text])
        except GeometryError:
            far += 1
            continue
        if shape is None or lon_lat is None:
            continue
        xmin, ymin, xmax, ymax = shapely.bounds(shape).tolist()
        lon, lat = lon_lat
        if not (xmin - 1e-3 <= lon <= xmax + 1e-3 and ymin - 1e-3 <= lat <= ymax + 1e-3):
            far += 1
    if not far:
        return ()
    return (
        f"{far} sampled row(s) have a {point_column!r} away from their {shape_column!r}: the geometry is taken "
        f"from {shape_column!r}; check the two columns",
    )


# Lambert-93 (EPSG:2154) coordinates of metropolitan France, in metres.
_L93_X = (99_000.0, 1_300_000.0)
_L93_Y = (6_000_000.0, 7_200_000.0)


def _projected_hint(spec: GeometrySpec, samples: dict[str, list[str]]) -> str | None:
    """A hint naming EPSG:2154 when WGS84 was assumed and the coordinates look like Lambert-93 metres."""
    if spec.crs.upper() not in ("EPSG:4326", "4326"):
        return None
    xs: list[float] = []
    ys: list[float] = []
    for index in range(len(samples.get(spec.columns[0], [])) if spec.columns else 0):
        try:
            if spec.kind == "lonlat":
                x = parse_number(samples[spec.columns[0]][index])
                y = parse_number(samples[spec.columns[1]][index])
            elif spec.is_point:
                point = read_point(spec.kind, [samples[spec.columns[0]][index]])
                if point is None:
                    continue
                x, y = point
            else:
                return None
        except (ValueError, GeometryError, IndexError):
            continue
        xs.append(x)
        ys.append(y)
    if xs and all(_L93_X[0] <= x <= _L93_X[1] for x in xs) and all(_L93_Y[0] <= y <= _L93_Y[1] for y in ys):
        return (
            f"the coordinates of {', '.join(repr(c) for c in spec.columns)} look like Lambert-93 metres, not degrees: "
            "import again with --crs EPSG:2154 (or the crs form field)"
        )
    return None


# --- reading one cell --------------------------------------------------------------------------------------


def _pair(text: str, what: str) -> tuple[float, float]:
    parts = text.split(",")
    if len(parts) != 2:
        raise GeometryError(f"'{text[:60]}' is not a {what} pair")
    try:
        return parse_number(parts[0].strip()), parse_number(parts[1].strip())
    except ValueError:
        raise GeometryError(f"'{text[:60]}' is not a {what} pair of numbers") from None


def read_point(kind: GeometryKind, cells: Sequence[str]) -> tuple[float, float] | None:
    """(x, y) in the source CRS from the cells of the geometry column(s); None when they are all empty."""
    if kind == "lonlat":
        x_cell, y_cell = cells[0].strip(), cells[1].strip()
        if not x_cell and not y_cell:
            return None
        if not x_cell or not y_cell:
            raise GeometryError("one coordinate is empty and the other is not")
        try:
            return parse_number(x_cell), parse_number(y_cell)
        except ValueError as exc:
            raise GeometryError(f"coordinate {exc}") from None
    text = cells[0].strip()
    if not text:
        return None
    if kind == "latlon":
        lat, lon = _pair(text, "'lat,lon'")
        return lon, lat
    if kind == "lonlat_array":
        if not (text.startswith("[") and text.endswith("]")):
            raise GeometryError(f"'{text[:60]}' is not a [lon,lat] array")
        return _pair(text[1:-1], "[lon,lat]")
    return _pair(text, "'lon, lat'")


def read_shape(kind: GeometryKind, cell: str) -> shapely.Geometry | None:
    """A shapely geometry from a WKT or GeoJSON cell; None when empty."""
    import shapely

    text = cell.strip()
    if not text:
        return None
    try:
        geometry = shapely.from_wkt(text) if kind == "wkt" else geojson_geometry(orjson.loads(text))
    except (shapely.errors.GEOSException, orjson.JSONDecodeError, ValueError, TypeError) as exc:
        raise GeometryError(f"not valid {'WKT' if kind == 'wkt' else 'GeoJSON'}: {str(exc)[:120]}") from None
    if geometry is None or geometry.is_empty:
        return None
    return geometry


_GEOJSON_TYPES = {
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
    "Polygon",
    "MultiPolygon",
    "GeometryCollection",
}


def geojson_geometry(value: Any) -> shapely.Geometry | None:
    """A shapely geometry from a parsed GeoJSON geometry object (RFC 7946), with a clear error otherwise."""
    import shapely

    if value is None:
        return None
    if not isinstance(value, dict):
        raise GeometryError("a GeoJSON geometry must be an object")
    kind = value.get("type")
    if kind not in _GEOJSON_TYPES:
        raise GeometryError(f"unknown GeoJSON geometry type {str(kind)[:40]!r}")
    if kind == "GeometryCollection":
        if not isinstance(value.get("geometries"), list):
            raise GeometryError("a GeometryCollection needs a 'geometries' array")
    elif not isinstance(value.get("coordinates"), list):
        raise GeometryError(f"a {kind} needs a 'coordinates' array")
    try:
        return shapely.from_geojson(orjson.dumps(value))
    except shapely.errors.GEOSException as exc:
        raise GeometryError(f"invalid {kind}: {str(exc)[:120]}") from None


# --- reprojection and area of use ----------------------------------------------------------------------------

# Lambert-93 (EPSG:2154) eastings and northings of metropolitan France, with a margin: what a file of French
# coordinates without a CRS most often holds.
LAMBERT_93_X = (-400_000.0, 1_400_000.0)
LAMBERT_93_Y = (5_900_000.0, 7_300_000.0)


@dataclass(frozen=True)
class Reprojector:
    """Source CRS → WGS84 (lon, lat), with the CRS's area of use as the bound of acceptable results."""

    crs: str
    bounds: tuple[float, float, float, float]
    transformer: pyproj.Transformer | None

    def points(self, xs: Sequence[float], ys: Sequence[float]) -> tuple[list[float], list[float], list[str | None]]:
        """Reproject a batch; the third list gives, per point, why it is refused (None when accepted)."""
        import numpy as np

        x = np.asarray(xs, dtype=np.float64)
        y = np.asarray(ys, dtype=np.float64)
        if self.transformer is not None:
            lon, lat = self.transformer.transform(x, y, errcheck=False)
            lon, lat = np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)
        else:
            lon, lat = x, y
        west, south, east, north = self.bounds
        finite = np.isfinite(lon) & np.isfinite(lat)
        inside = finite & (lat >= south) & (lat <= north)
        inside &= ((lon >= west) & (lon <= east)) if west <= east else ((lon >= west) | (lon <= east))
        reasons: list[str | None] = [None] * len(x)
        for index in np.flatnonzero(~inside).tolist():
            if not finite[index]:
                reasons[index] = f"coordinates ({x[index]:g}, {y[index]:g}) cannot be transformed from {self.crs}"
            else:
                reasons[index] = (
                    f"coordinates ({x[index]:g}, {y[index]:g}) in {self.crs} fall outside the CRS's area of use "
                    f"(lon {west:g}..{east:g}, lat {south:g}..{north:g})"
                ) + self._hint(float(x[index]), float(y[index]))
        return lon.tolist(), lat.tolist(), reasons

    def _hint(self, x: float, y: float) -> str:
        """Metres of Lambert-93 read as degrees (no CRS given): say which CRS they look like."""
        if (
            self.transformer is None
            and LAMBERT_93_X[0] <= x <= LAMBERT_93_X[1]
            and LAMBERT_93_Y[0] <= y <= LAMBERT_93_Y[1]
        ):
            return "; they look like Lambert-93 metres: give the CRS EPSG:2154 (--crs EPSG:2154, or crs in an upload)"
        return ""

    def _inside(self, lon: float, lat: float) -> bool:
        west, south, east, north = self.bounds
        if not south <= lat <= north:
            return False
        if west <= east:
            return west <= lon <= east
        return lon >= west or lon <= east  # an area crossing the antimeridian

    def shape(self, geometry: shapely.Geometry) -> tuple[shapely.Geometry, str | None]:
        """Reproject one geometry; the reason it is refused, or None."""
        import shapely

        if self.transformer is not None:
            transformer = self.transformer
            geometry = shapely.transform(geometry, lambda c: _transform_coords(transformer, c), include_z=False)
        xmin, ymin, xmax, ymax = shapely.bounds(geometry).tolist()
        if not all(math.isfinite(v) for v in (xmin, ymin, xmax, ymax)):
            return geometry, f"geometry cannot be transformed from {self.crs}"
        if not (self._inside(xmin, ymin) and self._inside(xmax, ymax)):
            west, south, east, north = self.bounds
            return geometry, (
                f"geometry ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) falls outside the area of use of {self.crs} "
                f"(lon {west:g}..{east:g}, lat {south:g}..{north:g})"
            ) + self._hint(xmin, ymin)
        return geometry, None


def _transform_coords(transformer: pyproj.Transformer, coords: Any) -> Any:
    import numpy as np

    xs, ys = transformer.transform(coords[:, 0], coords[:, 1], errcheck=False)
    return np.column_stack([xs, ys])


WORLD = (-180.0, -90.0, 180.0, 90.0)


@lru_cache(maxsize=32)
def reprojector(crs: str) -> Reprojector:
    """The reprojector of a source CRS given as `EPSG:2154`, `2154` or a PROJ/WKT string."""
    text = crs.strip()
    if text.isdigit():
        text = f"EPSG:{text}"
    if text.upper() == "EPSG:4326":  # the default: its area of use is the world (a unit test checks pyproj agrees)
        return Reprojector(text, WORLD, None)
    import pyproj
    from pyproj.exceptions import CRSError

    try:
        source = pyproj.CRS.from_user_input(text)
    except CRSError:
        raise BadRequestError(f"unknown CRS {crs!r} (use an EPSG code such as EPSG:2154)") from None
    area = source.area_of_use
    bounds = area.bounds if area is not None else WORLD
    target = pyproj.CRS.from_epsg(4326)
    if source == target or source.equals(target, ignore_axis_order=True):
        return Reprojector(text, bounds, None)
    return Reprojector(text, bounds, pyproj.Transformer.from_crs(source, target, always_xy=True))
