"""The dataset access policy, in one place: every door asks it, none decides on its own.

Until API keys exist, the only principal is anonymous and a restricted dataset is served nowhere: it answers
404 exactly like a dataset that does not exist, and counts and extents do not include it.
Sensor entities inherit the access of the dataset they belong to (thing.dataset_id, datastream.dataset_id);
an entity that belongs to no dataset is public.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, Table, and_, exists, or_, select, true

from territoire_data.db.tables import dataset


@dataclass(frozen=True)
class Principal:
    """Who is asking: anonymous, or a key or token with a role and grants (dataset ids)."""

    name: str = "anonymous"
    role: str | None = None
    key_id: int | None = None
    readable: frozenset[int] = field(default_factory=frozenset)
    writable: frozenset[int] = field(default_factory=frozenset)
    subject: str | None = None  # an OpenID Connect token's `sub` (its holder's stable id at the identity provider)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


ANONYMOUS = Principal()


def can_read(principal: Principal, dataset_id: int, access: str) -> bool:
    """May this principal read the dataset? Public datasets: everyone; restricted: admins and grantees."""
    return access == "public" or principal.is_admin or dataset_id in principal.readable


def can_write(principal: Principal, dataset_id: int | None) -> bool:
    """May this principal change the dataset (None: entities of no dataset, which only admins change)?"""
    if principal.is_admin:
        return True
    return principal.role == "publisher" and dataset_id is not None and dataset_id in principal.writable


def may_publish(principal: Principal) -> bool:
    """May this principal write at all (create datasets or entities, import files)?"""
    return principal.role in ("admin", "publisher")


def dataset_visible(principal: Principal, table: Table = dataset) -> ColumnElement[bool]:
    """A WHERE condition on the dataset table: the rows this principal may see."""
    if principal.is_admin:
        return true()
    condition = table.c.access == "public"
    if principal.readable:
        condition = or_(condition, table.c.id.in_(sorted(principal.readable)))
    return condition


def member_visible(principal: Principal, dataset_id_column: ColumnElement[int]) -> ColumnElement[bool]:
    """A WHERE condition for rows that belong to a dataset through `dataset_id_column` (null means public)."""
    if principal.is_admin:
        return true()
    return or_(
        dataset_id_column.is_(None),
        exists(select(dataset.c.id).where(and_(dataset.c.id == dataset_id_column, dataset_visible(principal)))),
    )


def member_visible_sql(principal: Principal, dataset_id_sql: str) -> str:
    """The same condition as SQL text, for the hand-written queries of the standards' packages.

    `dataset_id_sql` must be a column reference from the caller's own code (never user input); grants are
    integers from the database, so the text holds no user-supplied value.
    """
    if principal.is_admin:
        return "TRUE"
    readable = ",".join(str(int(i)) for i in sorted(principal.readable))
    grant = f" OR d.id IN ({readable})" if readable else ""
    return (
        f"({dataset_id_sql} IS NULL OR EXISTS (SELECT 1 FROM dataset d WHERE d.id = {dataset_id_sql} "
        f"AND (d.access = 'public'{grant})))"
    )


def dataset_visible_sql(principal: Principal, alias: str = "dataset") -> str:
    """A WHERE condition on the dataset table as SQL text (alias is the caller's own table alias)."""
    if principal.is_admin:
        return "TRUE"
    readable = ",".join(str(int(i)) for i in sorted(principal.readable))
    grant = f" OR {alias}.id IN ({readable})" if readable else ""
    return f"({alias}.access = 'public'{grant})"


def datastream_visible_sql(principal: Principal, alias: str) -> str:
    """A Datastream or MultiDatastream (alias: both have dataset_id and thing_id) is visible when its own dataset and
    its Thing's both are (as on /sta/v1.1)."""
    if principal.is_admin:
        return "TRUE"
    thing = f"{alias}_th"
    return (
        f"({member_visible_sql(principal, f'{alias}.dataset_id')} AND EXISTS (SELECT 1 FROM thing {thing} "
        f"WHERE {thing}.id = {alias}.thing_id AND {member_visible_sql(principal, f'{thing}.dataset_id')}))"
    )
