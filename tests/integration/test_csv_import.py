"""CSV imports into typed dataset tables, on a real PostGIS: real files, Table Schema examples, bad files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from territoire_data.errors import BadRequestError, NotFoundError
from territoire_data.ingest.files.loader import ImportFailedError, ImportOptions, import_csv, load_schema_file

pytestmark = pytest.mark.db

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CSV = FIXTURES / "csv"
SCHEMAS = FIXTURES / "schemas"


async def load(db: asyncpg.Connection, path: Path, slug: str, **options: Any) -> dict[str, Any]:
    schema = options.pop("schema", None)
    return await import_csv(
        db, path, slug, ImportOptions(schema=load_schema_file(schema) if schema else None, **options)
    )


async def table_of(db: asyncpg.Connection, slug: str) -> str:
    name = await db.fetchval("SELECT table_name FROM dataset WHERE slug = $1", slug)
    return f'datasets."{name}"'


async def point(db: asyncpg.Connection, slug: str, where: str, *args: Any) -> tuple[float, float]:
    table = await table_of(db, slug)
    row = await db.fetchrow(f"SELECT ST_X(geom) AS x, ST_Y(geom) AS y FROM {table} WHERE {where}", *args)
    assert row is not None
    return row["x"], row["y"]


# --- every real file --------------------------------------------------------------------------------------


async def test_paris_sanisettes_opendatasoft_export(db: asyncpg.Connection) -> None:
    report = await load(db, CSV / "paris_sanisettes.csv", "sanisettes", create=True)
    assert report["status"] == "succeeded"
    assert report["dialect"] == {"format": "csv", "encoding": "utf-8", "delimiter": ";"}
    assert report["geometry"]["kind"] == "latlon"
    assert report["rows_inserted"] == 615
    table = await table_of(db, "sanisettes")
    assert await db.fetchval(f"SELECT count(*) FROM {table} WHERE geom IS NOT NULL") == 615
    assert await db.fetchval(f'SELECT count(*) FROM {table} WHERE "ARRONDISSEMENT" IS NULL') == 106
    x, y = await point(db, "sanisettes", "\"ADRESSE\" = '92102  RUE BLOMET'")
    assert (x, y) == pytest.approx((2.300280980817689, 48.84090598651907), abs=1e-12)
    row = await db.fetchrow("SELECT row_count, geometry_type, ST_XMin(spatial_extent) AS xmin FROM dataset")
    assert row["row_count"] == 615
    assert row["geometry_type"] == "Point"
    assert 2.2 < row["xmin"] < 2.3


async def test_irve_consolidation(db: asyncpg.Connection) -> None:
    report = await load(db, CSV / "irve_consolidation_extrait.csv", "irve", create=True)
    assert report["rows_inserted"] == 100
    assert report["geometry"]["columns"] == ["consolidated_longitude", "consolidated_latitude"]
    schema = {f["name"]: f["type"] for f in report["table_schema"]["fields"]}
    assert schema["consolidated_is_lon_lat_correct"] == "boolean"  # "False" and "True"
    assert schema["nbre_pdc"] == "integer"
    x, y = await point(db, "irve", "id_pdc_itinerance = $1", "ATHTBE1004017")
    assert (x, y) == pytest.approx((7.762694, 48.825613))
    table = await table_of(db, "irve")
    assert await db.fetchval(f"SELECT count(*) FROM {table} WHERE geom IS NULL") == 0


async def test_meteofrance_keeps_station_codes_and_reads_coordinates(db: asyncpg.Connection) -> None:
    await load(db, CSV / "meteofrance_MN_07_precip_6min.csv", "meteo", create=True)
    table = await table_of(db, "meteo")
    assert await db.fetchval(f"SELECT count(*) FROM {table}") == 100
    assert await db.fetchval(f'SELECT DISTINCT "NUM_POSTE" FROM {table}') == "07005001"
    assert await point(db, "meteo", "_fid = 1") == pytest.approx((4.5825, 44.539833))


async def test_meteofrance_with_a_schema_reads_the_compact_utc_timestamp(
    db: asyncpg.Connection, tmp_path: Path
) -> None:
    schema = {
        "fields": [
            {"name": "NUM_POSTE", "type": "string", "constraints": {"pattern": "\\d{8}"}},
            {"name": "NOM_USUEL", "type": "string"},
            {"name": "LAT", "type": "number"},
            {"name": "LON", "type": "number"},
            {"name": "ALTI", "type": "integer"},
            {"name": "AAAAMMJJHHMN", "type": "datetime", "format": "%Y%m%d%H%M"},
            {"name": "RR", "type": "number", "constraints": {"minimum": 0}},
            {"name": "QRR", "type": "integer"},
        ],
        "primaryKey": ["NUM_POSTE", "AAAAMMJJHHMN"],
    }
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    report = await load(
        db, CSV / "meteofrance_MN_07_precip_6min.csv", "meteo", schema=path, create=True, timezone="UTC"
    )
    assert report["rows_inserted"] == 100
    row = await db.fetchrow("SELECT temporal_start::text AS a, temporal_end::text AS b FROM dataset")
    assert row["a"] == "2025-01-01 00:00:00+00"
    assert row["b"] == "2025-01-01 09:54:00+00"


async def test_ecocompteur_site_channel_and_measures_across_dst(db: asyncpg.Connection) -> None:
    await load(db, CSV / "ecocompteur_loire_site.csv", "sites", create=True)
    assert await point(db, "sites", "site_name = 'Rue Gambetta'") == pytest.approx((-1.551592, 47.213215))
    await load(db, CSV / "ecocompteur_loire_channel.csv", "channels", create=True)
    assert await db.fetchval(f"SELECT count(*) FROM {await table_of(db, 'channels')}") == 10
    report = await load(db, CSV / "ecocompteur_loire_measure.csv", "measures", create=True)
    assert report["rows_inserted"] == 3650
    assert {f["name"]: f["type"] for f in report["table_schema"]["fields"]}["start_datetime"] == "datetime"
    table = await table_of(db, "measures")
    # Offsets are taken as written: the file's spring DST day ends at 23:00+01:00, so it lasts 23 hours.
    spans = await db.fetch(
        f"SELECT extract(epoch FROM end_datetime - start_datetime) / 3600 AS h, count(*) AS n FROM {table} "
        "GROUP BY 1 ORDER BY 1"
    )
    assert {int(r["h"]): r["n"] for r in spans} == {23: 10, 24: 3640}
    assert await db.fetchval(f"SELECT count(*) FROM {table} WHERE start_datetime = '2022-07-01T00:00:00+02:00'") == 10


# --- Table Schema examples --------------------------------------------------------------------------------

EXAMPLES = [
    ("irve/statique/schema-statique.json", "irve/statique/exemple-valide-statique.csv", 2, (7.487105, 48.345345)),
    ("irve/dynamique/schema-dynamique.json", "irve/dynamique/exemple-valide-dynamique.csv", 2, None),
    ("stationnement/schema.json", "stationnement/exemple-valide.csv", 2, (1.452323, 46.59698)),
    ("comptage-mobilites/site/schema.json", "comptage-mobilites/site/exemple-valide.csv", 1, (1.452323, 46.59698)),
    ("comptage-mobilites/channel/schema.json", "comptage-mobilites/channel/exemple-valide.csv", 1, None),
    ("comptage-mobilites/measure/schema.json", "comptage-mobilites/measure/exemple-valide.csv", 9, None),
]


@pytest.mark.parametrize(("schema", "example", "rows", "coordinates"), EXAMPLES, ids=[e[1] for e in EXAMPLES])
async def test_valid_examples_of_schema_data_gouv_fr(
    db: asyncpg.Connection, schema: str, example: str, rows: int, coordinates: tuple[float, float] | None
) -> None:
    report = await load(db, SCHEMAS / example, "example", schema=SCHEMAS / schema, create=True)
    assert report["status"] == "succeeded", report["errors"]
    assert report["rows_inserted"] == rows
    assert report["warnings"] == []
    table = await table_of(db, "example")
    assert await db.fetchval(f"SELECT count(*) FROM {table}") == rows
    stored = json.loads(await db.fetchval("SELECT table_schema::text FROM dataset"))
    assert stored["fields"] == json.loads((SCHEMAS / schema).read_text())["fields"]
    if coordinates:
        assert await point(db, "example", "_fid = 1") == pytest.approx(coordinates)
    else:
        assert await db.fetchval(f"SELECT count(*) FROM {table} WHERE geom IS NOT NULL") == 0


async def test_measure_example_keeps_an_empty_count_as_null(db: asyncpg.Connection) -> None:
    await load(db, SCHEMAS / "comptage-mobilites/measure/exemple-valide.csv", "m",
               schema=SCHEMAS / "comptage-mobilites/measure/schema.json", create=True)  # fmt: skip
    table = await table_of(db, "m")
    assert await db.fetchval(f"SELECT count(*) FROM {table} WHERE count IS NULL") == 1


# --- modes ------------------------------------------------------------------------------------------------

STATIONNEMENT = SCHEMAS / "stationnement/schema.json"
STATIONNEMENT_CSV = SCHEMAS / "stationnement/exemple-valide.csv"


async def snapshot(db: asyncpg.Connection, slug: str) -> list[tuple[Any, ...]]:
    table = await table_of(db, slug)
    rows = await db.fetch(f"SELECT xmin::text AS v, t.* FROM {table} t ORDER BY _fid")
    return [tuple(r.values()) for r in rows]


async def test_reimport_in_upsert_mode_changes_nothing(db: asyncpg.Connection) -> None:
    await load(db, STATIONNEMENT_CSV, "parkings", schema=STATIONNEMENT, create=True)
    before = await snapshot(db, "parkings")
    report = await load(db, STATIONNEMENT_CSV, "parkings", mode="upsert")
    assert (report["rows_inserted"], report["rows_updated"], report["rows_unchanged"]) == (0, 0, 2)
    assert await snapshot(db, "parkings") == before  # not even a new row version


async def test_upsert_updates_changed_rows_only(db: asyncpg.Connection, tmp_path: Path) -> None:
    await load(db, STATIONNEMENT_CSV, "parkings", schema=STATIONNEMENT, create=True)
    changed = tmp_path / "changed.csv"
    lines = STATIONNEMENT_CSV.read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2].replace(",325,", ",400,")
    changed.write_text("\n".join(lines), encoding="utf-8")
    report = await load(db, changed, "parkings", mode="upsert")
    assert (report["rows_inserted"], report["rows_updated"], report["rows_unchanged"]) == (0, 1, 1)
    table = await table_of(db, "parkings")
    assert await db.fetchval(f"SELECT nb_places FROM {table} WHERE id = '75114-P-002'") == 400


async def test_replace_mode_and_append_duplicates(db: asyncpg.Connection) -> None:
    await load(db, STATIONNEMENT_CSV, "parkings", schema=STATIONNEMENT, create=True)
    with pytest.raises(ImportFailedError) as info:
        await load(db, STATIONNEMENT_CSV, "parkings")  # append the same keys again
    errors = info.value.report["errors"]
    assert [(e["line"], e["column"], e["code"]) for e in errors] == [
        (2, "id", "unique-error"),
        (3, "id", "unique-error"),
    ]
    report = await load(db, STATIONNEMENT_CSV, "parkings", mode="replace")
    assert (report["rows_deleted"], report["rows_inserted"]) == (2, 2)
    assert await db.fetchval("SELECT row_count FROM dataset") == 2


async def test_upsert_without_primary_key_is_refused(db: asyncpg.Connection) -> None:
    await load(db, CSV / "ecocompteur_loire_site.csv", "sites", create=True)
    with pytest.raises(BadRequestError, match="primaryKey"):
        await load(db, CSV / "ecocompteur_loire_site.csv", "sites", mode="upsert")


async def test_missing_dataset(db: asyncpg.Connection) -> None:
    with pytest.raises(NotFoundError):
        await load(db, STATIONNEMENT_CSV, "nowhere")


# --- invalid files ----------------------------------------------------------------------------------------

BAD_PARKINGS = """id,nom,insee,adresse,url,type_usagers,gratuit,nb_places,nb_pr,nb_pmr,nb_voitures_electriques,nb_velo,nb_2r_el,nb_autopartage,nb_2_rm,nb_covoit,hauteur_max,num_siret,Xlong,Ylat,tarif_pmr,tarif_1h,tarif_2h,tarif_3h,tarif_4h,tarif_24h,abo_resident,abo_non_resident,type_ouvrage,info
75114-P-010,BON,75114,,,tous,true,10,,,,,,,,,200,21920044100018,2.35,48.85,,,,,,,,,,
75114-P-011,ENUM,75114,,,personne,true,10,,,,,,,,,200,21920044100018,2.35,48.85,,,,,,,,,,
75114-P-012,ENTIER,75114,,,tous,true,dix,,,,,,,,,200,21920044100018,2.35,48.85,,,,,,,,,,
75114-P-013,,75114,,,tous,true,10,,,,,,,,,200,21920044100018,2.35,48.85,,,,,,,,,,
75114-P-010,DOUBLON,75114,,,tous,true,10,,,,,,,,,200,21920044100018,2.35,48.85,,,,,,,,,,
75114-P-014,HORS,75114,,,tous,true,10,,,,,,,,,200,21920044100018,2.35,148.85,,,,,,,,,,
75114-P-015,COURT,75114
"""  # noqa: E501


async def test_a_bad_file_is_refused_with_a_precise_report_and_changes_nothing(
    db: asyncpg.Connection, tmp_path: Path
) -> None:
    await load(db, STATIONNEMENT_CSV, "parkings", schema=STATIONNEMENT, create=True)
    before = await snapshot(db, "parkings")
    meta_before = await db.fetchrow("SELECT row_count, modified_at FROM dataset")
    bad = tmp_path / "bad.csv"
    bad.write_text(BAD_PARKINGS, encoding="utf-8")
    with pytest.raises(ImportFailedError) as info:
        await load(db, bad, "parkings")
    report = info.value.report
    assert report["status"] == "failed"
    found = [(e["line"], e["column"], e["code"]) for e in report["errors"]]
    assert found == [
        (3, "type_usagers", "constraint-error"),
        (4, "nb_places", "type-error"),
        (5, "nom", "constraint-error"),
        (6, "id", "primary-key"),
        (7, "Ylat", "constraint-error"),
        (8, None, "missing-cell"),
    ]
    reasons = {e["line"]: e["reason"] for e in report["errors"]}
    assert reasons[3] == "'personne' is not one of: tous, abonnés"
    assert reasons[4] == "'dix' is not an integer"
    assert reasons[5] == "a value is required"
    assert reasons[8] == "the row has 3 values, the header has 30"
    assert info.value.detail.startswith("6 error(s) in bad.csv; nothing was loaded")
    assert await snapshot(db, "parkings") == before
    assert tuple(await db.fetchrow("SELECT row_count, modified_at FROM dataset")) == tuple(meta_before)
    failed = await db.fetchrow("SELECT status, rows_read, report::text AS report FROM dataset_import WHERE id = $1",
                               report["import_id"])  # fmt: skip
    assert failed["status"] == "failed"
    assert failed["rows_read"] == 7
    assert json.loads(failed["report"])["errors"] == report["errors"]
    assert reasons[6] == "duplicate value of (id): already on line 2"
    assert await db.fetchval("SELECT count(*) FROM ingest_rejection") == 0


async def test_duplicates_inside_one_file_are_reported_with_both_lines(db: asyncpg.Connection, tmp_path: Path) -> None:
    await load(db, STATIONNEMENT_CSV, "parkings", schema=STATIONNEMENT, create=True, mode="replace")
    lines = BAD_PARKINGS.splitlines()
    dup = tmp_path / "dup.csv"
    dup.write_text("\n".join([lines[0], lines[1], lines[5]]), encoding="utf-8")
    with pytest.raises(ImportFailedError) as info:
        await load(db, dup, "parkings", mode="replace")
    assert info.value.report["errors"] == [
        {"line": 3, "column": "id", "code": "primary-key", "reason": "duplicate value of (id): already on line 2"}
    ]
    assert await db.fetchval(f"SELECT count(*) FROM {await table_of(db, 'parkings')}") == 2


async def test_skip_invalid_loads_good_rows_and_sets_the_others_aside(db: asyncpg.Connection, tmp_path: Path) -> None:
    await load(db, STATIONNEMENT_CSV, "parkings", schema=STATIONNEMENT, create=True)
    bad = tmp_path / "bad.csv"
    bad.write_text(BAD_PARKINGS, encoding="utf-8")
    report = await load(db, bad, "parkings", skip_invalid=True)
    assert report["status"] == "succeeded"
    assert (report["rows_read"], report["rows_inserted"], report["rows_rejected"]) == (7, 1, 6)
    table = await table_of(db, "parkings")
    assert await db.fetchval(f"SELECT nom FROM {table} WHERE id = '75114-P-010'") == "BON"
    rejected = await db.fetch("SELECT line, reason, payload, import_id, file FROM ingest_rejection ORDER BY line")
    assert [r["line"] for r in rejected] == [3, 4, 5, 6, 7, 8]
    assert rejected[0]["reason"] == "type_usagers: 'personne' is not one of: tous, abonnés"
    assert rejected[0]["payload"].startswith("75114-P-011,ENUM,")
    assert rejected[3]["reason"] == "duplicate value of (id): already on line 2"
    assert {r["import_id"] for r in rejected} == {report["import_id"]}
    assert {r["file"] for r in rejected} == {"bad.csv"}
    assert await db.fetchval("SELECT row_count FROM dataset") == 3
    status = await db.fetchval("SELECT status FROM dataset_import WHERE id = $1", report["import_id"])
    assert status == "succeeded"


async def test_a_failed_create_leaves_no_dataset(db: asyncpg.Connection, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(BAD_PARKINGS, encoding="utf-8")
    with pytest.raises(ImportFailedError):
        await load(db, bad, "parkings", schema=STATIONNEMENT, create=True)
    assert await db.fetchval("SELECT count(*) FROM dataset") == 0
    assert await db.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'datasets'") == 0


async def test_the_inferred_schema_checks_the_next_file(db: asyncpg.Connection, tmp_path: Path) -> None:
    first = tmp_path / "a.csv"
    first.write_text("code;mesure\nA;1,5\nB;2\n", encoding="utf-8")
    report = await load(db, first, "mesures", create=True)
    assert report["schema_inferred"] is True
    assert [f["type"] for f in report["table_schema"]["fields"]] == ["string", "number"]
    second = tmp_path / "b.csv"
    second.write_text("code;mesure\nC;beaucoup\n", encoding="utf-8")
    with pytest.raises(ImportFailedError) as info:
        await load(db, second, "mesures")
    assert info.value.report["errors"][0] == {
        "line": 2, "column": "mesure", "code": "type-error", "reason": "'beaucoup' is not a number"
    }  # fmt: skip


# --- dialects and reprojection ----------------------------------------------------------------------------


async def test_cp1252_lambert93_french_values_crlf_no_final_newline(db: asyncpg.Connection, tmp_path: Path) -> None:
    text = (
        "Nom;X;Y;Mise en service;Relevé;Accessible;Puissance\r\n"
        "Hôtel de Ville;652000;6862000;31/12/2021;27/03/2022 03:30;oui;22,5\r\n"
        "Gare d'Orléans;619000;6754000;01/01/2022;2022-10-30T02:30:00+01:00;Non;\r\n"
        "Mer;6862000;652000;01/01/2022;;non;3"
    )
    path = tmp_path / "l93.csv"
    path.write_bytes(text.encode("cp1252"))
    with pytest.raises(ImportFailedError) as info:
        await load(db, path, "bornes", create=True, crs="EPSG:2154")
    assert [(e["line"], e["column"], e["code"]) for e in info.value.report["errors"]] == [(4, "X,Y", "geometry-error")]
    assert "outside the CRS's area of use" in info.value.report["errors"][0]["reason"]
    report = await load(db, path, "bornes", create=True, crs="EPSG:2154", skip_invalid=True)
    assert report["dialect"] == {"format": "csv", "encoding": "cp1252", "delimiter": ";"}
    assert report["rows_inserted"] == 2
    assert [(f["name"], f["type"]) for f in report["table_schema"]["fields"]] == [
        ("Nom", "string"), ("X", "integer"), ("Y", "integer"), ("Mise en service", "date"),
        ("Relevé", "datetime"), ("Accessible", "boolean"), ("Puissance", "number"),
    ]  # fmt: skip
    table = await table_of(db, "bornes")
    row = await db.fetchrow(
        f"""SELECT ST_X(geom) AS x, ST_Y(geom) AS y, "Mise en service"::text AS d, "Relevé" AS r,
                   "Accessible" AS a, "Puissance" AS p FROM {table} WHERE "Nom" = 'Hôtel de Ville'"""
    )
    assert (row["x"], row["y"]) == pytest.approx((2.3458, 48.8562), abs=1e-3)
    assert row["d"] == "2021-12-31"
    assert row["a"] is True
    assert row["p"] == 22.5
    assert row["r"].isoformat() == "2022-03-27T01:30:00+00:00"  # Paris summer time already
    orleans = await db.fetchrow(f"""SELECT "Relevé" AS r, "Puissance" AS p FROM {table} WHERE "Nom" LIKE 'Gare%'""")
    assert orleans["r"].isoformat() == "2022-10-30T01:30:00+00:00"
    assert orleans["p"] is None


# --- clean files: checked and converted in SQL ------------------------------------------------------------


async def rows_of(db: asyncpg.Connection, slug: str) -> list[str]:
    table = await table_of(db, slug)
    return [
        r[0]
        for r in await db.fetch(f"SELECT (to_jsonb(t) - '_fid' || jsonb_build_object('geom', ST_AsText(geom)))::text "
                                f"FROM {table} t ORDER BY _fid")
    ]  # fmt: skip


@pytest.mark.parametrize(
    "name", ["ecocompteur_loire_measure.csv", "ecocompteur_loire_site.csv", "meteofrance_MN_07_precip_6min.csv",
             "paris_sanisettes.csv", "irve_consolidation_extrait.csv"],
)  # fmt: skip
async def test_set_based_path_gives_the_same_rows_as_the_per_row_path(db: asyncpg.Connection, name: str) -> None:
    fast = await load(db, CSV / name, "fast", create=True)
    slow = await load(db, CSV / name, "slow", create=True, set_based=False)
    assert fast["timings"]["set_based"] == 1
    assert "set_based" not in slow["timings"]
    assert fast["rows_inserted"] == slow["rows_inserted"] > 0
    assert await rows_of(db, "fast") == await rows_of(db, "slow")
    # Upsert of the same file through the staging table: nothing changes, lines are still right.
    again = await load(db, CSV / name, "fast", mode="append")
    assert again["timings"]["set_based"] == 1
    assert again["rows_inserted"] == fast["rows_inserted"]


async def test_set_based_path_keeps_text_and_instants_and_falls_back_on_doubt(
    db: asyncpg.Connection, tmp_path: Path
) -> None:
    report = await load(db, CSV / "paris_sanisettes.csv", "child", create=True)
    assert report["timings"]["set_based"] == 1
    assert report["rows_inserted"] == 615
    x, y = await point(db, "child", "\"ADRESSE\" = '92102  RUE BLOMET'")
    assert (x, y) == pytest.approx((2.300280980817689, 48.84090598651907), abs=1e-12)
    table = await table_of(db, "child")
    # Text with the COPY format's special characters survives the trip; blank lines and a cell on two lines keep
    # the line numbers right.
    tricky = tmp_path / "tricky.csv"
    tricky.write_text(
        'id;texte;quand;ok\n1;"tab\there\\back";2024-03-31T02:30:00+02:00;oui\n\n2;"deux\nlignes";;non\n'
        "3;  ;2024-10-27 05:30:00;1\n3;x;2024-10-28T02:30;0\n"
    )
    schema = tmp_path / "tricky.json"
    schema.write_text(
        '{"fields": [{"name": "id", "type": "integer"}, {"name": "texte"}, {"name": "quand", "type": "datetime"},'
        ' {"name": "ok", "type": "boolean"}, {"name": "v", "type": "number"}, {"name": "t", "type": "datetime"}],'
        ' "primaryKey": "id"}'
    )
    with pytest.raises(ImportFailedError) as info:
        await load(db, tricky, "tricky", create=True, schema=schema)
    assert [(e["line"], e["code"]) for e in info.value.report["errors"]] == [(7, "primary-key")]
    assert "already on line 6" in info.value.report["errors"][0]["reason"]
    report = await load(db, tricky, "tricky", create=True, skip_invalid=True, schema=schema)
    assert report["timings"]["set_based"] == 1
    rows = await db.fetch(f"SELECT texte, quand, ok FROM {await table_of(db, 'tricky')} ORDER BY id")
    assert [r["texte"] for r in rows] == ["tab\there\\back", "deux\nlignes", None]
    assert rows[0]["quand"].isoformat() == "2024-03-31T00:30:00+00:00"
    assert rows[2]["quand"].isoformat() == "2024-10-27T04:30:00+00:00"
    assert [r["ok"] for r in rows] == [True, False, True]
    assert await db.fetchval(f"SELECT count(*) FROM {table}") == 615
    lenient = tmp_path / "lenient.csv"  # read as 00:00 by PostgreSQL, refused by Python: refused here too
    lenient.write_text("id;t\n1;2024-01-01T00:00:00+01:00\n2;2024-01-01T 0:00:00+01:00\n")
    with pytest.raises(ImportFailedError) as info:
        await load(db, lenient, "lenient", create=True, schema=schema)
    assert [(e["line"], e["column"]) for e in info.value.report["errors"]] == [(3, "t")]
    naive = tmp_path / "naive.csv"  # local times, read in Europe/Paris
    naive.write_text("id;t\n1;2024-06-01 12:00:00\n2;2024-12-01T12:00\n")
    report = await load(db, naive, "naive", create=True, schema=schema)
    assert report["timings"]["set_based"] == 1
    instants = await db.fetch(f"SELECT t FROM {await table_of(db, 'naive')} ORDER BY id")
    assert [r["t"].isoformat() for r in instants] == ["2024-06-01T10:00:00+00:00", "2024-12-01T11:00:00+00:00"]
    # Cells SQL does not vouch for (an ambiguous local time, hour 24, a decimal with a space): the per-row path
    # decides, as it always did.
    doubt = tmp_path / "doubt.csv"
    doubt.write_text("id;t\n1;2024-10-27 02:30:00\n")
    report = await load(db, doubt, "ambiguous", create=True, schema=schema)
    assert report["timings"]["set_based"] == 0
    quand = await db.fetchval(f"SELECT t FROM {await table_of(db, 'ambiguous')}")
    assert quand.isoformat() == "2024-10-27T00:30:00+00:00"  # the first (summer time) of the two 02:30
    # PostgreSQL would read "T 0:00" and "0." as a time: neither passes the shape checks.
    doubt.write_text(
        "id;v;t\n1;1,5;2024-01-01T00:00:00+01:00\n2;2, 5;2024-01-01T24:00:00+01:00\n"
        "3;1;2024-01-01T 0:00:00+01:00\n4;1;2024-01-01T00:00:0.+01:00\n"
    )
    with pytest.raises(ImportFailedError) as info:
        await load(db, doubt, "doubt", create=True, schema=schema)
    assert [(e["line"], e["column"]) for e in info.value.report["errors"]] == [(3, "v"), (3, "t"), (4, "t"), (5, "t")]
    assert info.value.report["timings"]["set_based"] == 0

    await load(db, STATIONNEMENT_CSV, "parkings", schema=STATIONNEMENT, create=True)
    bad = tmp_path / "bad.csv"
    bad.write_text(BAD_PARKINGS, encoding="utf-8")
    with pytest.raises(ImportFailedError) as per_row:
        await load(db, bad, "parkings", mode="replace", set_based=False)
    with pytest.raises(ImportFailedError) as tried_in_sql:
        await load(db, bad, "parkings", mode="replace")
    assert tried_in_sql.value.report["errors"] == per_row.value.report["errors"]
    assert len(tried_in_sql.value.report["errors"]) == 6
    assert await db.fetchval(f"SELECT count(*) FROM {await table_of(db, 'parkings')}") == 2


NATIVE_SCHEMA = {
    "fields": [
        {"name": "id", "type": "integer", "constraints": {"required": True}},
        {"name": "name", "type": "string", "constraints": {"maxLength": 8}},
        {"name": "category", "type": "string", "constraints": {"enum": ["a", "b"]}},
        {"name": "lon", "type": "number", "constraints": {"minimum": -180, "maximum": 180}},
        {"name": "lat", "type": "number"},
        {"name": "value", "type": "number"},
        {"name": "day", "type": "date"},
        {"name": "at", "type": "datetime"},
    ],
    "primaryKey": ["id"],
}


async def test_native_path_copies_plain_cells_straight_into_the_table(db: asyncpg.Connection, tmp_path: Path) -> None:
    """Cells already in PostgreSQL's input forms go straight into the typed table: same rows as the per-row path;
    any doubt (a constraint, spaces only, a half point, a quote) sends the file to the slower paths, same reports."""
    schema = tmp_path / "native.json"
    schema.write_text(json.dumps(NATIVE_SCHEMA))
    clean = tmp_path / "clean.csv"
    header = "id;name;category;lon;lat;value;day;at\n"
    clean.write_text(
        header + "1;un;a;2,35;48,85;12,5;2024-01-31;2024-03-31T02:30:00+02:00\n2;;;;;-0,25;;\n"
        "3;trois;b;-1,5;47,2;1e3;2024-02-29;2024-10-27 05:30:00Z\n"
    )
    fast = await load(db, clean, "native", create=True, schema=schema)
    slow = await load(db, clean, "careful", create=True, schema=schema, set_based=False)
    assert fast["timings"].get("native") == 1
    assert fast["rows_inserted"] == slow["rows_inserted"] == 3
    assert await rows_of(db, "native") == await rows_of(db, "careful")
    # A replace of the same file: the table already has its one dropped column (the point's), so the text-staging
    # path loads it, and dropped columns never pile up.
    again = await load(db, clean, "native", mode="replace", schema=schema)
    assert "native" not in again["timings"] and again["timings"]["set_based"] == 1
    assert await rows_of(db, "native") == await rows_of(db, "careful")
    table = await table_of(db, "native")
    assert (
        await db.fetchval(f"SELECT count(*) FROM pg_attribute WHERE attrelid = '{table}'::regclass AND attisdropped")
        <= 1
    )

    bad_rows = [
        "4;toolongname;a;1;1;1;;\n",  # maxLength
        "4;x;c;1;1;1;;\n",  # enum
        "4;   ;a;1;1;1;;\n",  # spaces only: missing for the careful path
        "4;x;a;1;;1;;\n",  # half a point
        "4;x;a;200;1;1;;\n",  # minimum/maximum and area of use
        ";x;a;1;1;1;;\n",  # required
        "4;x;a;1;1;1;31/01/2024;\n",  # a date PostgreSQL would read with its DateStyle
        "4;x;a;1;1;1;;2024-01-01T00:00:00\n",  # a local time: the time zone decides
    ]
    for n, row in enumerate(bad_rows):
        bad = tmp_path / f"bad{n}.csv"
        bad.write_text(header + "1;un;a;2,35;48,85;12,5;2024-01-31;\n" + row)
        outcomes = []
        for set_based in (True, False):
            try:
                report = await load(db, bad, f"b{n}-{int(set_based)}", create=True, schema=schema, set_based=set_based)
            except ImportFailedError as exc:
                report = exc.report
            assert "native" not in report["timings"], row
            outcomes.append((report["errors"], report.get("rows_inserted")))
        assert outcomes[0] == outcomes[1], row


async def test_native_path_reprojects_lambert93_as_the_careful_path(db: asyncpg.Connection, tmp_path: Path) -> None:
    schema = tmp_path / "l93.json"
    schema.write_text(
        json.dumps({"fields": [{"name": "id", "type": "integer"}, {"name": "x", "type": "number"},
                               {"name": "y", "type": "number"}], "primaryKey": ["id"]})
    )  # fmt: skip
    path = tmp_path / "l93.csv"
    path.write_text("id;x;y\n1;652000,5;6862000\n2;619000;6754000,25\n3;;\n")
    fast = await load(db, path, "l93-native", create=True, schema=schema, crs="EPSG:2154")
    slow = await load(db, path, "l93-careful", create=True, schema=schema, crs="EPSG:2154", set_based=False)
    assert fast["timings"].get("native") == 1
    points = []
    for slug in ("l93-native", "l93-careful"):
        table = await table_of(db, slug)
        points.append(
            [tuple(r) for r in await db.fetch(f"SELECT x, y, ST_X(geom), ST_Y(geom) FROM {table} ORDER BY id")]
        )
    assert points[0][2] == points[1][2] == (None, None, None, None)
    for native, careful in zip(points[0][:2], points[1][:2], strict=True):
        assert native == pytest.approx(careful, abs=1e-9)
    assert fast["rows_inserted"] == slow["rows_inserted"] == 3
    # Outside the area of use (x and y swapped): the same report as the careful path's.
    path.write_text("id;x;y\n1;652000;6862000\n2;6862000;652000\n")
    reports = []
    for set_based in (True, False):
        with pytest.raises(ImportFailedError) as info:
            await load(db, path, f"l93-bad-{int(set_based)}", create=True, schema=schema, crs="EPSG:2154",
                       set_based=set_based)  # fmt: skip
        assert "native" not in info.value.report["timings"]
        reports.append(info.value.report["errors"])
    assert reports[0] == reports[1] and reports[0][0]["line"] == 3
