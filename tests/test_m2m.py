"""Many-to-many relations: captured in SQL, fired as ``m2m_changed``, delivered to M2M hooks.

Everything runs on real files: peewee's ``ManyToManyField`` accessors, its
through model used directly, plain SQL from another process, and webhooks
sent to a real HTTP server on loopback (pytest-httpserver) and checked with
the ``standardwebhooks`` library. Receivers are always disconnected: blinker
signals are module globals.
"""

from __future__ import annotations

import decimal
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import _db
import peewee
import pytest
from pytest_httpserver import HTTPServer
from standardwebhooks.webhooks import Webhook

import tokenstore
from tokenstore import ABIDModel, Store, signals
from tokenstore._capture import EVENT_TABLE, LISTENER_TABLE
from tokenstore._errors import ValidationError

LOOPBACK = ["127.0.0.1/32", "::1/128", "localhost"]


class Tag(ABIDModel):
    abid_prefix = "tag_"
    abid_uri_src = "name"
    name = peewee.TextField()


class Snapshot(ABIDModel):
    abid_prefix = "snp_"
    abid_uri_src = "url"
    url = peewee.TextField()
    tags = peewee.ManyToManyField(Tag, backref="snapshots")


Through = Snapshot.tags.get_through_model()
JOIN = Through._meta.table_name

Calls = list[dict[str, Any]]


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    """Overrides conftest's: both sides of the relation registered."""
    s = tokenstore.open(db_path, webhook_allow=LOOPBACK)
    s.register(Tag)
    s.register(Snapshot)
    try:
        yield s
    finally:
        s.close()


@contextmanager
def m2m_calls() -> Iterator[Calls]:
    """Record ``m2m_changed``; connected strongly, always disconnected afterwards."""
    calls: Calls = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        calls.append({"sender": sender, **kwargs})

    signals.m2m_changed.connect(receiver, weak=False)
    try:
        yield calls
    finally:
        signals.m2m_changed.disconnect(receiver)


def summary(calls: Calls) -> list[tuple[str, Any, str, str, set[Any]]]:
    return [
        (c["sender"].__name__, c["instance"].id, c["field"], c["action"], c["pks"]) for c in calls
    ]


def join_events(store: Store) -> int:
    [(count,)] = _db.rows(
        store, f"SELECT count(*) FROM {EVENT_TABLE} WHERE table_name = ?", (JOIN,)
    )
    return int(count)


def tags(*names: str) -> list[Tag]:
    return [Tag.create(name=name) for name in names]


# -- signals --------------------------------------------------------------------------


def test_add_remove_and_clear_fire_one_signal_per_instance_on_each_side(store: Store) -> None:
    snap = Snapshot.create(url="https://example.com/a")
    a, b, c = tags("a", "b", "c")
    with m2m_calls() as calls:
        snap.tags.add([a, b, c])
    assert summary(calls) == [
        ("Snapshot", snap.id, "tags", "add", {a.id, b.id, c.id}),
        ("Tag", a.id, "snapshots", "add", {snap.id}),
        ("Tag", b.id, "snapshots", "add", {snap.id}),
        ("Tag", c.id, "snapshots", "add", {snap.id}),
    ]
    assert calls[0]["instance"].url == "https://example.com/a"  # the row, read back
    assert calls[1]["instance"].name == "a"

    with m2m_calls() as calls:
        snap.tags.remove(b)
    assert summary(calls) == [
        ("Snapshot", snap.id, "tags", "remove", {b.id}),
        ("Tag", b.id, "snapshots", "remove", {snap.id}),
    ]

    with m2m_calls() as calls:
        snap.tags.clear()
    assert summary(calls) == [
        ("Snapshot", snap.id, "tags", "remove", {a.id, c.id}),
        ("Tag", a.id, "snapshots", "remove", {snap.id}),
        ("Tag", c.id, "snapshots", "remove", {snap.id}),
    ]
    assert list(snap.tags) == []
    assert join_events(store) == 0  # fired events are deleted


def test_a_truncated_join_table_removes_every_pair(store: Store) -> None:
    """PostgreSQL runs no row trigger for TRUNCATE; the join table's own records the pairs."""
    snap = Snapshot.create(url="https://example.com/")
    a, b = tags("a", "b")
    snap.tags.add([a, b])
    with m2m_calls() as calls:
        Through.truncate_table()
    assert sorted(summary(calls), key=repr) == sorted(
        [
            ("Snapshot", snap.id, "tags", "remove", {a.id, b.id}),
            ("Tag", a.id, "snapshots", "remove", {snap.id}),
            ("Tag", b.id, "snapshots", "remove", {snap.id}),
        ],
        key=repr,
    )


def test_the_backref_side_groups_by_its_own_instance(store: Store) -> None:
    s1, s2 = (Snapshot.create(url=f"https://example.com/{n}") for n in (1, 2))
    (tag,) = tags("news")
    with m2m_calls() as calls:
        tag.snapshots.add([s1, s2])
    assert summary(calls) == [
        ("Snapshot", s1.id, "tags", "add", {tag.id}),
        ("Snapshot", s2.id, "tags", "add", {tag.id}),
        ("Tag", tag.id, "snapshots", "add", {s1.id, s2.id}),
    ]


def test_the_through_model_used_directly_is_captured_and_an_update_is_remove_then_add(
    store: Store,
) -> None:
    snap = Snapshot.create(url="https://example.com/")
    a, b = tags("a", "b")
    with m2m_calls() as calls:
        Through.insert_many([{"snapshot": snap.id, "tag": a.id}]).execute()
        Through.update(tag=b.id).where(Through.tag == a.id).execute()
    snapshot_side = [c for c in summary(calls) if c[0] == "Snapshot"]
    assert snapshot_side == [
        ("Snapshot", snap.id, "tags", "add", {a.id}),
        ("Snapshot", snap.id, "tags", "remove", {a.id}),
        ("Snapshot", snap.id, "tags", "add", {b.id}),
    ]
    assert [t.name for t in snap.tags] == ["b"]


def test_statements_in_one_transaction_with_nothing_between_are_one_change(store: Store) -> None:
    """Row triggers cannot see statement boundaries: a run of like events is one change."""
    snap = Snapshot.create(url="https://example.com/")
    a, b, c = tags("a", "b", "c")
    with m2m_calls() as calls, store.atomic():
        snap.tags.add(a)
        snap.tags.add(b)
        Tag.update(name="renamed").where(Tag.id == c.id).execute()  # a change between
        snap.tags.add(c)
    assert [x for x in summary(calls) if x[0] == "Snapshot"] == [
        ("Snapshot", snap.id, "tags", "add", {a.id, b.id}),
        ("Snapshot", snap.id, "tags", "add", {c.id}),
    ]


def test_a_row_deleted_since_comes_as_an_instance_holding_its_key(store: Store) -> None:
    snap = Snapshot.create(url="https://example.com/gone")
    (a,) = tags("a")
    snap.tags.add(a)
    with m2m_calls() as calls, store.atomic():
        snap.tags.clear()
        snap.delete_instance()
    (call,) = [c for c in calls if c["sender"] is Snapshot]
    assert (call["instance"].id, call["instance"].url) == (snap.id, None)
    assert (call["action"], call["pks"]) == ("remove", {a.id})


def test_a_rolled_back_relation_change_fires_nothing(store: Store) -> None:
    snap = Snapshot.create(url="https://example.com/")
    a, b = tags("a", "b")
    with m2m_calls() as calls:
        with pytest.raises(RuntimeError), store.atomic():
            snap.tags.add(a)
            raise RuntimeError("undo")
        with store.atomic():
            with pytest.raises(RuntimeError), store.atomic():  # a savepoint
                snap.tags.add(a)
                raise RuntimeError("undo the savepoint only")
            snap.tags.add(b)
        store.dispatch()
    assert summary(calls) == [
        ("Snapshot", snap.id, "tags", "add", {b.id}),
        ("Tag", b.id, "snapshots", "add", {snap.id}),
    ]
    assert [t.name for t in snap.tags] == ["b"]
    assert join_events(store) == 0


def test_an_m2m_changed_receiver_alone_makes_the_store_listen(store: Store) -> None:
    assert not signals.any_event_receivers()
    with m2m_calls():
        assert signals.any_event_receivers()
        store.dispatch()
        [(listeners,)] = _db.rows(store, f"SELECT count(*) FROM {LISTENER_TABLE}")
    assert listeners == 1


def test_sql_on_the_join_table_from_another_process_fires_at_dispatch(store: Store) -> None:
    snap = Snapshot.create(url="https://example.com/")
    a, b = tags("a", "b")
    with m2m_calls() as calls:
        store.dispatch()  # now listening: the other process's writes are recorded
        pairs = f"('{snap.id.hex}', '{a.id.hex}'), ('{snap.id.hex}', '{b.id.hex}')"
        _db.edit(store, f"INSERT INTO {JOIN} (snapshot_id, tag_id) VALUES {pairs}")
        _db.edit(store, f"DELETE FROM {JOIN} WHERE tag_id = '{a.id.hex}'")
        assert calls == []
        assert store.dispatch().events == 3
    assert summary(calls) == [
        ("Snapshot", snap.id, "tags", "add", {a.id, b.id}),
        ("Tag", a.id, "snapshots", "add", {snap.id}),
        ("Tag", b.id, "snapshots", "add", {snap.id}),
        ("Snapshot", snap.id, "tags", "remove", {a.id}),
        ("Tag", a.id, "snapshots", "remove", {snap.id}),
    ]
    assert [t.name for t in snap.tags] == ["b"]


@pytest.mark.parametrize("registered", [Snapshot, Tag], ids=["Snapshot", "Tag"])
def test_only_a_registered_side_hears(db_path: Path, registered: type[ABIDModel]) -> None:
    other = Tag if registered is Snapshot else Snapshot
    s = tokenstore.open(db_path)
    try:
        other.bind(s.db, bind_refs=False, bind_backrefs=False)
        s.db.create_tables([other])  # the application's own table, not registered
        s.register(registered)
        snap = Snapshot.create(url="https://example.com/")
        a, b = tags("a", "b")
        with m2m_calls() as calls:
            snap.tags.add([a, b])
        if registered is Snapshot:
            assert summary(calls) == [("Snapshot", snap.id, "tags", "add", {a.id, b.id})]
        else:
            assert summary(calls) == [
                ("Tag", a.id, "snapshots", "add", {snap.id}),
                ("Tag", b.id, "snapshots", "add", {snap.id}),
            ]
    finally:
        s.close()


def test_the_join_table_cannot_be_registered_as_a_model(store: Store) -> None:
    with pytest.raises(ValidationError, match="join table"):
        store.register(Through)


def test_a_relation_of_a_model_with_itself_is_refused_before_anything_is_written(
    store: Store,
) -> None:
    class Person(ABIDModel):
        abid_prefix = "per_"

    class Friendship(peewee.Model):
        a = peewee.ForeignKeyField(Person, backref="+")
        b = peewee.ForeignKeyField(Person, backref="+")

    friends = peewee.ManyToManyField(Person, through_model=Friendship, backref="+")
    Person._meta.add_field("friends", friends)
    with pytest.raises(ValidationError, match=r"Person\.friends: .* with itself"):
        store.register(Person)
    assert not store.db.table_exists(Person._meta.table_name)
    assert Person not in list(store._registry)


# -- webhooks -------------------------------------------------------------------------


def test_nothing_is_recorded_while_no_one_listens_and_no_hook_wants_m2m(
    store: Store, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/hook").respond_with_data("ok")
    snap = Snapshot.create(url="https://example.com/")
    a, b = tags("a", "b")

    def recorded_by(add: Tag) -> int:
        with store.atomic():
            snap.tags.add(add)
            (count,) = store.db.execute_sql(
                store.db.sql(f"SELECT count(*) FROM {EVENT_TABLE} WHERE table_name = ?"), (JOIN,)
            ).fetchone()
        return int(count)

    store.webhooks.create("creates", Snapshot, httpserver.url_for("/hook"), signal="CREATE")
    assert recorded_by(a) == 0
    hook = store.webhooks.create("m2m", Snapshot, httpserver.url_for("/hook/2"), signal="M2M")
    assert recorded_by(b) == 1
    assert join_events(store) == 0  # taken by the commit that wrote the delivery
    assert [d.event_type for d in store.webhooks.deliveries(hook)] == ["snapshot.tags.added"]


def test_m2m_hooks_get_one_signed_delivery_per_relation_change_and_others_none(
    store: Store, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/m2m", method="POST").respond_with_data("ok")
    httpserver.expect_request("/create", method="POST").respond_with_data("ok")
    httpserver.expect_request("/tags", method="POST").respond_with_data("ok")
    m2m = store.webhooks.create("m2m", Snapshot, httpserver.url_for("/m2m"), signal="M2M")
    create = store.webhooks.create("c", Snapshot, httpserver.url_for("/create"), signal="CREATE")
    on_tags = store.webhooks.create(
        "tags", Tag, httpserver.url_for("/tags"), signal="CREATE_UPDATE_DELETE_OR_M2M"
    )
    secrets = {"/m2m": m2m.secret, "/create": create.secret, "/tags": on_tags.secret}

    snap = Snapshot.create(url="https://example.com/")
    a, b = tags("a", "b")
    snap.tags.add([a, b])
    snap.tags.remove(a)

    received: dict[str, list[dict[str, Any]]] = {path: [] for path in secrets}
    for request, _ in httpserver.log:
        body = request.get_data()
        verified = Webhook(secrets[request.path]).verify(body, dict(request.headers))
        assert verified == json.loads(body)
        received[request.path].append(verified)

    assert [p["type"] for p in received["/create"]] == ["snapshot.created"]
    assert [p["type"] for p in received["/m2m"]] == ["snapshot.tags.added", "snapshot.tags.removed"]
    added, removed = (p["data"] for p in received["/m2m"])
    assert added == {
        "model": store.ref(Snapshot),
        "pk": str(snap.id),
        "abid": snap.abid,
        "field": "tags",
        "action": "add",
        "pks": [str(a.id), str(b.id)],
    }
    assert (removed["action"], removed["pks"]) == ("remove", [str(a.id)])
    assert [(p["type"], p["data"]["pk"], p["data"].get("pks")) for p in received["/tags"]] == [
        ("tag.created", str(a.id), None),
        ("tag.created", str(b.id), None),
        ("tag.snapshots.added", str(a.id), [str(snap.id)]),
        ("tag.snapshots.added", str(b.id), [str(snap.id)]),
        ("tag.snapshots.removed", str(a.id), [str(snap.id)]),
    ]
    assert received["/tags"][2]["data"]["abid"] == a.abid
    assert {d.status for d in store.webhooks.deliveries(m2m)} == {"delivered"}


# -- registration refuses what it cannot capture faithfully -----------------------------


def test_two_relations_sharing_one_join_table_are_refused_before_anything_is_written(
    store: Store,
) -> None:
    """peewee names a field's own through model after the two models, so two fields clash."""

    class Author(peewee.Model):
        name = peewee.TextField()

    class Book(peewee.Model):
        title = peewee.TextField()
        writers = peewee.ManyToManyField(Author, backref="written")
        editors = peewee.ManyToManyField(Author, backref="edited")

    join = Book.writers.through_model._meta.table_name
    assert Book.editors.through_model._meta.table_name == join
    for model in (Book, Author):  # whichever side comes first
        with pytest.raises(ValidationError, match=rf"'{join}'.*Book\.writers.*Book\.editors"):
            store.register(model)
        assert not store.db.table_exists(model._meta.table_name)
        assert model not in list(store._registry)
    assert not store.db.table_exists(join)
    assert join not in store._registry.tables()


def test_a_through_model_whose_key_is_not_the_primary_key_is_refused(store: Store) -> None:
    """Relations are told by primary key (``instance``, ``pks``): a ``field=`` key would lie."""

    class Person(peewee.Model):
        handle = peewee.CharField(unique=True)

    class Club(peewee.Model):
        name = peewee.TextField()

    class Membership(peewee.Model):
        person = peewee.ForeignKeyField(Person, field=Person.handle)
        club = peewee.ForeignKeyField(Club)

    Person._meta.add_field(
        "clubs", peewee.ManyToManyField(Club, through_model=Membership, backref="people")
    )
    for model in (Club, Person):
        with pytest.raises(
            ValidationError, match=r"Membership\.person .* Person\.handle, not its primary key"
        ):
            store.register(model)
        assert not store.db.table_exists(model._meta.table_name)


def test_a_through_model_with_two_keys_to_one_side_is_refused(store: Store) -> None:
    """Which key is the relation's? peewee cannot tell; capture took the first, and lied."""

    class Reader(peewee.Model):
        name = peewee.TextField()

    class Shelf(peewee.Model):
        name = peewee.TextField()

    class Loan(peewee.Model):
        lent_by = peewee.ForeignKeyField(Reader, null=True)
        reader = peewee.ForeignKeyField(Reader)
        shelf = peewee.ForeignKeyField(Shelf)

    Shelf._meta.add_field(
        "readers", peewee.ManyToManyField(Reader, through_model=Loan, backref="shelves")
    )
    for model in (Reader, Shelf):
        with pytest.raises(
            ValidationError, match=r"Loan has 2 foreign keys to Reader \(lent_by, reader\)"
        ):
            store.register(model)
        assert not store.db.table_exists(model._meta.table_name)


def test_a_relation_keyed_by_a_blob_is_refused(store: Store) -> None:
    """A BLOB key cannot travel in the events' JSON; refused at once, not at the first add."""

    class Photo(peewee.Model):
        id = peewee.BlobField(primary_key=True)

    class Album(peewee.Model):
        photos = peewee.ManyToManyField(Photo, backref="albums")

    for model in (Photo, Album):
        with pytest.raises(ValidationError, match=r"AlbumPhotoThrough\.photo .* BLOB"):
            store.register(model)
        assert not store.db.table_exists(model._meta.table_name)


def test_a_side_without_a_field_registered_first_gets_its_join_table_with_the_other(
    store: Store,
) -> None:
    """``backref="+"``: the other side has no field, and its registration still makes the table."""

    class Label(peewee.Model):
        name = peewee.TextField()

    class Page(peewee.Model):
        url = peewee.TextField()
        labels = peewee.ManyToManyField(Label, backref="+")

    store.register(Page)  # Label's table does not exist yet: the join table waits
    join = Page.labels.through_model._meta.table_name
    assert not store.db.table_exists(join)
    store.register(Label)
    assert store.db.table_exists(join)
    page, label = Page.create(url="u"), Label.create(name="x")
    with m2m_calls() as calls:
        page.labels.add(label)
    assert [(c["sender"], c["instance"].id, c["action"], c["pks"]) for c in calls] == [
        (Page, page.id, "add", {label.id})
    ]


CLUB_APP = """
import peewee

class Person(peewee.Model):
    name = peewee.TextField()

class Club(peewee.Model):
    name = peewee.TextField()

class Membership(peewee.Model):
    person = peewee.ForeignKeyField(Person)
    club = peewee.ForeignKeyField(Club)
    role = peewee.TextField(default="member")

Person._meta.add_field(
    "clubs", peewee.ManyToManyField(Club, through_model=Membership, backref="people")
)
"""


def test_the_command_s_app_option_leaves_through_models_to_their_relation(
    db_path: Path, tmp_path: Path
) -> None:
    """``--app`` registers a module's models as the application does: not a join table."""
    (tmp_path / "club_app.py").write_text(CLUB_APP)
    tokenstore.open(db_path).close()
    done = subprocess.run(
        [sys.executable, "-m", "tokenstore", "--app", "club_app", "dispatch"],
        env={**os.environ, "TOKENSTORE_DB": str(db_path), "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert _db.rows(db_path, "SELECT count(*) FROM membership") == [(0,)]  # the command made it


def test_a_process_that_registers_one_side_keeps_the_other_side_s_hooks_working(
    store: Store, httpserver: HTTPServer
) -> None:
    """The join table's triggers are shared by every process: each opens them for both sides."""
    httpserver.expect_request("/tags").respond_with_data("ok")
    hook = store.webhooks.create("tags", Tag, httpserver.url_for("/tags"), signal="M2M")
    snap = Snapshot.create(url="https://example.com/")
    a, b = tags("a", "b")
    snap.tags.add(a)
    script = (
        "import os, sys\n"
        "sys.path.insert(0, os.path.dirname(os.environ['TEST_FILE']))\n"
        "import tokenstore, test_m2m\n"
        "store = tokenstore.open(os.environ['TOKENSTORE_TEST_TARGET'])\n"
        "store.register(test_m2m.Snapshot)  # this process has no use for Tag\n"
        "store.close()\n"
    )
    subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "TEST_FILE": __file__, "TOKENSTORE_TEST_TARGET": _db.location(store)},
        check=True,
        timeout=60,
    )
    snap.tags.add(b)
    sent = [
        (d.event_type, json.loads(d.payload)["data"]["pk"]) for d in store.webhooks.deliveries(hook)
    ]
    assert sorted(sent) == sorted([("tag.snapshots.added", str(t.id)) for t in (a, b)])


def test_a_process_that_registers_one_side_and_writes_delivers_to_the_other_side_s_hooks(
    store: Store, httpserver: HTTPServer
) -> None:
    """Hooks live in the file: the writer made deliveries for the sides it registered only.

    Its claim took the events, so a Tag hook never heard of a relation that an
    application registering only Snapshot added, although the triggers had
    recorded it for that hook.
    """
    httpserver.expect_request("/tags").respond_with_data("ok")
    hook = store.webhooks.create("tags", Tag, httpserver.url_for("/tags"), signal="M2M")
    (tag,) = tags("a")
    script = (
        "import os, sys\n"
        "sys.path.insert(0, os.path.dirname(os.environ['TEST_FILE']))\n"
        "import tokenstore, test_m2m\n"
        "target = os.environ['TOKENSTORE_TEST_TARGET']\n"
        "store = tokenstore.open(target, webhook_allow=['127.0.0.1/32'])\n"
        "store.register(test_m2m.Snapshot)  # this process has no use for Tag\n"
        "snap = test_m2m.Snapshot.create(url='https://example.com/')\n"
        "snap.tags.add([os.environ['TAG']])\n"
        "print(snap.id)\n"
        "store.close()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={
            **os.environ,
            "TEST_FILE": __file__,
            "TOKENSTORE_TEST_TARGET": _db.location(store),
            "TAG": tag.id.hex,
        },
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    store.dispatch()
    sent = [json.loads(d.payload)["data"] for d in store.webhooks.deliveries(hook)]
    assert [(d["pk"], d["abid"], d["pks"]) for d in sent] == [
        (str(tag.id), tag.abid, [done.stdout.strip()])
    ]
    assert {d.status for d in store.webhooks.deliveries(hook)} == {"delivered"}


def test_an_abid_field_on_a_column_of_another_name_is_read_from_its_column(
    store: Store,
) -> None:
    """The ABID of a relation's message was read from a column named ``abid``, whatever its field's.

    SQLite took the missing column's name for a string and sent ``"abid"``; on
    PostgreSQL the statement failed, and with it the application's ``add()``.
    """

    class Label(peewee.Model):
        name = peewee.TextField()
        abid = peewee.TextField(column_name="label abid", null=True)

    class Note(peewee.Model):
        labels = peewee.ManyToManyField(Label, backref="notes")

    store.register(Label)
    store.register(Note)
    hook = store.webhooks.create("labels", Label, "http://127.0.0.1:9/", signal="M2M")
    note = Note.create()
    kept, unset = Label.create(name="a", abid="lbl_kept"), Label.create(name="b")
    note.labels.add([kept, unset])
    sent = [json.loads(d.payload)["data"] for d in store.webhooks.deliveries(hook)]
    assert sorted((d["pk"], d["abid"]) for d in sent) == [
        (str(kept.id), "lbl_kept"),
        (str(unset.id), None),
    ]


def test_a_private_abid_field_is_not_sent_in_a_relation_s_message(store: Store) -> None:
    """A change's message left it out, as private fields are; a relation's read it from the
    row and sent it."""

    class Badge(peewee.Model):
        private_fields = ("abid",)
        abid = peewee.TextField(null=True)

    class Member(peewee.Model):
        badges = peewee.ManyToManyField(Badge, backref="members")

    store.register(Badge)
    store.register(Member)
    hook = store.webhooks.create("badges", Badge, "http://127.0.0.1:9/", signal="CREATE_OR_M2M")
    Member.create().badges.add([Badge.create(abid="kept private")])
    sent = [json.loads(d.payload) for d in store.webhooks.deliveries(hook)]
    assert sorted((m["type"], m["data"]["abid"]) for m in sent) == [
        ("badge.created", None),
        ("badge.members.added", None),
    ]


def test_m2m_changed_leaves_a_side_s_private_fields_out_of_its_instance(store: Store) -> None:
    """The instance is read from the row after the commit, and held them: post_save's,
    built from the captured row, never did (private fields are never signalled)."""

    class Vault(peewee.Model):
        private_fields = ("secret",)
        name = peewee.TextField()
        secret = peewee.TextField(null=True)

    class Keeper(peewee.Model):
        vaults = peewee.ManyToManyField(Vault, backref="keepers")

    store.register(Vault)
    store.register(Keeper)
    keeper, vault = Keeper.create(), Vault.create(name="v", secret="kept private")
    with m2m_calls() as calls:
        keeper.vaults.add([vault])
    [heard] = [c["instance"] for c in calls if c["sender"] is Vault]
    assert heard.__data__ == {"id": vault.id, "name": "v"}


def test_sides_with_a_question_mark_in_their_names_are_read_back(store: Store) -> None:
    """On PostgreSQL a ``?`` in a side's table or column name was taken for a placeholder.

    The statements reading a side's ABID (for the message) and its row (for
    ``m2m_changed``) went through the ``?`` to ``%s`` translation with the names
    in them: the first failed the application's ``add()``, the second dropped
    the signal with an error in the log.
    """

    class Label(peewee.Model):
        name = peewee.TextField(column_name="name?")
        abid = peewee.TextField(column_name="abid?", null=True)

        class Meta:
            table_name = "label?"

    class Note(peewee.Model):
        text = peewee.TextField(column_name="text?", default="n")
        labels = peewee.ManyToManyField(Label, backref="notes")

        class Meta:
            table_name = "note?"

    store.register(Label)
    store.register(Note)
    hook = store.webhooks.create("labels", Label, "http://127.0.0.1:9/", signal="M2M")
    note, label = Note.create(), Label.create(name="a", abid="lbl_a")
    with m2m_calls() as calls:
        note.labels.add([label])
    assert [(c["instance"], c["action"], c["pks"]) for c in calls] == [
        (note, "add", {label.id}),
        (label, "add", {note.id}),
    ]
    assert (calls[0]["instance"].text, calls[1]["instance"].name) == ("n", "a")
    sent = [json.loads(d.payload)["data"] for d in store.webhooks.deliveries(hook)]
    assert [(d["pk"], d["abid"]) for d in sent] == [(str(label.id), "lbl_a")]


def test_floating_point_and_decimal_keys_are_told_as_the_rows_hold_them(store: Store) -> None:
    """A relation's keys were recorded as the plain column: SQLite's json_object() wrote a
    REAL with 15 digits, and PostgreSQL's NUMERIC went through a JSON number, a float.

    ``pk``/``pks`` named other rows than the change messages did (0.3 for
    0.30000000000000004), the ABID of such a row was not found (null), and
    ``m2m_changed`` got the rounded keys.
    """

    class Reading(peewee.Model):
        id = peewee.FloatField(primary_key=True)
        abid = peewee.TextField(null=True)

    class Lot(peewee.Model):
        id = peewee.DecimalField(primary_key=True, max_digits=30, decimal_places=2)
        readings = peewee.ManyToManyField(Reading, backref="lots")

    store.register(Reading)
    store.register(Lot)
    hooks = [
        store.webhooks.create(model.__name__, model, "http://127.0.0.1:9/", signal="CREATE_OR_M2M")
        for model in (Reading, Lot)
    ]
    lot = Lot.create(id=decimal.Decimal("12345678901234567.89"))
    readings = [
        Reading.create(id=0.1 + 0.2, abid="rd_a"),
        Reading.create(id=123456789.12345679, abid="rd_b"),
    ]
    with m2m_calls() as calls:
        lot.readings.add(readings)
    lot_id = Lot.get().id  # as the row holds it (SQLite's NUMERIC keeps 15 digits itself)
    assert [(c["instance"].id, c["pks"]) for c in calls] == [
        (lot_id, {0.1 + 0.2, 123456789.12345679}),
        (0.1 + 0.2, {lot_id}),
        (123456789.12345679, {lot_id}),
    ]
    sent = [json.loads(d.payload) for hook in hooks for d in store.webhooks.deliveries(hook)]
    created = {m["data"]["pk"] for m in sent if m["type"].endswith(".created")}
    related = [m["data"] for m in sent if m["type"].endswith(".added")]
    assert sorted((d["pk"], d["abid"], d["pks"]) for d in related) == sorted(
        [
            (str(lot_id), None, ["0.30000000000000004", "123456789.12345679"]),
            ("0.30000000000000004", "rd_a", [str(lot_id)]),
            ("123456789.12345679", "rd_b", [str(lot_id)]),
        ]
    )
    assert {d["pk"] for d in related} == created


def _relation_models(with_abid: bool) -> tuple[type[peewee.Model], type[peewee.Model]]:
    """Label and Item, related; a newer Label has an ``abid`` field."""

    class Label(peewee.Model):
        name = peewee.TextField()
        if with_abid:
            abid = peewee.TextField(null=True)

    class Item(peewee.Model):
        text = peewee.TextField()
        labels = peewee.ManyToManyField(Label, backref="items")

    return Label, Item


def test_a_side_this_process_does_not_register_is_checked_against_its_table(
    db_path: Path,
) -> None:
    """Its hooks get deliveries from this process, which reads its ABID: a Label model with
    an ``abid`` field its table lacks made every relation write fail on PostgreSQL (column
    "abid" does not exist, outside the exception hierarchy) and told SQLite's hooks the
    ABID "abid". Registering the side that relates to it is refused instead, as
    registering the side itself is."""
    with tokenstore.open(db_path, webhook_allow=LOOPBACK) as first:
        label, item = _relation_models(with_abid=False)
        first.register(label)
        first.register(item)
        first.webhooks.create("labels", label, "http://127.0.0.1:9/", signal="M2M")
    with tokenstore.open(db_path, webhook_allow=LOOPBACK) as second:
        label, item = _relation_models(with_abid=True)
        with pytest.raises(ValidationError, match=r"Label: its table 'label' has no column 'abid'"):
            second.register(item)
