"""Rows edited outside tokenstore (the sqlite3 shell, another program) into odd values.

SQLite keeps whatever a column is given: text in an INTEGER column, a blob
of invalid UTF-8 in a TEXT one, JSON of the wrong shape. A read that meets
such a row raises DamagedRow naming the table, the row and the column; the
retry path skips it, logs it, and goes on with the others.
"""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from _http import Receiver

import tokenstore
from tokenstore import DamagedRow, Store, TokenstoreError
from tokenstore._models import WebhookDelivery
from tokenstore._rows import Loader

pytestmark = pytest.mark.sqlite_only  # PostgreSQL enforces the columns' types

COMMAND = [sys.executable, "-m", "tokenstore"]
OUTSIDE = "the row was changed outside tokenstore"
DELIVERIES = "tokenstore_webhook_delivery"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store.sqlite3"


@pytest.fixture
def store(path: Path, receiver: Receiver) -> Iterator[Store]:
    s = tokenstore.open(path, webhook_allow=["127.0.0.1/32"], read_timeout=1, connect_timeout=1)
    try:
        yield s
    finally:
        s.close()


def edit(path: Path, sql: str, *params: object) -> None:
    """Change rows as the sqlite3 shell would: another connection, no tokenstore."""
    con = sqlite3.connect(path)
    try:
        con.execute(sql, params)
        con.commit()
    finally:
        con.close()


def two_due_deliveries(store: Store, path: Path, receiver: Receiver) -> list[str]:
    """Two deliveries waiting for a retry, oldest first; their ABIDs."""
    store.webhooks.create("users", "tokenstore.User", receiver.url(), auth_token="hunter2")
    edit(path, f"UPDATE {DELIVERIES} SET status = 'dead'")  # the hook's creation, if any
    store.users.create("alice")
    store.users.create("bob")
    receiver.hits.clear()
    edit(
        path,
        f"UPDATE {DELIVERIES} SET status = 'failed', attempts = 1, "
        "next_attempt_at = '2000-01-01T00:00:00.000Z' WHERE status != 'dead'",
    )
    return [d.abid for d in reversed(store.webhooks.deliveries(status="failed"))]


def far_future(store: Store) -> object:
    return store.clock() + timedelta(days=1)


def test_a_delivery_whose_hook_was_deleted_in_the_shell_goes_as_it_would_have_with_it(
    store: Store, path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """The shell enforces no foreign keys: the row stayed, and every call "attempted" it."""
    store.webhooks.create("gone", "tokenstore.User", "http://127.0.0.1:9/")
    store.users.create("alice")
    edit(path, "DELETE FROM tokenstore_outbound_webhook WHERE name = 'gone'")
    (orphan,) = store.webhooks.deliveries()
    with caplog.at_level(logging.WARNING, logger="tokenstore"):
        assert store.webhooks.deliver_due(far_future(store)) == 0
    assert store.webhooks.deliveries() == []
    assert f"delivery {orphan.abid}: its hook is gone" in caplog.text


def test_attempts_as_text_is_skipped_by_deliver_due_and_marked_dead(
    store: Store, path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    damaged, fine = two_due_deliveries(store, path, receiver)
    edit(path, f"UPDATE {DELIVERIES} SET attempts = 'x' WHERE abid = ?", damaged)
    with caplog.at_level(logging.ERROR, logger="tokenstore"):
        assert store.webhooks.deliver_due(far_future(store)) == 1
    assert len(receiver.hits) == 1
    assert store.webhooks.delivery(fine).status == "delivered"
    status, error = (
        sqlite3.connect(path)
        .execute(f"SELECT status, last_error FROM {DELIVERIES} WHERE abid = ?", (damaged,))
        .fetchone()
    )
    assert status == "dead"
    for part in (DELIVERIES, damaged, "attempts", OUTSIDE):
        assert part in error
        assert part in caplog.text
    assert store.webhooks.deliver_due(far_future(store)) == 0  # given up: not met again


def test_a_payload_blob_of_invalid_utf8_is_a_damaged_row_everywhere(
    store: Store, path: Path, receiver: Receiver
) -> None:
    damaged, fine = two_due_deliveries(store, path, receiver)
    edit(path, f"UPDATE {DELIVERIES} SET payload = X'FFFE' WHERE abid = ?", damaged)
    with pytest.raises(DamagedRow) as caught:
        store.webhooks.deliveries()
    message = str(caught.value)
    assert f"{DELIVERIES} row {damaged}: column payload holds a blob" in message
    assert message.endswith(OUTSIDE)
    with pytest.raises(DamagedRow):
        store.webhooks.delivery(damaged)
    assert store.webhooks.deliver_due(far_future(store)) == 1
    assert receiver.hits[0].body.startswith(b"{")
    assert store.webhooks.delivery(fine).status == "delivered"
    result = subprocess.run(
        [*COMMAND, "--db", str(path), "webhooks", "deliveries"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert damaged in result.stderr and "payload" in result.stderr


@pytest.mark.parametrize(
    ("column", "value", "held"),
    [
        ("attempts", "x", "holds text, not a whole number"),
        ("attempts", 1.5, "holds a real, not a whole number"),
        ("created_at", "yesterday", "holds text, not an ISO-8601 time"),
        ("id", "not hex", "holds text, not a UUID (32 hex digits)"),
        ("payload", b"\xff\xfe", "holds a blob, not UTF-8 text"),
    ],
)
def test_the_loader_names_the_table_row_and_column(column: str, value: object, held: str) -> None:
    loader = Loader(WebhookDelivery)
    row = [
        "34d33d59f9ee4110b2fcd9268791df73",
        "msg_01JAZ6BQG0D53BD22B01XRS78E",
        "2026-11-30T00:40:07.759Z",
        "2026-11-30T00:40:07.759Z",
        1,
        "44d33d59f9ee4110b2fcd9268791df73",
        None,
        "user.created",
        "{}",
        "failed",
        1,
        None,
        None,
        None,
        "",
        None,
        None,
    ]
    assert loader.values(row)["attempts"] == 1
    row[loader.at[column.removesuffix("_id")]] = value
    with pytest.raises(DamagedRow) as caught:
        loader.values(row)
    row_name = "msg_01JAZ6BQG0D53BD22B01XRS78E"
    assert str(caught.value) == f"{DELIVERIES} row {row_name}: column {column} {held}; {OUTSIDE}"


def test_a_token_row_damaged_fails_authentication_without_the_secret(
    store: Store, path: Path
) -> None:
    token, secret = store.tokens.create(scopes=["read"])
    edit(path, "UPDATE tokenstore_api_token SET expires = 'soon'")
    with pytest.raises(DamagedRow) as caught:
        store.tokens.authenticate(secret)
    message = str(caught.value)
    assert f"tokenstore_api_token row {token.abid}: column expires" in message
    assert secret not in message
    with pytest.raises(DamagedRow):
        store.tokens.list()
    with pytest.raises(DamagedRow) as cursor:  # the row is at fault, not the argument
        store.tokens.list(before=token.abid)
    assert str(cursor.value).startswith("tokenstore_api_token row "), str(cursor.value)


@pytest.mark.parametrize("headers", ["[1]", '"text"', "{not json", "7"])
def test_hook_headers_that_are_no_json_object_are_a_damaged_row(
    store: Store, path: Path, receiver: Receiver, headers: str
) -> None:
    hook = store.webhooks.create(
        "h", "tokenstore.User", receiver.url(), headers={"X-Key": "sesame"}
    )
    edit(path, "UPDATE tokenstore_outbound_webhook SET headers = ?", headers)
    with pytest.raises(TokenstoreError) as caught:
        store.webhooks.get("h")
    message = str(caught.value)
    assert f"tokenstore_outbound_webhook row {hook.abid}: column headers" in message
    assert "sesame" not in message and hook.secret not in message


# -- text that is no UTF-8: the sqlite3 module refuses to read it at all --------------------

NOT_UTF8 = "CAST(X'FFFE' AS TEXT)"


def test_text_that_is_no_utf8_is_named_without_quoting_it(store: Store, path: Path) -> None:
    hook = store.webhooks.create("h", "tokenstore.User", "http://127.0.0.1:9/")
    edit(path, f"UPDATE tokenstore_outbound_webhook SET secret = {NOT_UTF8}")
    with pytest.raises(DamagedRow) as caught:
        store.webhooks.list()
    assert str(caught.value) == (
        f"tokenstore_outbound_webhook row {hook.abid}: column secret holds text that is "
        f"not UTF-8; {OUTSIDE}"
    )
    result = subprocess.run(
        [*COMMAND, "--db", str(path), "--json", "webhooks", "list"],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count(b"\n") == 1 and b"\xff" not in result.stderr
    assert hook.abid.encode() in result.stderr


def test_a_token_row_with_text_that_is_no_utf8_fails_authentication(
    store: Store, path: Path
) -> None:
    token, secret = store.tokens.create()
    edit(path, f"UPDATE tokenstore_api_token SET token_hint = {NOT_UTF8}")
    with pytest.raises(DamagedRow, match=f"{token.abid}: column token_hint holds text"):
        store.tokens.authenticate(secret)


def test_a_user_edited_into_text_that_is_no_utf8_does_not_stop_the_writers(
    store: Store, path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """The capture trigger records the row as it is; its event is dropped, not every commit."""
    store.webhooks.create("users", "tokenstore.User", receiver.url())
    alice = store.users.create("alice")
    receiver.hits.clear()
    with caplog.at_level(logging.ERROR, logger="tokenstore"):
        edit(path, f"UPDATE tokenstore_user SET username = {NOT_UTF8} WHERE id = ?", alice.id)
        store.users.create("bob")
    assert [hit.body.count(b'"bob"') for hit in receiver.hits] == [1]
    assert "cannot be read" in caplog.text
    assert tokenstore.open(path).users.get("bob").username == "bob"


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (f"endpoint = {NOT_UTF8}", "column endpoint holds text that is not UTF-8"),
        ("id = 'not hex'", "column id holds text, not a UUID"),
        ("signal = X'FF'", "column signal holds a blob, not UTF-8 text"),
        ("failure_count = 'many'", "column failure_count holds text, not a whole number"),
    ],
)
def test_a_damaged_hook_is_skipped_by_the_writer_and_the_others_still_deliver(
    store: Store,
    path: Path,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
    change: str,
    said: str,
) -> None:
    store.webhooks.create("bad", "tokenstore.User", receiver.url("/bad"))
    store.webhooks.create("good", "tokenstore.User", receiver.url("/good"))
    edit(path, f"UPDATE tokenstore_outbound_webhook SET {change} WHERE name = 'bad'")
    with caplog.at_level(logging.ERROR, logger="tokenstore"):
        store.users.create("alice")
    assert [hit.path for hit in receiver.hits] == ["/good"]
    assert said in caplog.text


def test_deliver_due_goes_on_past_a_delivery_id_that_is_no_utf8(
    store: Store, path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    damaged, fine = two_due_deliveries(store, path, receiver)
    edit(path, f"UPDATE {DELIVERIES} SET id = {NOT_UTF8} WHERE abid = ?", damaged)
    with caplog.at_level(logging.ERROR, logger="tokenstore"):
        assert store.webhooks.deliver_due(far_future(store)) == 1
    assert store.webhooks.delivery(fine).status == "delivered"
    assert f"{DELIVERIES} row (its id unreadable) holds text that is not UTF-8" in caplog.text


def test_an_allowlist_entry_that_is_no_utf8_is_ignored_and_the_store_opens(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tokenstore.open(path, webhook_allow=["10.0.0.0/8"]).close()
    edit(path, f"INSERT INTO tokenstore_webhook_allow VALUES ({NOT_UTF8}, '2020-01-01')")
    with caplog.at_level(logging.ERROR, logger="tokenstore"), tokenstore.open(path) as store:
        assert store.webhooks.allowlist() == ["10.0.0.0/8"]
    assert "1 entries hold text that is not UTF-8" in caplog.text


@pytest.mark.parametrize("entry", ["X'00FF'", "'!!bad host'", "'10.0.0.0/33'", "7"])
def test_an_allowlist_entry_no_guard_can_read_is_ignored_and_sending_goes_on(
    path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture, entry: str
) -> None:
    """Such a row made every attempt raise after its commit, and open() refuse the store."""
    with tokenstore.open(path, webhook_allow=["127.0.0.1/32"]) as store:
        store.webhooks.create("users", "tokenstore.User", receiver.url())
        edit(path, f"INSERT INTO tokenstore_webhook_allow VALUES ({entry}, '2020-01-01')")
        with caplog.at_level(logging.ERROR, logger="tokenstore"):
            assert store.webhooks.allowlist() == ["127.0.0.1/32"]
            store.users.create("alice")
        assert store.webhooks.deliveries(limit=1)[0].status == "delivered"
    assert "1 entries are no address, network or host name and are ignored" in caplog.text
    assert "Traceback" not in caplog.text
    with tokenstore.open(path) as store:
        assert store.webhooks.allowlist() == ["127.0.0.1/32"]


@pytest.mark.parametrize("stored", ["LOCALHOST", "0:0::1", "127.0.0.1/32 "])
def test_an_allowlist_entry_edited_into_another_spelling_can_be_disallowed(
    path: Path, stored: str
) -> None:
    """Such a row was applied, but ``disallow`` looked for the canonical spelling only."""
    tokenstore.open(path).close()
    edit(path, f"INSERT INTO tokenstore_webhook_allow VALUES ('{stored}', '2020-01-01')")
    with tokenstore.open(path) as store:
        assert store.webhooks.allowlist() == [stored]
        assert store.webhooks.disallow(stored) == []
        assert store.webhooks.allowlist() == []


@pytest.mark.parametrize("claimant", ["X'FFFE'", "7", NOT_UTF8])
def test_a_listener_row_that_no_listener_wrote_is_removed(path: Path, claimant: str) -> None:
    tokenstore.open(path).close()
    edit(path, f"INSERT INTO tokenstore_listener VALUES ({claimant}, X'00', NULL)")
    with tokenstore.open(path) as store:
        store.users.create("alice")
    assert sqlite3.connect(path).execute("SELECT count(*) FROM tokenstore_listener").fetchone() == (
        0,
    )


def test_an_event_for_a_table_named_in_text_that_is_no_utf8_waits_without_failing(
    path: Path,
) -> None:
    tokenstore.open(path).close()
    edit(
        path,
        "INSERT INTO tokenstore_change_event (table_name, op, row_pk, old_row, new_row) "
        f"VALUES ({NOT_UTF8}, 'INSERT', 1, NULL, '{{}}')",
    )
    with tokenstore.open(path) as store:
        assert store.dispatch().waiting == {"\ufffd\ufffd": 1}
