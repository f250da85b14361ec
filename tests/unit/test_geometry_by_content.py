"""Geometry found by what a column holds, not only by its name; encodings told by their byte order mark.

Property tests generate the files cities export: `lat,lon` pairs under any column name, GeoJSON or WKT in a
column, Opendatasoft's `Geo Point`/`Geo Shape` pair, and the same rows written in UTF-8, UTF-8 with BOM or
UTF-16 (Excel's "Texte Unicode").
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from territoire_data.ingest.files.geometry import detect_geometry, read_point, read_shape
from territoire_data.ingest.files.reader import CsvFormatError, open_csv

LAT = st.floats(min_value=-89.9, max_value=89.9, allow_nan=False).map(lambda v: round(v, 6))
LON = st.floats(min_value=-179.9, max_value=179.9, allow_nan=False).map(lambda v: round(v, 6))
NAMES = st.sampled_from(["position", "Localisation", "coords", "emplacement", "pt", "Géolocalisation du lieu"])


def _fixed(value: float) -> str:
    return f"{value:.6f}"  # never "1e-05": coordinates are written with a decimal point


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(LAT, LON), min_size=1, max_size=20), NAMES, st.sampled_from([",", ", "]))
def test_a_column_of_lat_lon_pairs_is_the_geometry(points: list[tuple[float, float]], name: str, sep: str) -> None:
    # values that read as France's lon,lat both ways are taken as lon,lat (tested below): leave them aside
    assume(not all(-6 <= lat <= 10 and 41 <= lon <= 52 for lat, lon in points))
    values = [f"{_fixed(lat)}{sep}{_fixed(lon)}" for lat, lon in points]
    spec = detect_geometry(["nom", name, "valeur"], sample_values={"nom": ["a"], name: values, "valeur": ["1,5"]})
    assert spec is not None and spec.kind == "latlon" and spec.columns == (name,)
    assert "lat,lon" in spec.reason and name in spec.reason
    for (lat, lon), value in zip(points, values, strict=True):
        assert read_point(spec.kind, [value]) == pytest.approx((lon, lat))


def test_french_lon_lat_pairs_and_out_of_range_pairs() -> None:
    spec = detect_geometry(["p"], sample_values={"p": ["2.3522,48.8566", "-1.5536, 47.2184"]})
    assert spec is not None and spec.kind == "lonlat_text"
    assert read_point(spec.kind, ["2.3522,48.8566"]) == (2.3522, 48.8566)
    # a first number past 90 can only be a longitude
    spec = detect_geometry(["p"], sample_values={"p": ["120.5, 10.25"]})
    assert spec is not None and spec.kind == "lonlat_text"
    # out of range either way: no geometry
    assert detect_geometry(["p"], sample_values={"p": ["120.5, 100.25"]}) is None


@given(st.lists(st.floats(min_value=0, max_value=999, allow_nan=False), min_size=1, max_size=10))
def test_french_decimals_and_plain_text_are_never_a_geometry(numbers: list[float]) -> None:
    decimals = [f"{v:.2f}".replace(".", ",") for v in numbers]  # "48,85": a number, not a pair
    words = ["Rue de la Paix", "12, rue Voltaire", ""]
    assert detect_geometry(["montant", "adresse"], sample_values={"montant": decimals, "adresse": words}) is None


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(LON, LAT), min_size=1, max_size=10), st.sampled_from(["Point", "Polygon"]))
def test_a_column_of_geojson_geometries_is_the_geometry(points: list[tuple[float, float]], kind: str) -> None:
    def geometry(lon: float, lat: float) -> str:
        if kind == "Point":
            return json.dumps({"type": "Point", "coordinates": [lon, lat]})
        ring = [[lon, lat], [lon + 0.01, lat], [lon + 0.01, lat + 0.01], [lon, lat]]
        return json.dumps({"type": "Polygon", "coordinates": [ring]})

    values = [geometry(lon, lat) for lon, lat in points]
    spec = detect_geometry(["id", "forme"], sample_values={"id": ["1"], "forme": values})
    assert spec is not None and (spec.kind, spec.columns) == ("geojson", ("forme",))
    assert "GeoJSON" in spec.reason
    assert read_shape(spec.kind, values[0]) is not None


def test_wkt_and_arrays_by_content_and_json_that_is_not_geometry() -> None:
    spec = detect_geometry(["trace"], sample_values={"trace": ["LINESTRING(2.3 48.8, 2.4 48.9)", "POINT (1 2)"]})
    assert spec is not None and spec.kind == "wkt"
    spec = detect_geometry(["xy"], sample_values={"xy": ["[7.487105,48.345345]", "[ 2.35, 48.85 ]"]})
    assert spec is not None and spec.kind == "lonlat_array"
    assert detect_geometry(["meta"], sample_values={"meta": ['{"a": 1}', '{"type": "Feature"}']}) is None
    assert detect_geometry(["w"], sample_values={"w": ["POINTLESS (1 2)"]}) is None


POLYGON = {"type": "Polygon", "coordinates": [[[-0.58, 44.83], [-0.57, 44.83], [-0.57, 44.84], [-0.58, 44.83]]]}


def test_opendatasoft_geo_point_and_geo_shape_prefer_the_shape_and_check_it() -> None:
    header = ["Geo Point", "Geo Shape", "nom"]
    shape = json.dumps(POLYGON)
    spec = detect_geometry(header, sample_values={"Geo Point": ["44.8366, -0.5733"], "Geo Shape": [shape]})
    assert spec is not None and (spec.kind, spec.columns) == ("geojson", ("Geo Shape",))
    assert "agrees" in spec.reason and spec.notes == ()
    # a point far from its shape (columns swapped, another row's point): the shape still, and a note
    spec = detect_geometry(header, sample_values={"Geo Point": ["-0.5733, 44.8366"], "Geo Shape": [shape]})
    assert spec is not None and spec.columns == ("Geo Shape",)
    assert len(spec.notes) == 1 and "away from" in spec.notes[0]
    # shapes of single points say no more than the point: a Point layer from the point column
    single = json.dumps({"type": "Point", "coordinates": [-0.5733, 44.8366]})
    spec = detect_geometry(header, sample_values={"Geo Point": ["44.8366,-0.5733"], "Geo Shape": [single]})
    assert spec is not None and (spec.kind, spec.columns) == ("latlon", ("Geo Point",))


def test_lambert_93_looking_coordinates_produce_a_hint_naming_epsg_2154() -> None:
    samples = {"X": ["351869.1", "355113.4"], "Y": ["6789301.9", "6790045.2"]}
    spec = detect_geometry(["X", "Y"], sample_values=samples, crs_given=False)
    assert spec is not None and spec.kind == "lonlat"
    assert any("EPSG:2154" in note for note in spec.notes)
    assert detect_geometry(["X", "Y"], sample_values=samples, crs="EPSG:2154", crs_given=True).notes == ()  # type: ignore[union-attr]
    wgs84 = {"X": ["2.35"], "Y": ["48.85"]}
    assert detect_geometry(["X", "Y"], sample_values=wgs84, crs_given=False).notes == ()  # type: ignore[union-attr]


ROWS = st.lists(
    st.tuples(
        st.text(alphabet=st.characters(categories=["L", "N", "Zs"]), min_size=1, max_size=12).map(str.strip),
        st.integers(-1000, 1000),
    ).filter(lambda r: r[0] != ""),
    min_size=1,
    max_size=15,
)


@settings(max_examples=60, deadline=None)
@given(ROWS, st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le-bom", "utf-16-be-bom"]))
def test_utf8_and_utf16_files_read_back_the_same_rows(tmp_path_factory: pytest.TempPathFactory, rows, encoding) -> None:  # type: ignore[no-untyped-def]
    text = io.StringIO()
    writer = csv.writer(text, delimiter="\t", lineterminator="\r\n")  # Excel's "Texte Unicode": tabs, CRLF
    writer.writerow(["libellé", "quantité"])
    writer.writerows(rows)
    if encoding == "utf-16-le-bom":
        data = b"\xff\xfe" + text.getvalue().encode("utf-16-le")
    elif encoding == "utf-16-be-bom":
        data = b"\xfe\xff" + text.getvalue().encode("utf-16-be")
    else:
        data = text.getvalue().encode(encoding)
    path = Path(tmp_path_factory.mktemp("enc")) / "f.csv"
    path.write_bytes(data)
    with open_csv(path) as source:
        assert source.header == ["libellé", "quantité"]
        got = [tuple(cells) for _, cells in source.records()]
    assert got == [(name, str(number)) for name, number in rows]
    assert source.dialect.encoding == {"utf-8": "utf-8", "utf-8-sig": "utf-8-sig"}.get(encoding, "utf-16")


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64), "PNG image"),
        (b"PK\x03\x04" + bytes(40), "ZIP archive"),
        (b"a,b\n1,\x00\x002\n", "NUL bytes"),
    ],
)
def test_binary_files_are_refused_with_what_they_are(tmp_path: Path, data: bytes, what: str) -> None:
    path = tmp_path / "upload.csv"
    path.write_bytes(data)
    with pytest.raises(CsvFormatError, match=what):
        open_csv(path)
