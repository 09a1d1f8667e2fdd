"""Where an ABIDModel's ABID comes from: the class attributes naming each part's source.

Each of ``abid_ts_src``, ``abid_uri_src``, ``abid_subtype_src`` and
``abid_rand_src`` is an attribute name or a function of the instance. They
are read on every insert and update, so a class whose sources cannot be read
(a misspelt field, a prefix of the wrong shape) is refused when it is
registered, naming the attribute, rather than on its first save.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import peewee

from . import _abid as abids
from ._errors import InvalidABID, ValidationError, shown

#: A source of an ABID part: an attribute name, or a function of the instance.
ABIDSource = str | Callable[[Any], Any]

#: The parts made from sources, and the class attribute that names each one's source.
SOURCES = (
    ("ts", "abid_ts_src"),
    ("uri", "abid_uri_src"),
    ("subtype", "abid_subtype_src"),
    ("rand", "abid_rand_src"),
)


def source_value(model: type[peewee.Model], instance: Any, source: ABIDSource) -> Any:
    """A source's value in the form a round trip through the file gives it.

    A foreign key set as a hex string and the same key read back as a UUID
    must give the same ABID, or every later save would look like drift.
    """
    if callable(source):
        return source(instance)
    value = getattr(instance, source)
    field = model._meta.combined.get(source)
    if field is None or value is None:
        return value
    try:
        return field.python_value(value)
    except (TypeError, ValueError, AttributeError, OverflowError) as exc:
        text = shown(value)
        text = text if len(text) <= 80 else text[:77] + "..."
        raise ValidationError(
            f"{model.__name__}.{source}: {text} is not a valid {type(field).__name__} value ({exc})"
        ) from None


def check_sources(model: type[peewee.Model], new_uuid: Callable[[], Any]) -> None:
    """Refuse a class whose ABIDs could not be made: say which attribute is wrong, and how.

    ``new_uuid`` is ABIDModel's own ``new_id``: a class that keeps it must have
    a primary key that holds a UUID, not an integer (``id = AutoField()``).
    """
    name = model.__name__
    pk = model._meta.primary_key
    new_id = getattr(model, "new_id", None)
    keeps_uuids = getattr(new_id, "__func__", None) is getattr(new_uuid, "__func__", new_uuid)
    if keeps_uuids and isinstance(pk, peewee.IntegerField):
        raise ValidationError(
            f"{name}.{pk.name} is an {type(pk).__name__}, but {name}.new_id() makes UUIDs: "
            "keep ABIDModel's UUID id, or override new_id() to return what it holds"
        )
    abid = model._meta.fields.get("abid")
    unique_index = any(
        isinstance(index, tuple) and tuple(index[0]) == ("abid",) and index[1]
        for index in model._meta.indexes
    )
    if abid is None or not (abid.unique or abid.primary_key or unique_index):
        raise ValidationError(
            f"{name}.abid must be unique (peewee's unique=True, as ABIDModel's): "
            "each insert relies on it to draw a new ABID when one is taken"
        )
    prefix = getattr(model, "abid_prefix", None)
    try:
        abids.ABID.parse("0" * 26, prefix=prefix)  # a bare suffix: checks the prefix alone
    except InvalidABID as exc:
        raise ValidationError(f"{name}.abid_prefix: {exc}") from None
    salt = getattr(model, "abid_salt", None)
    if not isinstance(salt, str):
        raise ValidationError(f"{name}.abid_salt must be a str, got {type(salt).__name__}")
    for part, attribute in SOURCES:
        source = getattr(model, attribute, None)
        if callable(source):
            continue
        if type(source) is not str:
            raise ValidationError(
                f"{name}.{attribute} must be the name of a field or attribute, or a function "
                f"of the instance, got {type(source).__name__}"
            )
        if not hasattr(model, source):
            raise ValidationError(
                f"{name}.{attribute} names {source!r}, which {name} has no field or "
                f"attribute of: the ABID {part} part could not be made"
            )


def storable(model: type[peewee.Model], abid: abids.ABID) -> str:
    """The text of a new ABID, refused (InvalidABID) if reading it back would fail.

    A 2-char subtype and the last 6 chars of a str rand are copied from their
    sources, as the original does: a ``_`` or an unprintable char there, or a
    rand that upper-casing made longer (``"ß"`` becomes ``"SS"``), gives an
    ABID that ``ABID.parse`` refuses. Stored, it would fail every later read
    of the record's ABID, and every update (drift is judged on it).
    """
    text = str(abid)
    tail = text[22:]  # the subtype and rand parts
    if len(tail) != 8 or "_" in tail or not tail.isprintable():
        try:
            abids.ABID.parse(text)
        except InvalidABID as exc:
            raise InvalidABID(
                f"{model.__name__}.ABID {text!r} could not be parsed back ({exc}); "
                "its subtype or rand source gave characters an ABID cannot hold"
            ) from None
    return text
