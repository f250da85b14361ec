"""Cost limits of a query (filters, expansions, sort keys), shared by every read door.

A request over one of them is refused before any SQL is made, with a 400 that names the limit, its value and the
setting that changes it. The parsers measure their trees without recursion, so no input can exhaust the stack.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, fields
from typing import Any

from territoire_data.errors import BadRequestError
from territoire_data.settings import ENV_PREFIX, Settings


class QueryLimitError(BadRequestError):
    """A query goes over a cost limit; says which parameter, which limit and its value."""

    title = "Query over a limit"
    type_slug = "query-limit"

    def __init__(self, parameter: str, what: str, found: int, limit_field: str, maximum: int) -> None:
        setting = ENV_PREFIX + limit_field.upper()
        super().__init__(
            f"{parameter}: {what} is {found}, more than the {maximum} allowed ({setting})",
            parameter=parameter,
            limit=setting,
            maximum=maximum,
        )


@dataclass(frozen=True)
class QueryLimits:
    """The limits in force; defaults match the settings' defaults (parsers used without settings get them)."""

    filter_max_nodes: int = 500
    filter_max_depth: int = 32
    filter_max_literal_length: int = 4096
    filter_max_coordinates: int = 5000
    sort_max_keys: int = 8
    sta_max_expand_depth: int = 4
    sta_max_expand_items: int = 20

    @classmethod
    def from_settings(cls, settings: Settings) -> QueryLimits:
        """Each limit is the setting of the same name (TERRITOIRE_ + its name in capitals)."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})

    def check(self, parameter: str, limit_field: str, what: str, found: int) -> None:
        """Raise QueryLimitError when `found` is over the limit named by the field `limit_field`."""
        maximum: int = getattr(self, limit_field)
        if found > maximum:
            raise QueryLimitError(parameter, what, found, limit_field, maximum)


DEFAULT_LIMITS = QueryLimits()

# The limits of the request being served: the app's middleware sets them from its settings for each request, so
# the parsers of every door (and of each request inside a SensorThings $batch) read the same values.
_CURRENT: ContextVar[QueryLimits] = ContextVar("query_limits", default=DEFAULT_LIMITS)


def current_limits() -> QueryLimits:
    """The limits in force for this request (the defaults outside one)."""
    return _CURRENT.get()


def use_limits(limits: QueryLimits) -> None:
    """Put `limits` in force for the rest of this context (one request)."""
    _CURRENT.set(limits)


# Keys whose value names something (an operator, a property, a geometry type) rather than being an operand.
_NAMING_KEYS = frozenset({"op", "property", "type"})


def check_json_tree(tree: Any, limits: QueryLimits, parameter: str) -> None:
    """Measure a CQL2-JSON tree iteratively and refuse it when it is over a limit: the compiler recurses over
    the tree, so its depth must be bounded first. Nodes are the objects and the literal operands (so `a = 1` is
    three, as in a SensorThings `$filter`); the numbers of geometries count as coordinates instead."""
    nodes = 0
    coordinates = 0
    stack: list[tuple[Any, int, bool]] = [(tree, 1, False)]
    while stack:
        node, depth, in_geometry = stack.pop()
        if isinstance(node, dict | list):
            # An object is one level; the `args` list under it is not another one, nested lists are.
            limits.check(parameter, "filter_max_depth", "the nesting depth", depth)
            children: list[Any]
            if isinstance(node, dict):
                nodes += 1
                in_geometry = in_geometry or "coordinates" in node or "bbox" in node
                children = []
                for key, value in node.items():
                    if key in _NAMING_KEYS and isinstance(value, str):
                        limits.check(parameter, "filter_max_literal_length", "the length of a name", len(value))
                    else:
                        children.append(value)
            else:
                children = node
            for child in children:
                deeper = isinstance(child, dict) or (isinstance(child, list) and isinstance(node, list))
                stack.append((child, depth + 1 if deeper else depth, in_geometry))
        elif in_geometry and isinstance(node, int | float):
            coordinates += 1
            limits.check(parameter, "filter_max_coordinates", "the number of coordinates", coordinates)
        else:
            nodes += 1
            if isinstance(node, str):
                limits.check(parameter, "filter_max_literal_length", "the length of a literal", len(node))
        limits.check(parameter, "filter_max_nodes", "the number of nodes", nodes)
