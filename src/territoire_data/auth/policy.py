"""The dataset access policy, in one place: every door asks it, none decides on its own.

A restricted dataset is served only to admins and grantees, a draft one (status 'draft', until it is published)
only to admins and those who may write it: to anyone else either answers 404 exactly like a dataset that does
not exist, and counts and extents do not include it.
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


def can_read(principal: Principal, dataset_id: int, access: str, status: str = "published") -> bool:
    """May this principal read the dataset? Published public datasets: everyone; restricted: admins and grantees;
    drafts: admins and those who may write them."""
    if principal.is_admin or dataset_id in principal.writable:
        return True
    return status == "published" and (access == "public" or dataset_id in principal.readable)


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
    condition = and_(table.c.status == "published", condition)
    if principal.writable:
        condition = or_(condition, table.c.id.in_(sorted(principal.writable)))
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
    return (
        f"({dataset_id_sql} IS NULL OR EXISTS (SELECT 1 FROM dataset d WHERE d.id = {dataset_id_sql} "
        f"AND {dataset_visible_sql(principal, 'd')}))"
    )


def dataset_visible_sql(principal: Principal, alias: str = "dataset") -> str:
    """A WHERE condition on the dataset table as SQL text (alias is the caller's own table alias)."""
    if principal.is_admin:
        return "TRUE"
    readable = ",".join(str(int(i)) for i in sorted(principal.readable))
    grant = f" OR {alias}.id IN ({readable})" if readable else ""
    writable = ",".join(str(int(i)) for i in sorted(principal.writable))
    writer = f" OR {alias}.id IN ({writable})" if writable else ""
    return f"(({alias}.status = 'published' AND ({alias}.access = 'public'{grant})){writer})"


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
