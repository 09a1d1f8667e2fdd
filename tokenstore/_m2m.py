"""Relations between models (peewee's ``ManyToManyField``) and how their changes are grouped.

A relation lives in a join table, the field's through model: one row per
related pair. Its triggers (see ``RelationSpec``) record every pair added as
an INSERT event of the join table and every pair removed as a DELETE event,
with both foreign keys, whoever wrote it: ``.add()``, ``.remove()``,
``.clear()``, the through model used directly, or plain SQL from any
process. This module knows which two models and fields a join table links,
and turns a claim's events back into relation changes, like Django's
``m2m_changed`` with its ``pk_set``.

Grouping: row triggers cannot see where one statement ends and the next
begins, so changes are grouped by what the events show. A *run* is a
sequence of consecutive events of one claim on the same join table with the
same operation; nothing else was recorded between them, so they may be told
as one. Within a run each side gets one change per instance it names, with
the other side's keys in the order they came. ``snapshot.tags.add(a, b)``
is one change for the snapshot ("add", {a, b}) and one for each tag ("add",
{snapshot}); two statements in a row that add to the same snapshot, with no
other captured change between, are one change. ``clear()`` and a shell
``DELETE`` are a "remove" of every pair they deleted; an UPDATE of a join
row is a "remove" of the old pair followed by an "add" of the new one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import peewee

from ._capture import CapturedColumn, ChangeEvent, RelationSpec
from ._errors import ValidationError
from ._rows import Converter, converter, holds_bytes

#: What a captured operation on a join table does to the relation.
ACTION_BY_OP = {"INSERT": "add", "DELETE": "remove"}


@dataclass(frozen=True)
class Side:
    """One end of a relation: a model, its field for the relation, its join-table column.

    ``field`` is None when the model has no field for the relation (a
    ``ManyToManyField`` declared with ``backref="+"``): that side hears nothing.
    """

    model: type[peewee.Model]
    field: str | None
    column: str
    convert: Converter


@dataclass(frozen=True)
class Relation:
    """A join table and the two sides it links, in the order of its foreign keys."""

    through: type[peewee.Model]
    sides: tuple[Side, Side]

    @property
    def table(self) -> str:
        return str(self.through._meta.table_name)

    @classmethod
    def of(cls, m2m: peewee.ManyToManyField) -> Relation:
        """The relation of a ``ManyToManyField`` (either its own field or its backref)."""
        through = m2m.through_model
        model, related = m2m.model, m2m.rel_model
        where = f"{model.__name__}.{m2m.name}"
        if model is related:
            raise ValidationError(
                f"{where}: a many-to-many relation of a model with itself cannot be captured"
            )
        keys = [f for f in through._meta.sorted_fields if isinstance(f, peewee.ForeignKeyField)]

        def side(end: type[peewee.Model], name: str | None) -> Side:
            found = [f for f in keys if f.rel_model is end]
            if not found:
                raise ValidationError(
                    f"{where}: its through model {through.__name__} has no foreign key "
                    f"to {end.__name__}"
                )
            if len(found) > 1:  # peewee cannot tell which is the relation's either
                raise ValidationError(
                    f"{where}: its through model {through.__name__} has {len(found)} foreign "
                    f"keys to {end.__name__} ({', '.join(f.name for f in found)}); a relation "
                    "is told by one key to each side"
                )
            fk = found[0]
            key = f"{through.__name__}.{fk.name}"
            if fk.rel_field is not end._meta.primary_key:
                raise ValidationError(
                    f"{where}: {key} refers to {end.__name__}.{fk.rel_field.name}, not its "
                    "primary key; relations are captured and told by primary key"
                )
            if holds_bytes(fk):
                raise ValidationError(
                    f"{where}: {key} is a BLOB, which the captured events (JSON) cannot hold"
                )
            return Side(end, name, fk.column_name, converter(fk))

        reverse = next(
            (
                f.name
                for f in related._meta.manytomany.values()
                if f.through_model is through and f is not m2m
            ),
            None,
        )
        mine, theirs = side(model, m2m.name), side(related, reverse)
        columns = [f.column_name for f in keys]
        ordered = columns.index(mine.column) < columns.index(theirs.column)
        return cls(through, (mine, theirs) if ordered else (theirs, mine))

    def fields(self) -> tuple[str, ...]:
        """The relation's fields, as ``Model.field``: what tells it from another on its table."""
        return tuple(f"{s.model.__name__}.{s.field}" for s in self.sides if s.field is not None)

    def spec(self, refs: tuple[str, ...]) -> RelationSpec:
        """What the join table's triggers record, gated on hooks of the sides ``refs`` name."""
        pk = self.through._meta.primary_key
        single = isinstance(pk, peewee.Field) and not isinstance(pk, peewee.CompositeKey)
        first, second = (
            CapturedColumn.of(self.through._meta.columns[s.column]) for s in self.sides
        )
        return RelationSpec(
            table=self.table,
            pk_column=pk.column_name if isinstance(pk, peewee.Field) and single else None,
            columns=(first, second),
            refs=refs,
        )


@dataclass(frozen=True)
class RelationChange:
    """One instance gained (``add``) or lost (``remove``) its relations to ``keys``.

    ``key`` and ``keys`` are primary keys as stored; ``event`` is the first
    event of the change (its id and time stand for the change).
    """

    relation: Relation
    side: Side
    other: Side
    action: str
    key: Any
    keys: tuple[Any, ...]
    event: ChangeEvent


@dataclass(frozen=True)
class RelationRun:
    """Consecutive events of one claim on one join table with one operation."""

    relation: Relation
    op: str
    events: list[ChangeEvent]

    def changes(self, registered: Callable[[type[peewee.Model]], bool]) -> list[RelationChange]:
        """One change per instance of each side that is ``registered`` and has a field."""
        found: list[RelationChange] = []
        first, second = self.relation.sides
        for side, other in ((first, second), (second, first)):
            if side.field is None or not registered(side.model):
                continue
            grouped: dict[Any, tuple[ChangeEvent, dict[Any, None]]] = {}
            for event in self.events:
                row = event.row
                key, related = row.get(side.column), row.get(other.column)
                if key is not None and related is not None:
                    grouped.setdefault(key, (event, {}))[1][related] = None
            found.extend(
                RelationChange(
                    self.relation, side, other, ACTION_BY_OP[self.op], key, tuple(keys), event
                )
                for key, (event, keys) in grouped.items()
            )
        return found


def runs(
    events: Iterable[ChangeEvent], relation_for: Callable[[str], Relation | None]
) -> Iterator[ChangeEvent | RelationRun]:
    """A claim's events in order, with the relation events gathered into runs."""
    run: RelationRun | None = None
    for event in events:
        relation = relation_for(event.table)
        if relation is not None and event.op in ACTION_BY_OP:
            if run is not None and run.relation is relation and run.op == event.op:
                run.events.append(event)
                continue
            if run is not None:
                yield run
            run = RelationRun(relation, event.op, [event])
            continue
        if run is not None:
            yield run
            run = None
        yield event
    if run is not None:
        yield run
