"""Real clients on the real server: OWSLib's OGC API - Features client and GDAL's OAPIF driver (ogrinfo)."""

from __future__ import annotations

import shutil
import subprocess

import asyncpg
import pytest
from owslib.ogcapi.features import Features

from tests.conftest import LiveServer
from tests.features_data import MESURES_COUNT, load_features_data, load_sensor_network

pytestmark = [pytest.mark.db, pytest.mark.e2e]


@pytest.fixture
async def loaded(db: asyncpg.Connection) -> asyncpg.Connection:
    ids = await load_features_data(db)
    await load_sensor_network(db, ids["secret"])
    return db


async def test_owslib_reads_every_collection_with_the_database_counts(
    loaded: asyncpg.Connection, live_server: LiveServer
) -> None:
    api = Features(f"{live_server.url}/ogcapi")
    assert "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core" in api.conformance()["conformsTo"]
    ids = {c["id"] for c in api.collections()["collections"]}
    assert ids == {"stations", "mesures", "capteurs"}  # the restricted dataset is nowhere
    for slug in ("stations", "mesures"):
        table = await loaded.fetchval("SELECT table_name FROM dataset WHERE slug = $1", slug)
        expected = await loaded.fetchval(f"SELECT count(*) FROM datasets.{table}")
        page = api.collection_items(slug, limit=1000)
        assert page["numberMatched"] == expected
        assert page["numberReturned"] == expected == len(page["features"])
    sensors = api.collection_items("capteurs", limit=100)
    assert sensors["numberMatched"] == len(sensors["features"]) == 1  # the restricted dataset's Thing is hidden
    assert sensors["features"][0]["properties"]["observations"]["no2"]["result"] == 23.0
    queryables = api.collection_queryables("mesures")
    assert queryables["properties"]["n"]["type"] == "integer"
    one = api.collection_item("mesures", "3")
    assert one["properties"]["code"] == "M002"
    filtered = api.collection_items("mesures", bbox=[4.795, 45.695, 4.825, 45.705], limit=50)
    assert {f["properties"]["code"] for f in filtered["features"]} == {"M000", "M001", "M002"}


def _ogrinfo(*args: str) -> str:
    return _ogrinfo_run(*args).stdout


def _ogrinfo_run(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["ogrinfo", "-ro", "--config", "GDAL_HTTP_TIMEOUT", "20", "--config", "CPL_DEBUG", "ON", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result


def _feature_count(output: str) -> int:
    for line in output.splitlines():
        if line.strip().startswith("Feature Count:"):
            return int(line.split(":")[1])
    raise AssertionError(f"no feature count in {output[:500]}")


@pytest.mark.skipif(shutil.which("ogrinfo") is None, reason="GDAL's ogrinfo (gdal-bin) is not installed")
async def test_gdal_oapif_lists_layers_counts_and_filters(loaded: asyncpg.Connection, live_server: LiveServer) -> None:
    source = f"OAPIF:{live_server.url}/ogcapi"
    layers = _ogrinfo(source)
    assert "stations" in layers
    assert "mesures" in layers
    assert "capteurs" in layers
    assert "secret" not in layers
    assert _feature_count(_ogrinfo("-so", source, "stations")) == 74
    assert _feature_count(_ogrinfo("-so", source, "mesures")) == MESURES_COUNT
    assert _feature_count(_ogrinfo("-so", source, "capteurs")) == 1
    # A spatial filter, which the driver sends as bbox=...
    in_box = _ogrinfo("-so", "-spat", "4.795", "45.695", "4.825", "45.705", source, "mesures")
    assert _feature_count(in_box) == 3
    # An attribute filter, which the driver translates to CQL2 for servers that conform to Part 3.
    run = _ogrinfo_run("-so", "-where", "n >= 100 AND actif = 1", source, "mesures")
    assert "filter=" in run.stderr
    assert "Full filter will be evaluated on client side" not in run.stderr
    where = run.stdout
    table = await loaded.fetchval("SELECT table_name FROM dataset WHERE slug = 'mesures'")
    expected = await loaded.fetchval(f"SELECT count(*) FROM datasets.{table} WHERE n >= 100 AND actif")
    assert _feature_count(where) == expected
    # And the features themselves, as GeoJSON through ogr2ogr-like dumping.
    dump = _ogrinfo("-al", "-where", "code = 'M004'", source, "mesures")
    assert "M004" in dump
