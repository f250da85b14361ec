"""Units of the MQTT receive-updates bridge: notifications, $select topics, what a changed column means."""

from __future__ import annotations

from territoire_data.sensorthings.events import (
    EntityEvent,
    SelectRegistry,
    changed_members,
    parse_entity_notification,
    parse_selection,
)
from territoire_data.sensorthings.model import BY_NAME


def test_entity_notifications_parse() -> None:
    assert parse_entity_notification("Thing|C|1,2") == EntityEvent("Thing", "C", ("1", "2"))
    assert parse_entity_notification("Thing|U|3:name properties") == EntityEvent("Thing", "U", ("3:name properties",))
    assert parse_entity_notification("thing_location|L|1:4") == EntityEvent("thing_location", "L", ("1:4",))
    assert parse_entity_notification("Observation|U|*") == EntityEvent("Observation", "U", None)


def test_selection_topics() -> None:
    selection = parse_selection("v1.1/Observations?$select=result,phenomenonTime")
    assert selection is not None
    assert (selection.path, selection.select) == ("v1.1/Observations", ("result", "phenomenonTime"))
    nested = parse_selection("v1.1/Datastreams(3)/Observations?$select=id")
    assert nested is not None and nested.path == "v1.1/Datastreams(3)/Observations"
    assert parse_selection("v1.1/Observations") is None  # no selection: the canonical topic
    assert parse_selection("v1.1/Observations?$filter=result gt 1") is None  # only $select topics
    assert parse_selection("v1.1/+/Observations?$select=result") is None  # a wildcard is no collection
    assert parse_selection("v1.1/Nothing?$select=result") is None
    assert parse_selection("v1.1/Observations?$select=re sult") is None
    assert parse_selection("v1.1/Observations?$select=nothing") is None
    assert parse_selection("v1.1/Things(1)/Datastreams?$select=name,Thing") is not None
    assert parse_selection("v1.1/Things(1)/Name?$select=name") is None
    assert parse_selection("other/Observations?$select=result") is None


def test_registry_follows_the_broker_log() -> None:
    registry = SelectRegistry("pre/", ["v1.1/Things?$select=name"], limit=4)
    assert [s.topic for s in registry.selections("v1.1/Things")] == ["v1.1/Things?$select=name"]
    log = "$SYS/broker/log/M/subscribe"
    registry.on_broker_log(log, "1795891749: client-a 1 pre/v1.1/Observations?$select=result")
    registry.on_broker_log(log, "1795891749: client-b 0 pre/v1.1/Observations?$select=result")
    registry.on_broker_log(log, "1795891749: client-c 1 elsewhere/v1.1/Observations?$select=result")  # not ours
    registry.on_broker_log(log, "1795891749: client-d 1 $share/g/pre/v1.1/Things?$select=id")
    assert [s.select for s in registry.selections("v1.1/Things")] == [("name",), ("id",)]
    assert [s.select for s in registry.selections("v1.1/Observations")] == [("result",)]
    unsubscribe = "$SYS/broker/log/M/unsubscribe"
    registry.on_broker_log(unsubscribe, "1795891750: client-a pre/v1.1/Observations?$select=result")
    assert registry.selections("v1.1/Observations")  # client-b still wants it
    registry.on_broker_log(unsubscribe, "1795891751: client-b pre/v1.1/Observations?$select=result")
    assert registry.selections("v1.1/Observations") == []
    # bounded: a client subscribing in a loop cannot grow it without end
    for i in range(5):
        registry.on_broker_log(log, f"1795891752: spam 0 pre/v1.1/Datastreams({i})/Observations?$select=id")
    assert sum(len(registry.selections(f"v1.1/Datastreams({i})/Observations")) for i in range(5)) == 2


def test_changed_columns_map_to_properties_and_parents() -> None:
    props, parents = changed_members(BY_NAME["Location"], {"geom", "location", "external_key"})
    assert [p.wire for p in props] == ["location"] and parents == []
    props, parents = changed_members(BY_NAME["Observation"], {"result_string", "result_number"})
    assert [p.wire for p in props] == ["result"]
    props, parents = changed_members(BY_NAME["Datastream"], {"thing_id", "dataset_id"})
    assert props == [] and [r.name for r in parents] == ["Thing"]
    props, _ = changed_members(BY_NAME["Observation"], {"phenomenon_time_end"})
    assert [p.wire for p in props] == ["phenomenonTime"]
