"""The demo territory: real open datasets (Nantes, Paris, Rennes, national files) and a day of sensor history.

Loaded by `territoire-data demo` (the quick start runs it); safe to run again. Live traffic then comes from
`territoire-data simulate` through the shipped MQTT connectors, like a city's own network servers.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from territoire_data.db.raw import connect_raw
from territoire_data.indicators import divisions
from territoire_data.indicators.compute import SYSTEM, process_dirty
from territoire_data.indicators.files import load_folder
from territoire_data.ingest.files.demo import load_demo_datasets
from territoire_data.ingest.model import RawMessage
from territoire_data.ingest.mqtt.config import ConnectorConfig, load_connector
from territoire_data.ingest.mqtt.process import make_sink, prepare_store
from territoire_data.ingest.mqtt.simulate import demo_devices, message
from territoire_data.paths import shipped
from territoire_data.settings import Settings

logger = logging.getLogger(__name__)

# The connectors that ingest the simulated traffic, by the topic root their messages use.
DEMO_CONNECTORS = {"application": "chirpstack-v4.yaml", "v3": "ttn-v3.yaml", "senml": "senml.yaml"}
HISTORY_STEP = timedelta(minutes=15)
# The demo's polygon datasets, declared territorial divisions (see demo/data/PROVENANCE.md for their sources).
DEMO_DIVISIONS = {
    "communes-nantes-metropole": divisions.DivisionDeclaration(
        level="commune", code_field="code", name_field="nom", attributes={"population": "population"}
    ),
    "quartiers-nantes": divisions.DivisionDeclaration(level="quartier", code_field="osm_id", name_field="name"),
}

# The producer named on the demo's sensor datasets, which the demo publishes at once (their metadata is complete).
DEMO_PRODUCER = "Territoire de démonstration (capteurs simulés, Nantes)"


@dataclass
class DemoReport:
    datasets: list[dict[str, Any]]
    sensor_messages: int
    observations: int
    indicators: list[dict[str, Any]]


def _history(hours: int, seed: int) -> dict[str, list[RawMessage]]:
    """The simulated traffic of the past `hours`, every device every quarter hour, grouped by topic root."""
    rng = random.Random(seed)  # noqa: S311 - demo values, reproducible on purpose
    devices = demo_devices(seed)
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    end -= timedelta(minutes=end.minute % 15)  # aligned, so running the demo again overwrites nothing twice
    moment = end - timedelta(hours=hours)
    grouped: dict[str, list[RawMessage]] = {root: [] for root in DEMO_CONNECTORS}
    while moment <= end:
        for device in devices:
            topic, payload = message(device, moment, rng)
            grouped[topic.split("/", 1)[0]].append(RawMessage(topic, payload))
        moment += HISTORY_STEP
    return grouped


async def _store_history(settings: Settings, config: ConnectorConfig, messages: list[RawMessage]) -> int:
    """Decode and store messages through the connector's own pipeline (same decoding, registration, writes)."""
    store = await prepare_store(settings, config)
    sink = make_sink(settings, config, store, None)
    stop = asyncio.Event()
    stored = 0
    try:
        for start in range(0, len(messages), 2000):
            outcome = await sink.store_prepared(sink.prepare(messages[start : start + 2000]), stop)
            if outcome is not None:
                stored += outcome.stored
    finally:
        await store.close()
    return stored


async def load_demo(settings: Settings, *, history_hours: int = 24, seed: int = 44) -> DemoReport:
    """Load the demo datasets, then the sensors' recent history through the MQTT connectors' pipeline."""
    datasets = await load_demo_datasets(settings)
    folder = shipped("connectors")
    observations = 0
    history = _history(history_hours, seed)
    for root, file in DEMO_CONNECTORS.items():
        config = load_connector(folder / file)
        dataset = config.dataset.model_copy(update={"publisher": config.dataset.publisher or DEMO_PRODUCER})
        config = config.model_copy(update={"dataset": dataset.model_copy(update={"publish": "auto"})})
        observations += await _store_history(settings, config, history[root])
    indicators = await _load_indicators(settings)
    return DemoReport(datasets, sum(len(m) for m in history.values()), observations, indicators)


async def _load_indicators(settings: Settings) -> list[dict[str, Any]]:
    """Declare the demo's divisions, load the shipped indicators (after the sensors: they name their quantities)
    and compute them."""
    conn = await connect_raw(settings, application_name="demo")
    try:
        async with conn.transaction():
            for slug, declaration in DEMO_DIVISIONS.items():
                await divisions.declare(conn, SYSTEM, slug, declaration)
        reports = await load_folder(conn, shipped("indicators"))
        computed = await process_dirty(conn)
        for item in computed.computed:
            logger.info(
                "indicator %s computed: %s values in %.0f ms", item.indicator, item.written, item.seconds * 1000
            )
    finally:
        await conn.close()
    return reports
