"""The models a store knows, by table and by the ref hooks name them with."""

from __future__ import annotations

from collections.abc import Iterator

import peewee

from ._capture import model_ref
from ._errors import ValidationError


class Registry:
    """tokenstore's own models and the application's registered ones.

    A process claims change events only of tables it has a model for: an
    event of an application table that the ``tokenstore`` command was not
    told about (``--app``) waits for a process that knows it.
    """

    def __init__(self, models: tuple[type[peewee.Model], ...]) -> None:
        self._by_table: dict[str, type[peewee.Model]] = {m._meta.table_name: m for m in models}

    def __iter__(self) -> Iterator[type[peewee.Model]]:
        return iter(list(self._by_table.values()))

    def tables(self) -> tuple[str, ...]:
        return tuple(self._by_table)

    def for_table(self, table: str) -> type[peewee.Model] | None:
        return self._by_table.get(table)

    def add(self, model: type[peewee.Model]) -> bool:
        """Know ``model``; False if it was known already. Refuses a table taken by another."""
        table = model._meta.table_name
        known = self._by_table.get(table)
        if known is not None and known is not model:
            raise ValidationError(
                f"table {table!r} already belongs to {model_ref(known)}; "
                f"cannot register {model_ref(model)} for it"
            )
        self._by_table[table] = model
        return known is None

    def remove(self, model: type[peewee.Model]) -> None:
        self._by_table.pop(model._meta.table_name, None)

    def for_ref(self, ref: str | type[peewee.Model]) -> type[peewee.Model]:
        """The registered model a hook's ``ref`` names; unknown refs list the known ones."""
        wanted = model_ref(ref) if isinstance(ref, type) else str(ref)
        for model in self._by_table.values():
            if model_ref(model) == wanted:
                return model
        known = ", ".join(sorted(model_ref(m) for m in self._by_table.values()))
        raise ValidationError(
            f"unknown model ref {wanted!r}; registered models: {known} "
            "(the tokenstore command registers an application's models with --app MODULE)"
        )
