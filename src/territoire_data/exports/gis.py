"""GIS exports a city's GIS team opens directly: GeoPackage, FlatGeobuf and zipped Shapefile, written by GDAL.

GDAL is reached through pyogrio (its wheels carry GDAL with these drivers; Debian's GDAL 3.6 cannot write the
GeoParquet covering or read GeoParquet at all, so it is not relied on). Rows come from the same COPY pipeline
as GeoParquet (`stream._parquet_from_copy`'s blocks), are handed as Arrow record batches to `write_arrow` in a
worker thread through a queue of at most two batches, and GDAL writes them to a temporary file: memory stays
bounded by two blocks whatever the size of the dataset, the disk holds the file. The file (zipped, for the
Shapefile's .shp/.shx/.dbf/.prj/.cpg) is then streamed out and removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import shutil
import tempfile
import zipfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pyarrow as pa
from pyproj import CRS as ProjCRS

from territoire_data.db.params import Params
from territoire_data.exports.stream import PARQUET_BLOCK_BYTES, ExportQuery, _copy, _csv_block_to_table, parquet_schema


@dataclass(frozen=True)
class GisFormat:
    driver: str
    media_type: str
    extension: str  # of the download


GIS_FORMATS: dict[str, GisFormat] = {
    "gpkg": GisFormat("GPKG", "application/geopackage+sqlite3", "gpkg"),
    "fgb": GisFormat("FlatGeobuf", "application/vnd.flatgeobuf", "fgb"),
    "shapefile": GisFormat("ESRI Shapefile", "application/zip", "zip"),
}
SHAPEFILE_PARTS = (".shp", ".shx", ".dbf", ".prj", ".cpg")
_CHUNK = 1 << 20
_QUEUE_BATCHES = 2
# OGR layer geometry types by PostGIS type (anything else, or a mix, is "Unknown").
_LAYER_TYPES = {
    "Point",
    "LineString",
    "Polygon",
    "MultiPoint",
    "MultiLineString",
    "MultiPolygon",
    "GeometryCollection",
}


def _ogr_schema(schema: pa.Schema) -> pa.Schema:
    """Arrow types every OGR driver takes: times of day as text (OGR has no time type in GPKG/FlatGeobuf)."""
    fields = [pa.field(f.name, pa.string()) if pa.types.is_time(f.type) else f for f in schema]
    return pa.schema(fields)


def _batches(table: pa.Table, schema: pa.Schema) -> list[pa.RecordBatch]:
    columns = [c.cast(pa.string()) if pa.types.is_time(c.type) else c for c in table.columns]
    batches: list[pa.RecordBatch] = pa.Table.from_arrays(columns, schema=schema).to_batches()
    return batches


def _zip_shapefile(folder: Path, layer: str) -> Path:
    """The Shapefile's parts (.shp, .shx, .dbf, .prj, .cpg) in one zip, as GIS users exchange them."""
    archive = folder / f"{layer}.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        for part in sorted(folder.iterdir()):
            if part.suffix.lower() in SHAPEFILE_PARTS and part.stem == layer:
                zipped.write(part, arcname=part.name)
    return archive


async def write_gis(
    conn: asyncpg.Connection, export: ExportQuery, fmt: str, folder: Path, *, block_bytes: int = PARQUET_BLOCK_BYTES
) -> Path:
    """Write the export as a GeoPackage, a FlatGeobuf or a zipped Shapefile into `folder`; the file's path.

    The whole file is written before anything is sent, so a failure is an error status, not a cut download.
    """
    import pyogrio

    spec = GIS_FORMATS[fmt]
    schema, columns, transfer = parquet_schema(export, covering=False)
    schema = schema.remove_metadata()
    ogr_schema = _ogr_schema(schema)
    params = Params()
    where = export.where(params)
    sql = f"SELECT {columns} FROM {export.collection.source} t WHERE {where}{export.tail(params)}"
    collection = export.collection
    with_geometry = collection.has_geometry and not export.query.skip_geometry
    layer = collection.id[:60] or "donnees"
    target = folder / (f"{layer}.shp" if fmt == "shapefile" else f"{layer}.{spec.extension}")
    batches: queue.Queue[pa.RecordBatch | None] = queue.Queue(maxsize=_QUEUE_BATCHES)

    def feed() -> Iterator[pa.RecordBatch]:
        while (batch := batches.get()) is not None:
            yield batch

    options: dict[str, Any] = {}
    if with_geometry:
        geometry_type = collection.geometry_type if collection.geometry_type in _LAYER_TYPES else "Unknown"
        options |= {
            "geometry_name": "geometry",
            "geometry_type": geometry_type,
            "crs": ProjCRS.from_epsg(export.query.crs.srid).to_wkt(),
        }
    if fmt == "shapefile":
        options["encoding"] = "UTF-8"  # writes the .cpg, so QGIS and ArcGIS read accents right
    if fmt == "gpkg":
        # QGIS shows a GeoPackage layer's identifier and description (gpkg_contents) in its properties
        options["layer_options"] = {"IDENTIFIER": collection.title[:255], "DESCRIPTION": collection.description}
    if fmt == "fgb":
        # FlatGeobuf's packed R-tree cannot hold a feature without geometry: no index when some have none
        params_null = Params()
        nulls = await conn.fetchval(
            f"SELECT EXISTS (SELECT 1 FROM {collection.source} t WHERE ({export.where(params_null)}) "
            "AND t.geom IS NULL)",
            *params_null.values,
        )
        options["layer_options"] = {
            "TITLE": collection.title,
            "DESCRIPTION": collection.description,
            "SPATIAL_INDEX": "NO" if nulls or not with_geometry else "YES",
        }

    def write() -> None:
        reader = pa.RecordBatchReader.from_batches(ogr_schema, feed())
        pyogrio.write_arrow(reader, str(target), layer=layer, driver=spec.driver, **options)

    writer = asyncio.ensure_future(asyncio.to_thread(write))

    async def put(item: pa.RecordBatch | None) -> None:
        while True:
            if writer.done():
                writer.result()  # GDAL stopped: its error, not a hang
                return
            try:
                batches.put_nowait(item)
                return
            except queue.Full:
                await asyncio.sleep(0.01)

    async def convert(block: bytes) -> None:
        table = await asyncio.to_thread(_csv_block_to_table, block, transfer, schema)
        for batch in _batches(table, ogr_schema):
            await put(batch)

    finished = False
    try:
        buffer: list[bytes] = []
        held = 0
        async for chunk in _copy(conn, sql, params.values, format="csv"):
            buffer.append(chunk)
            held += len(chunk)
            if held >= block_bytes:
                await convert(b"".join(buffer))
                buffer, held = [], 0
        if buffer:
            await convert(b"".join(buffer))
        await put(None)
        await writer
        finished = True
    finally:
        if not finished:  # unblock the writer thread: drop what waits, then end its stream
            with contextlib.suppress(queue.Empty):
                while True:
                    batches.get_nowait()
            with contextlib.suppress(queue.Full):
                batches.put_nowait(None)
            with contextlib.suppress(Exception):
                await writer
    if fmt == "shapefile":
        return await asyncio.to_thread(_zip_shapefile, folder, layer)
    return target


async def file_chunks(path: Path, folder: Path) -> AsyncIterator[bytes]:
    """A written file in 1 MiB chunks; its folder is removed once sent (or the download cut)."""
    try:
        with path.open("rb") as handle:
            while chunk := await asyncio.to_thread(handle.read, _CHUNK):
                yield chunk
    finally:
        await asyncio.to_thread(shutil.rmtree, folder, True)


def new_folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="td-gis-"))
