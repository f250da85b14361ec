"""Coordinate reference systems we serve (OGC API - Features Part 2): URIs, SRIDs and axis order."""

from __future__ import annotations

from dataclasses import dataclass

from territoire_data.errors import BadRequestError

CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"


@dataclass(frozen=True)
class Crs:
    """One supported CRS: its URI, PostGIS SRID, whether axes are (lat, lon) and the output precision."""

    uri: str
    srid: int
    lat_first: bool
    decimals: int

    @property
    def header(self) -> str:
        """The value of the Content-Crs header (a URI in angle brackets)."""
        return f"<{self.uri}>"


SUPPORTED: tuple[Crs, ...] = (
    Crs(CRS84, 4326, lat_first=False, decimals=9),
    Crs("http://www.opengis.net/def/crs/EPSG/0/4326", 4326, lat_first=True, decimals=9),
    Crs("http://www.opengis.net/def/crs/EPSG/0/2154", 2154, lat_first=False, decimals=3),
    Crs("http://www.opengis.net/def/crs/EPSG/0/3857", 3857, lat_first=False, decimals=3),
)
DEFAULT = SUPPORTED[0]
_BY_URI = {c.uri: c for c in SUPPORTED}
# Short forms people type; the URI is the normative name.
_ALIASES = {
    "CRS84": CRS84,
    "OGC:CRS84": CRS84,
    "[OGC:CRS84]": CRS84,
    "http://www.opengis.net/def/crs/OGC/1.3/CRS84h": CRS84,
    **{f"EPSG:{c.srid}": c.uri for c in SUPPORTED[1:]},
    **{f"[EPSG:{c.srid}]": c.uri for c in SUPPORTED[1:]},
    **{f"https://www.opengis.net/def/crs/EPSG/0/{c.srid}": c.uri for c in SUPPORTED[1:]},
}


def supported_uris() -> list[str]:
    return [c.uri for c in SUPPORTED]


def parse_crs(value: str | None, *, parameter: str = "crs") -> Crs:
    """A CRS from its URI (or a short EPSG:/OGC: form); 400 when we do not serve it."""
    if value is None or value == "":
        return DEFAULT
    text = value.strip().strip("<>")
    uri = _ALIASES.get(text, _ALIASES.get(text.upper(), text))
    found = _BY_URI.get(uri)
    if found is None:
        raise BadRequestError(f"{parameter}: unsupported CRS {value!r}; supported: {', '.join(supported_uris())}")
    return found


def output_geometry_sql(column: str, crs: Crs) -> str:
    """SQL for a stored (EPSG:4326, lon/lat) geometry expressed in the output CRS."""
    expression = column if crs.srid == 4326 else f"ST_Transform({column}, {crs.srid})"
    if crs.lat_first:
        expression = f"ST_FlipCoordinates({expression})"
    return expression


def input_geometry_sql(placeholder: str, crs: Crs) -> str:
    """SQL turning a query geometry given in `crs` into the column's EPSG:4326 lon/lat, so the index is used."""
    expression = f"ST_SetSRID({placeholder}, {crs.srid})"
    if crs.lat_first:
        expression = f"ST_FlipCoordinates({expression})"
    return expression if crs.srid == 4326 else f"ST_Transform({expression}, 4326)"
