"""What the MQTT bridge publishes when SensorThings entities change (receive updates, section 14.2 of the standard).

The database tells what changed (migrations 0002_sta for new Observations, 0003_stagaps for the rest); this
module turns it into messages, each entity serialized as over HTTP and only if anonymous readers may see it
(`sql.visible_sql` with `ANONYMOUS`: restricted datasets are never published):
- a new entity: on its entity set (`v1.1/Things`) and on each navigation collection it joins
  (`v1.1/Things(1)/Datastreams`, `v1.1/Datastreams(1)/Observations`, and link ones such as `v1.1/Things(1)/Locations`);
- a changed entity: on `v1.1/Things(1)` (the whole entity) and, for each property that changed, on
  `v1.1/Things(1)/name` (`{"name": ...}`); a changed parent (a Datastream moved to another Thing) also publishes
  it on the new parent's collection;
- `$select` topics (`v1.1/Observations?$select=result,phenomenonTime`): an MQTT broker does not tell a client
  what others subscribed to, and a topic is matched as a string, so the bridge cannot publish every selection
  of every collection. It publishes the selections of a `SelectRegistry`: those configured
  (`TERRITOIRE_STA_MQTT_SELECT_TOPICS`) and those Mosquitto reports subscribers asking for (its `log_type
  subscribe` lines published on `$SYS/broker/log/M/subscribe` with `log_dest topic`, as our broker configuration
  does); a selection is published on the collection it was asked on, beside the full entity.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl

import asyncpg

from territoire_data.auth.policy import ANONYMOUS
from territoire_data.errors import BadRequestError
from territoire_data.sensorthings import read, sql
from territoire_data.sensorthings.model import BY_NAME, BY_PLURAL, ENTITY_TYPES, EntityType, Prop, Relation
from territoire_data.sensorthings.odata import parse_select

logger = logging.getLogger(__name__)

ENTITY_CHANNEL = "sta_entity"
SUBSCRIBE_LOG = "$SYS/broker/log/M/subscribe"
UNSUBSCRIBE_LOG = "$SYS/broker/log/M/unsubscribe"
# the id columns of the link tables, in the order the trigger sends them (migration 0003_stagaps)
LINK_COLUMNS = {
    "thing_location": ("thing_id", "location_id"),
    "location_historical_location": ("location_id", "historical_location_id"),
    "multi_datastream_observed_property": ("multi_datastream_id", "observed_property_id"),  # 0007_multids
}

Publish = Callable[[str, bytes], None]


@dataclass(frozen=True)
class EntityEvent:
    """One `sta_entity` notification: `kind` is an entity type or a link table; `items` None when too many."""

    kind: str
    op: str  # C created, U updated, L linked
    items: tuple[str, ...] | None


def parse_entity_notification(payload: str) -> EntityEvent:
    kind, _, rest = payload.partition("|")
    op, _, items = rest.partition("|")
    return EntityEvent(kind, op, None if items == "*" else tuple(i for i in items.split(",") if i))


# --- $select topics ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    topic: str  # the topic as subscribed (without our prefix), e.g. v1.1/Observations?$select=result
    path: str  # v1.1/Observations
    select: tuple[str, ...]


_LOG_LINE = re.compile(r"^(?:\d+: )?(?P<client>\S+) (?:(?P<qos>\d) )?(?P<topic>.+)$")


def parse_selection(topic: str) -> Selection | None:
    """`v1.1/<resource path>?$select=a,b` -> a Selection; anything else (other options, wildcards) -> None."""
    path, question, query = topic.partition("?")
    if not question or not path.startswith("v1.1/") or "+" in path or "#" in path:
        return None
    options = dict(parse_qsl(query, keep_blank_values=True))
    if set(options) != {"$select"}:
        return None
    try:
        select = parse_select(options["$select"])
        entity = _collection_entity(read.parse_resource_path(path.removeprefix("v1.1/")))
    except BadRequestError:
        return None
    known = {"id", "@iot.id", "@iot.selfLink", *entity.prop_by_wire, *entity.rel_by_name} if entity else set()
    if entity is None or not set(select) <= known:
        return None
    return Selection(topic, path, select)


def _collection_entity(segments: list[read.Segment]) -> EntityType | None:
    """The entity type of a collection path (`Things(1)/Datastreams` -> Datastream); None if it names none."""
    entity = BY_PLURAL.get(segments[0].name) if segments else None
    for seg in segments[1:]:
        rel = entity.rel_by_name.get(seg.name) if entity else None
        entity = BY_NAME[rel.target] if rel and rel.many else None
    return entity if segments and segments[-1].id is None else None


class SelectRegistry:
    """The `$select` topics to publish: configured ones, and those subscribers were seen asking for.

    Filled from the MQTT client's thread, read from the event loop: guarded by a lock. Bounded: past `limit`
    topics, new ones are refused (and logged), so a client subscribing in a loop cannot grow it without end.
    """

    def __init__(self, prefix: str, configured: list[str] | tuple[str, ...] = (), limit: int = 1000) -> None:
        self.prefix = prefix
        self.limit = limit
        self._lock = threading.Lock()
        self._clients: dict[str, set[str]] = {}  # topic -> client ids ("" for configured)
        self._by_path: dict[str, dict[str, Selection]] = {}
        for topic in configured:
            self.add(topic.strip(), "")

    def add(self, topic: str, client: str) -> bool:
        selection = parse_selection(topic)
        if selection is None:
            return False
        with self._lock:
            if topic not in self._clients and len(self._clients) >= self.limit:
                logger.warning("SensorThings MQTT: more than %d $select topics, %s not published", self.limit, topic)
                return False
            self._clients.setdefault(topic, set()).add(client)
            self._by_path.setdefault(selection.path, {})[topic] = selection
        return True

    def remove(self, topic: str, client: str) -> None:
        with self._lock:
            clients = self._clients.get(topic)
            if clients is None:
                return
            clients.discard(client)
            if not clients:
                del self._clients[topic]
                selection = parse_selection(topic)
                if selection is not None:
                    self._by_path.get(selection.path, {}).pop(topic, None)

    def on_broker_log(self, log_topic: str, line: str) -> None:
        """A Mosquitto `subscribe` / `unsubscribe` log line: `<time>: <client> [<qos>] <topic>`."""
        match = _LOG_LINE.match(line.strip())
        if match is None:
            return
        topic = match.group("topic")
        if topic.startswith("$share/"):  # a shared subscription: the group name, then the topic
            topic = topic.split("/", 2)[2] if topic.count("/") >= 2 else ""
        if not topic.startswith(self.prefix):
            return
        topic = topic.removeprefix(self.prefix)
        if log_topic.endswith("/unsubscribe"):
            self.remove(topic, match.group("client"))
        elif match.group("qos") is not None:
            self.add(topic, match.group("client"))

    def selections(self, path: str) -> list[Selection]:
        with self._lock:
            return list(self._by_path.get(path, {}).values())


# --- from rows to messages ---------------------------------------------------------------------------------


def collection_paths(entity: EntityType, row: asyncpg.Record) -> list[str]:
    """The collections a new entity joins: its entity set, and the parent collections of its foreign keys."""
    paths = [f"v1.1/{entity.plural}"]
    for parent in ENTITY_TYPES:
        for rel in parent.relations:
            if rel.kind == "child_fk" and rel.target == entity.name and row[rel.column] is not None:
                paths.append(f"v1.1/{parent.plural}({row[rel.column]})/{rel.name}")
    return paths


def parent_path(entity: EntityType, fk: Relation, row: asyncpg.Record) -> str | None:
    """The collection of the parent a foreign key points to (`Datastream.Thing` -> `Things(1)/Datastreams`)."""
    parent = BY_NAME[fk.target]
    for rel in parent.relations:
        if rel.kind == "child_fk" and rel.target == entity.name and rel.column == fk.column:
            return f"v1.1/{parent.plural}({row[fk.column]})/{rel.name}" if row[fk.column] is not None else None
    return None


def changed_members(entity: EntityType, columns: set[str]) -> tuple[list[Prop], list[Relation]]:
    """The properties and parent links whose columns are among `columns` (a row's changed columns)."""
    props: list[Prop] = []
    for prop in entity.props:
        names = {prop.column, prop.end_column, prop.geom}
        if prop.kind == "result":
            names |= {"result_number", "result_string", "result_boolean", "result_json"}
        if names & columns:
            props.append(prop)
    rels = [r for r in entity.relations if r.kind == "parent_fk" and r.column in columns]
    return props, rels


class EntityPublisher:
    """Reads the rows a notification names (visible to anonymous readers only) and publishes them."""

    def __init__(self, ctx: read.Context, publish: Publish, prefix: str, registry: SelectRegistry) -> None:
        self.ctx = ctx
        self.publish = publish
        self.prefix = prefix
        self.registry = registry
        self.published = 0

    async def visible_rows(
        self, conn: asyncpg.Connection, entity: EntityType, ids: list[int]
    ) -> dict[int, asyncpg.Record]:
        if not ids:
            return {}
        rows = await conn.fetch(
            f"SELECT {sql.select_list(entity, 'c')} FROM {entity.table} c "  # noqa: S608 - identifiers from the model
            f"WHERE c.id = ANY($1::bigint[]) AND {sql.visible_sql(entity, 'c', ANONYMOUS)} ORDER BY c.id",
            ids,
        )
        return {int(r["id"]): r for r in rows}

    def send_entity(self, entity: EntityType, row: asyncpg.Record, paths: list[str]) -> None:
        """The entity on each path, and its registered `$select` forms."""
        data = read.dumps(read.serialize(self.ctx, entity, row, ()))
        for path in paths:
            self.publish(self.prefix + path, data)
            for selection in self.registry.selections(path):
                self.publish(
                    self.prefix + selection.topic, read.dumps(read.serialize(self.ctx, entity, row, selection.select))
                )
        self.published += 1

    async def handle(self, conn: asyncpg.Connection, event: EntityEvent) -> int:
        """Publish what one notification tells; returns the number of entities published."""
        if event.items is None:
            logger.info("SensorThings MQTT: a statement changed too many %s rows to stream them", event.kind)
            return 0
        before = self.published
        if event.op == "C" and event.kind in BY_NAME:
            entity = BY_NAME[event.kind]
            rows = await self.visible_rows(conn, entity, [int(i) for i in event.items])
            for row in rows.values():
                self.send_entity(entity, row, collection_paths(entity, row))
        elif event.op == "U" and event.kind in BY_NAME:
            await self._updated(conn, BY_NAME[event.kind], event.items)
        elif event.op == "L" and event.kind in LINK_COLUMNS:
            await self._linked(conn, event.kind, event.items)
        return self.published - before

    async def _updated(self, conn: asyncpg.Connection, entity: EntityType, items: tuple[str, ...]) -> None:
        changed: dict[int, set[str]] = {}
        for item in items:
            raw_id, _, columns = item.partition(":")
            changed[int(raw_id)] = set(columns.split())
        rows = await self.visible_rows(conn, entity, list(changed))
        for entity_id, row in rows.items():
            props, parents = changed_members(entity, changed[entity_id])
            if not props and not parents:
                continue  # only columns outside the model changed (keys of the ingest registry, dataset)
            path = f"v1.1/{entity.plural}({entity_id})"
            moved = [p for p in (parent_path(entity, fk, row) for fk in parents) if p is not None]
            self.send_entity(entity, row, [path, *moved])
            for prop in props:
                self.publish(f"{self.prefix}{path}/{prop.wire}", read.dumps({prop.wire: read.prop_value(prop, row)}))

    async def _linked(self, conn: asyncpg.Connection, table: str, items: tuple[str, ...]) -> None:
        left, right = LINK_COLUMNS[table]
        pairs = [{left: int(a), right: int(b)} for a, _, b in (i.partition(":") for i in items)]
        for entity in ENTITY_TYPES:
            for rel in entity.relations:
                if rel.kind != "link" or rel.link_table != table:
                    continue
                target = BY_NAME[rel.target]
                owners = await self.visible_rows(conn, entity, sorted({p[rel.link_self] for p in pairs}))
                targets = await self.visible_rows(conn, target, sorted({p[rel.link_target] for p in pairs}))
                for pair in pairs:
                    owner, row = pair[rel.link_self], targets.get(pair[rel.link_target])
                    if owner in owners and row is not None:
                        self.send_entity(target, row, [f"v1.1/{entity.plural}({owner})/{rel.name}"])
