"""The models a store knows, by table and by the ref hooks name them with, and their relations."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator

import peewee

from ._capture import model_ref
from ._credentials import quoted
from ._errors import ValidationError
from ._m2m import Relation


class Registry:
    """tokenstore's own models and the application's registered ones.

    A process claims change events only of tables it has a model for, or
    that join two models of which it knows at least one: an event of an
    application table that the ``tokenstore`` command was not told about
    (``--app``) waits for a process that knows it.
    """

    def __init__(self, models: tuple[type[peewee.Model], ...]) -> None:
        self._by_table: dict[str, type[peewee.Model]] = {m._meta.table_name: m for m in models}
        self._relations: dict[str, Relation] = {}

    def __iter__(self) -> Iterator[type[peewee.Model]]:
        return iter(list(self._by_table.values()))

    def tables(self) -> tuple[str, ...]:
        return (*self._by_table, *self._relations)

    def for_table(self, table: str) -> type[peewee.Model] | None:
        return self._by_table.get(table)

    def knows(self, model: type[peewee.Model]) -> bool:
        """Whether ``model`` itself (not another class on its table) is registered."""
        return self._by_table.get(model._meta.table_name) is model

    def add(self, model: type[peewee.Model]) -> bool:
        """Know ``model``; False if it was known already. Refuses a table taken by another."""
        table = model._meta.table_name
        known = self._by_table.get(table)
        if known is None:
            _check_table(model, model_ref(model))
            self._check_ref(model)
            for other, owner in self._by_table.items():
                if other.lower() == table.lower():  # SQLite's names ignore case
                    raise ValidationError(
                        f"table {table!r} of {model_ref(model)} and table {other!r} of "
                        f"{model_ref(owner)} differ only in case, which SQL does not always "
                        "tell apart (SQLite never does); give one of them another table_name"
                    )
        if known is not None and known is not model:
            raise ValidationError(
                f"table {table!r} already belongs to {model_ref(known)}; "
                f"cannot register {model_ref(model)} for it"
            )
        relation = self._relations.get(table)
        if relation is not None:
            raise ValidationError(
                f"table {table!r} is the join table of a relation of "
                f"{' and '.join(model_ref(s.model) for s in relation.sides)}; its changes are "
                f"captured as theirs, so {model_ref(model)} cannot be registered for it"
            )
        self._by_table[table] = model
        return known is None

    def _check_ref(self, model: type[peewee.Model]) -> None:
        """Refuse a second model with the ref of one known: hooks could not tell them apart.

        A hook names its model by ``module.ClassName``, and the triggers of its
        table open for the hooks of that ref: two classes of one name in one
        module (one redefined), or a class put in the ``tokenstore`` module,
        would each fire the other's hooks.
        """
        ref = model_ref(model)
        for other in self._by_table.values():
            if model_ref(other) == ref:
                raise ValidationError(
                    f"{ref} (table {model._meta.table_name!r}) has the ref of the model already "
                    f"registered for table {other._meta.table_name!r}: hooks name a model by "
                    "module.ClassName, so they could not tell the two apart; rename one class"
                )

    def remove(self, model: type[peewee.Model]) -> None:
        """Forget ``model``, and the relations that no registered model is left on."""
        self._by_table.pop(model._meta.table_name, None)
        for table, relation in list(self._relations.items()):
            if not any(self.knows(side.model) for side in relation.sides):
                del self._relations[table]

    def check_relations(self, relations: Iterable[Relation]) -> None:
        """Refuse relations whose join table is a registered model's, or another relation's.

        Two ``ManyToManyField`` between the same two models, each without a
        through model of its own, get one table (peewee names it after the
        models): its rows cannot be told apart, so neither could be captured.
        """
        known = dict(self._relations)
        for relation in relations:
            _check_table(relation.through, f"the join table of {' / '.join(relation.fields())}")
            model = self._by_table.get(relation.table)
            if model is not None:
                raise ValidationError(
                    f"table {relation.table!r} belongs to {model_ref(model)}; it cannot also be "
                    f"the join table of {' and '.join(model_ref(s.model) for s in relation.sides)}"
                )
            other = known.setdefault(relation.table, relation)
            if other.fields() != relation.fields():
                raise ValidationError(
                    f"table {relation.table!r} would be the join table of both "
                    f"{' / '.join(other.fields())} and {' / '.join(relation.fields())}; "
                    "give each ManyToManyField a through_model of its own"
                )

    def add_relation(self, relation: Relation) -> None:
        """Know a join table (one side at least is registered); see ``check_relations``."""
        self.check_relations([relation])
        self._relations[relation.table] = relation

    def relations_of(self, model: type[peewee.Model]) -> list[Relation]:
        """The known relations that ``model`` is a side of."""
        return [r for r in self._relations.values() if any(s.model is model for s in r.sides)]

    def relation_for(self, table: str) -> Relation | None:
        return self._relations.get(table)

    def for_ref(
        self, ref: str | type[peewee.Model], unlisted: tuple[type[peewee.Model], ...] = ()
    ) -> type[peewee.Model]:
        """The registered model a hook's ``ref`` names; unknown refs list the known ones.

        ``unlisted`` models are left out of that list: the caller refuses them anyway.
        """
        if isinstance(ref, type):
            wanted = model_ref(ref)
        elif isinstance(ref, str):
            wanted = ref
        else:
            raise ValidationError(
                f"a hook's ref must be a model class or its 'module.ClassName', "
                f"got {type(ref).__name__}"
            )
        for model in self._by_table.values():
            if model_ref(model) == wanted:
                return model
        refs = sorted(model_ref(m) for m in self._by_table.values() if m not in unlisted)
        meant = _meant(wanted, refs)
        module = wanted.rpartition(".")[0]
        app = "a module's models with --app MODULE"
        if meant is not None:
            guess = f" (did you mean {meant!r}? a ref is 'module.ClassName')"
        elif module:  # a module the command can import, whose model is not registered
            guess, app = "", f"its module's models with --app {module}"
        else:
            guess = " (a ref is 'module.ClassName')"
        raise ValidationError(
            f"unknown model ref {quoted(wanted)}{guess}; registered models: {', '.join(refs)} "
            f"(register the model with store.register(Model) first; the tokenstore command "
            f"registers {app})"
        )


def _meant(wanted: str, refs: list[str]) -> str | None:
    """The one ref that ``wanted`` names by its class name alone, in another case, or with a
    letter wrong (``User``, ``user``, ``models.User``, ``Usr`` for ``tokenstore.User``)."""
    by_class: dict[str, list[str]] = {}
    for ref in refs:
        by_class.setdefault(ref.rpartition(".")[2].casefold(), []).append(ref)
    same = [ref for ref in refs if ref.casefold() == wanted.casefold()]
    name = wanted.rpartition(".")[2].casefold()
    close = difflib.get_close_matches(name, list(by_class), n=1, cutoff=0.8)
    found = same or by_class.get(name) or (by_class[close[0]] if close else [])
    return found[0] if len(found) == 1 else None


#: The prefix of tokenstore's own tables and views (the change events, the listeners, ...).
NAMESPACE = "tokenstore_"


#: The prefix SQLite keeps for its own tables: it refuses to create one named so.
SQLITE_PREFIX = "sqlite_"


def _check_table(model: type[peewee.Model], what: str) -> None:
    """Refuse a table that capture cannot watch, before anything is written.

    Its own rules below; and no name may hold NUL, nor two fields share a column
    (the table could not even be created).

    Named like tokenstore's own, capture would loop or lie: triggers on the
    event table would record events about events without end; on the
    listener table, every registration would become a change. Named like
    SQLite's own, SQLite refuses to create it, and so such a model could not
    move between the backends. In a schema of its own (``Meta.schema``), its
    events could not say which table they came from: events, claims and
    triggers name a table by its name alone, in the store's own schema.
    """
    table = model._meta.table_name
    if table.lower().startswith(NAMESPACE):
        raise ValidationError(
            f"table {table!r} of {what} is named like tokenstore's own tables "
            f"({NAMESPACE}*); give it another table_name"
        )
    if table.lower().startswith(SQLITE_PREFIX):
        raise ValidationError(
            f"table {table!r} of {what} is named like SQLite's own tables "
            f"({SQLITE_PREFIX}*), which SQLite refuses to create; give it another table_name"
        )
    if model._meta.schema is not None:
        raise ValidationError(
            f"table {table!r} of {what} is in schema {model._meta.schema!r} (Meta.schema); "
            "change capture knows a table by its name alone, in the store's own schema "
            "(SQLite has no schemas): leave Meta.schema unset"
        )
    if model._meta.temporary:
        raise ValidationError(
            f"table {table!r} of {what} is temporary (Meta.temporary): it would live in one "
            "connection only, where no trigger of the store's can watch it"
        )
    _check_columns(model, table, what)


def _check_columns(model: type[peewee.Model], table: str, what: str) -> None:
    """Refuse names no SQL statement can carry (NUL) and two fields on one column."""
    if "\0" in table:
        raise ValidationError(f"table {table!r} of {what}: a table name cannot hold NUL")
    owners: dict[str, str] = {}
    for field in model._meta.sorted_fields:
        column = field.column_name
        if "\0" in column:
            raise ValidationError(
                f"{model.__name__}.{field.name}: its column name {column!r} holds NUL, "
                "which no SQL name can"
            )
        other = owners.setdefault(column.lower(), field.name)  # SQLite ignores case here too
        if other != field.name:
            raise ValidationError(
                f"{model.__name__}.{other} and {model.__name__}.{field.name} are both on "
                f"column {column!r} of table {table!r} (SQLite's column names ignore case); "
                "give each field a column of its own"
            )
