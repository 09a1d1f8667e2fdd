"""The model bench/scale.py saves, importable by the ``tokenstore --app`` watcher it starts."""

from __future__ import annotations

import peewee

from tokenstore import ABIDModel


class Note(ABIDModel):
    """A small application record with one hook."""

    abid_prefix = "not_"
    text = peewee.TextField(default="")

    class Meta:
        table_name = "bench_scale_note"
