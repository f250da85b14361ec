"""Where a row's geometry comes from (lon/lat columns, "lat,lon", "[lon,lat]", WKT, GeoJSON) and its reprojection.

Points are kept as (lon, lat) pairs, reprojected a batch at a time with pyproj; other geometries go through
shapely and leave as WKB. A coordinate outside the source CRS's area of use is refused, never stored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
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
LATLON_COLUMNS = ("geo_point_2d", "geo_point", "geopoint", "geolocalisation", "coordonnees_gps")
LONLAT_ARRAY_COLUMNS = ("coordonneesxy",)
SHAPE_COLUMNS = ("geometry", "geom", "the_geom", "wkt", "geo_shape", "geojson", "shape", "geometrie")


class GeometryError(ValueError):
    """A row's geometry cannot be read or lies outside the CRS's area of use."""


@dataclass(frozen=True)
class GeometrySpec:
    """The geometry source of a file: its kind, the column(s) (as indexes in the header) and source CRS."""

    kind: GeometryKind
    columns: tuple[str, ...]
    crs: str = "EPSG:4326"

    @property
    def is_point(self) -> bool:
        return self.kind in ("lonlat", "latlon", "lonlat_text", "lonlat_array")


def detect_geometry(
    header: Sequence[str],
    *,
    crs: str = "EPSG:4326",
    geopoint_fields: dict[str, str] | None = None,
    sample_values: dict[str, list[str]] | None = None,
) -> GeometrySpec | None:
    """Recognise the common geometry columns of French open data; None when the file has none.

    `geopoint_fields` maps Table Schema geopoint fields to their format; `sample_values` lets WKT be told
    from GeoJSON by content.
    """
    lowered = {name.lower(): name for name in header}
    for lon, lat in LONLAT_PAIRS:
        if lon in lowered and lat in lowered:
            return GeometrySpec("lonlat", (lowered[lon], lowered[lat]), crs)
    for name, fmt in (geopoint_fields or {}).items():
        if name in header:
            kind: GeometryKind = "lonlat_array" if fmt == "array" else "lonlat_text"
            if name.lower() in LATLON_COLUMNS:
                kind = "latlon"
            return GeometrySpec(kind, (name,), crs)
    for name in LATLON_COLUMNS:
        if name in lowered:
            return GeometrySpec("latlon", (lowered[name],), crs)
    for name in LONLAT_ARRAY_COLUMNS:
        if name in lowered:
            return GeometrySpec("lonlat_array", (lowered[name],), crs)
    for name in SHAPE_COLUMNS:
        if name in lowered:
            column = lowered[name]
            values = [v for v in (sample_values or {}).get(column, []) if v.strip()]
            kind = "geojson" if values and values[0].lstrip().startswith("{") else "wkt"
            return GeometrySpec(kind, (column,), crs)
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
