"""Geometry columns: recognised names, cell forms, reprojection and the CRS area of use."""

from __future__ import annotations

import pytest

from territoire_data.errors import BadRequestError
from territoire_data.ingest.files.geometry import (
    GeometryError,
    detect_geometry,
    read_point,
    read_shape,
    reprojector,
)


@pytest.mark.parametrize(
    ("header", "kind", "columns"),
    [
        (["id", "longitude", "latitude"], "lonlat", ("longitude", "latitude")),
        (["LAT", "LON"], "lonlat", ("LON", "LAT")),
        (["Xlong", "Ylat"], "lonlat", ("Xlong", "Ylat")),
        (["xlong", "ylat"], "lonlat", ("xlong", "ylat")),
        (["x", "y"], "lonlat", ("x", "y")),
        (["coordonneesXY", "consolidated_longitude", "consolidated_latitude"], "lonlat",
         ("consolidated_longitude", "consolidated_latitude")),
        (["geo_shape", "geo_point_2d"], "latlon", ("geo_point_2d",)),
        (["coordonneesXY"], "lonlat_array", ("coordonneesXY",)),
        (["wkt"], "wkt", ("wkt",)),
    ],
)  # fmt: skip
def test_common_names_are_recognised(header: list[str], kind: str, columns: tuple[str, ...]) -> None:
    spec = detect_geometry(header)
    assert spec is not None
    assert (spec.kind, spec.columns) == (kind, columns)


def test_geojson_column_is_told_from_wkt_by_content() -> None:
    spec = detect_geometry(["geo_shape"], sample_values={"geo_shape": ['{"type": "Point", "coordinates": [1, 2]}']})
    assert spec is not None
    assert spec.kind == "geojson"


def test_no_geometry() -> None:
    assert detect_geometry(["nom", "valeur"]) is None


def test_cells() -> None:
    assert read_point("lonlat", ["2,35", "48,85"]) == (2.35, 48.85)
    assert read_point("latlon", ["48.84090598651907,2.300280980817689"]) == (2.300280980817689, 48.84090598651907)
    assert read_point("lonlat_array", ["[7.48710500,48.345345]"]) == (7.487105, 48.345345)
    assert read_point("lonlat", ["", ""]) is None
    with pytest.raises(GeometryError, match="one coordinate is empty"):
        read_point("lonlat", ["2.3", ""])
    with pytest.raises(GeometryError, match=r"\[lon,lat\]"):
        read_point("lonlat_array", ["7.4,48.3"])
    shape = read_shape("geojson", '{"coordinates": [[2.30, 48.84]], "type": "MultiPoint"}')
    assert shape is not None
    assert shape.geom_type == "MultiPoint"
    assert read_shape("wkt", "POINT (1 2)").x == 1  # type: ignore[union-attr]
    with pytest.raises(GeometryError, match="not valid WKT"):
        read_shape("wkt", "POINT (1")


def test_lambert93_is_reprojected_and_the_sea_is_refused() -> None:
    projection = reprojector("EPSG:2154")
    lons, lats, reasons = projection.points([652000.0, 6862000.0, 1.0e7], [6862000.0, 652000.0, 1.0e7])
    assert reasons[0] is None
    assert lons[0] == pytest.approx(2.3458, abs=1e-3)
    assert lats[0] == pytest.approx(48.8562, abs=1e-3)
    assert reasons[1] is not None
    assert "outside the CRS's area of use" in reasons[1]
    assert reasons[2] is not None


def test_wgs84_bounds_and_bare_codes() -> None:
    projection = reprojector("4326")
    _, _, reasons = projection.points([2.0, 200.0], [48.0, 10.0])
    assert reasons[0] is None
    assert reasons[1] is not None


def test_unknown_crs() -> None:
    with pytest.raises(BadRequestError, match="unknown CRS"):
        reprojector("EPSG:999999")


def test_wgs84_reprojector_needs_no_pyproj_and_agrees_with_it() -> None:
    import pyproj

    from territoire_data.ingest.files.geometry import WORLD, reprojector

    assert pyproj.CRS.from_user_input("EPSG:4326").area_of_use.bounds == WORLD
    for text in ("EPSG:4326", "4326", "epsg:4326"):
        projection = reprojector(text)
        assert projection.bounds == WORLD and projection.transformer is None
    assert reprojector("EPSG:2154").transformer is not None


def test_lambert_93_metres_without_a_crs_get_a_hint_naming_epsg_2154() -> None:
    from territoire_data.ingest.files.geometry import reprojector

    wgs84 = reprojector("EPSG:4326")
    _, _, reasons = wgs84.points([355_000.0, 2.35], [6_689_000.0, 48.85])
    assert reasons[1] is None
    assert reasons[0] is not None and "EPSG:2154" in reasons[0] and "Lambert-93" in reasons[0]
    _, _, far = wgs84.points([5_000_000.0], [9_000_000.0])
    assert far[0] is not None and "Lambert-93" not in far[0], "no hint for what does not look like it"
    _, _, none = reprojector("EPSG:2154").points([355_000.0], [6_689_000.0])
    assert none == [None]
