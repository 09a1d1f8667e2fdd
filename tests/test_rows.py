"""The row loader's shortcuts give what the fields themselves give."""

from __future__ import annotations

import gc
import pickle
import uuid
import weakref
from typing import Any

import peewee
import pytest

from tokenstore import Store
from tokenstore._errors import TokenstoreError
from tokenstore._models import APIToken, BaseModel
from tokenstore._rows import Loader, converter

HEX = "34d33d59f9ee4110b2fcd9268791df73"


@pytest.mark.parametrize(
    "raw",
    [
        HEX,
        HEX.upper(),
        "0" * 32,
        "f" * 32,
        "0x" + HEX[2:],  # int() and UUID(hex=) both take the prefix
        "_".join([HEX[:15], HEX[16:]]),
        " " + HEX[1:],
        "+" + HEX[1:],
        "-" + HEX[1:],  # negative: refused like UUID(hex=) refuses it
        "g" + HEX[1:],
        "{" + HEX[2:] + "}",
        "34d33d59-f9ee-4110-b2fc-d9268791df73",
        HEX[:31],
        None,
    ],
)
def test_uuid_column_reads_as_the_field_reads_it(raw: Any) -> None:
    field = APIToken._meta.fields["id"]
    fast = converter(field)
    try:
        expected = field.python_value(raw)
    except (ValueError, TypeError, TokenstoreError) as exc:
        with pytest.raises(type(exc)):
            fast(raw)
        return
    got = fast(raw)
    assert got == expected and type(got) is type(expected)
    if isinstance(got, uuid.UUID):
        assert got.is_safe is uuid.SafeUUID.unknown
        assert hash(got) == hash(expected) and str(got) == str(expected)
        assert pickle.loads(pickle.dumps(got)) == expected
        with pytest.raises(TypeError):
            got.int = 1  # type: ignore[misc]


def test_a_whole_row_reads_as_each_field_reads_its_value() -> None:
    row = (
        HEX,
        "apt_01M8MYA4AFA4101AAC01FCR5BY",
        "7",  # an owner's id typed as text in the sqlite3 shell
        "2026-11-30T00:40:07.759Z",
        "2026-11-30 00:40:07",  # a time typed by hand
        "a 'name', with \"quotes\"",
        "b" * 64,
        "FoCA",
        None,
        None,
        "2025-11-30T00:40:07.759Z",
        '["read", "write"]',
    )
    fields = APIToken._meta.sorted_fields
    assert len(row) == len(fields)
    expected = {f.name: f.python_value(raw) for f, raw in zip(fields, row, strict=True)}
    got = Loader(APIToken).values(row)
    assert got == expected and list(got) == [f.name for f in fields]
    assert got["created_by"] == 7 and got["scopes"] == ["read", "write"]


def test_a_given_field_is_not_read_and_keeps_its_place_among_the_values() -> None:
    """A lookup's key is passed in, unconverted, and the values come in field order."""
    full = Loader(APIToken)
    row = (
        HEX,
        "apt_01M8MYA4AFA4101AAC01FCR5BY",
        7,
        "2026-11-30T00:40:07.759Z",
        "2026-11-30T00:40:07.759Z",
        "name",
        "b" * 64,
        "FoCA",
        None,
        None,
        None,
        "[]",
    )
    loader = Loader(APIToken, given=("token_digest", "name"))
    assert "token_digest" not in loader.columns and '"name"' not in loader.columns
    assert loader.columns.split(", ") == [
        c for c in full.columns.split(", ") if c not in ('"token_digest"', '"name"')
    ]
    short = tuple(
        v for i, v in enumerate(row) if i not in (full.at["name"], full.at["token_digest"])
    )
    assert loader.at["token_hint"] == short.index("FoCA")
    got = loader.values(short, "d" * 64, "given name")
    assert list(got) == list(full.values(row))
    assert got == {**full.values(row), "token_digest": "d" * 64, "name": "given name"}
    with pytest.raises(ValueError):
        loader.values(row, "d" * 64, "given name")  # a row holding the given columns too


@pytest.mark.parametrize("length", [0, 11, 13])
def test_a_row_of_another_length_is_refused(length: int) -> None:
    with pytest.raises(ValueError):
        Loader(APIToken).values((None,) * length)


def test_a_model_made_on_the_fly_is_freed_after_its_rows_were_read(store: Store) -> None:
    """The converters made for a SELECT's fields were kept, with the fields, for good."""

    def read_a_model_made_now() -> weakref.ref[peewee.Field]:
        class Scratch(BaseModel):
            text = peewee.TextField()

        with Scratch.bind_ctx(store.db):
            store.db.create_tables([Scratch])
            Scratch.create(text="x")
            assert [row.text for row in Scratch.select()] == ["x"]
        return weakref.ref(Scratch._meta.fields["text"])

    field = read_a_model_made_now()
    gc.collect()
    assert field() is None
