"""API tokens: the APIToken members of the spec, issuing, authenticating, revoking."""

from __future__ import annotations

import email.message
import hashlib
import itertools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from wsgiref.headers import Headers as WSGIHeaders

import _db
import pytest
from conftest import Clock

import tokenstore._store
from tokenstore import DamagedRow, Store, signals
from tokenstore import _tokens as tokens
from tokenstore._credentials import generate_token, looks_like_token
from tokenstore._errors import (
    AuthenticationError,
    ExpiredToken,
    InvalidToken,
    MissingScope,
    NotFound,
    RevokedToken,
    ValidationError,
)
from tokenstore._models import APIToken, User
from tokenstore._request_token import token_from_request
from tokenstore._times import format_time
from tokenstore._tokens import Tokens
from tokenstore._users import usernames

START = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
MS = timedelta(milliseconds=1)


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


def stored_row(store: Store, token: APIToken) -> dict[str, Any]:
    with _db.Raw(store) as raw:
        [row] = raw.dicts("SELECT * FROM tokenstore_api_token WHERE id = ?", (token.id.hex,))
    return row


# -- the model's members -----------------------------------------------------------------


def test_generate_secret_token_gives_a_checksummed_secret() -> None:
    secret = APIToken.generate_secret_token()
    assert secret.startswith("tsk_") and len(secret) == 40
    assert looks_like_token(secret)
    assert APIToken.generate_secret_token("acme").startswith("acme_")
    assert APIToken.generate_secret_token() != secret


def test_create_fills_every_member(ts: Store, clock: Clock) -> None:
    alice = ts.users.create("alice")
    token, secret = ts.tokens.create(alice, name="laptop")
    assert isinstance(token.id, uuid.UUID) and token.id.version == 4
    assert token.abid.startswith("apt_") and len(token.abid) == 30
    assert token.abid == str(token.compute_abid())
    assert token.ABID.datetime == token.created_at == START
    assert token.created_by_id == alice.id and token.created_by.username == "alice"
    assert token.modified_at == token.created_at
    assert token.name == "laptop"
    assert token.expires is None and token.revoked_at is None and token.last_used_at is None
    assert token.scopes == []
    assert token.token_hint == secret[-4:]
    assert token.token_digest == hashlib.sha256(secret.encode()).hexdigest()
    again = ts.tokens.get(token.abid)
    for field in APIToken._meta.sorted_fields:
        assert getattr(again, field.name) == getattr(token, field.name), field.name


def test_owner_defaults_to_the_system_user_and_accepts_name_or_id(ts: Store) -> None:
    bob = ts.users.create("bob")
    assert ts.tokens.create()[0].created_by_id == ts.system_user.id
    assert ts.tokens.create("bob")[0].created_by_id == bob.id
    assert ts.tokens.create(bob.id)[0].created_by_id == bob.id
    with pytest.raises(NotFound, match="nobody"):
        ts.tokens.create("nobody")
    with pytest.raises(ValidationError, match="must be a User"):
        ts.tokens.create(1.5)  # type: ignore[arg-type]


def test_redacted_forms_show_only_the_hint(ts: Store) -> None:
    ts.users.create("admin")
    token, secret = ts.tokens.create("admin")
    assert token.token_redacted == "************" + secret[-4:]
    assert str(token) == token.token_redacted
    assert repr(token) == f"<APIToken user=admin token=************{secret[-4:]}>"
    for shown in (str(token), repr(token), json.dumps(token.__json__())):
        assert secret not in shown and secret[4:-6] not in shown


def test_repr_survives_a_missing_owner() -> None:
    token = APIToken(token_hint="abcd")
    assert repr(token) == "<APIToken user=None token=************abcd>"


def test_json_has_the_original_keys_in_order(ts: Store, clock: Clock) -> None:
    token, _ = ts.tokens.create(expires=timedelta(days=1))
    data = token.__json__()
    assert list(data) == ["TYPE", "id", "abid", "created_by_id", "token", "created_at", "expires"]
    assert data == {
        "TYPE": "APIToken",
        "id": str(token.id),
        "abid": token.abid,
        "created_by_id": str(ts.system_user.id),
        "token": token.token_redacted,
        "created_at": START.isoformat(),
        "expires": (START + timedelta(days=1)).isoformat(),
    }
    json.dumps(data)


def test_expires_as_iso8601_is_none_without_expiry(ts: Store) -> None:
    token, _ = ts.tokens.create()
    assert token.expires_as_iso8601 is None
    token, _ = ts.tokens.create(expires=START + timedelta(hours=1))
    assert token.expires_as_iso8601 == "2030-01-02T04:04:05.678000+00:00"


def test_is_valid_until_and_at_the_exact_instant_of_expiry(ts: Store) -> None:
    token, _ = ts.tokens.create(expires=timedelta(hours=1))
    expires = START + timedelta(hours=1)
    assert token.expires == expires
    assert token.is_valid(for_date=expires - MS)
    assert token.is_valid(for_date=expires)
    assert not token.is_valid(for_date=expires + timedelta(microseconds=1))
    assert token.is_valid(for_date=expires.astimezone(timezone(timedelta(hours=5))))
    with pytest.raises(ValidationError, match="timezone-aware"):
        token.is_valid(for_date=datetime(2030, 1, 1))


def test_is_valid_without_expiry_and_after_revocation(ts: Store) -> None:
    token, _ = ts.tokens.create()
    assert token.is_valid()
    assert token.is_valid(for_date=datetime(9999, 1, 1, tzinfo=UTC))
    ts.tokens.revoke(token)
    assert not token.is_valid()
    assert not token.is_valid(for_date=START)


# -- creating ----------------------------------------------------------------------------


def test_expires_takes_a_timedelta_from_the_store_clock(ts: Store, clock: Clock) -> None:
    clock.advance(days=3)
    token, _ = ts.tokens.create(expires=timedelta(minutes=5, microseconds=1500))
    assert token.expires == START + timedelta(days=3, minutes=5, milliseconds=1)
    assert token.created_at == START + timedelta(days=3)
    assert stored_row(ts, token)["expires"] == format_time(token.expires)


@pytest.mark.parametrize(
    ("expires", "message"),
    [
        (datetime(2031, 1, 1), "^expires: naive datetime"),
        (
            datetime(9999, 12, 31, 23, tzinfo=timezone(-timedelta(hours=5))),
            "^expires: .*out of range",
        ),
        (datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))), "^expires: .*out of range"),
        (START - MS, "not in the future"),
        (
            START,
            r"^expires 2030-01-02T03:04:05\.678Z is not in the future"
            r" \(now is 2030-01-02T03:04:05\.678Z\)$",
        ),
        (START + timedelta(days=36526), r"^expires 2130-\d\d-\d\dT03:04:05\.678Z is more than"),
        (timedelta(0), "positive timedelta"),
        (timedelta(seconds=-1), "positive timedelta"),
        (timedelta(microseconds=999), "not in the future"),  # stored to the millisecond: now
        ("2031-01-01T00:00:00Z", "datetime, a timedelta or None"),
    ],
)
def test_bad_expiry_is_refused_and_nothing_written(ts: Store, expires: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ts.tokens.create(expires=expires)
    assert APIToken.select().count() == 0


def test_scopes_are_checked_deduplicated_and_sorted(ts: Store) -> None:
    token, _ = ts.tokens.create(scopes=["write", "read:all", "read:all", "a.b_c-d"])
    assert token.scopes == ["a.b_c-d", "read:all", "write"]
    assert json.loads(stored_row(ts, token)["scopes"]) == token.scopes
    for bad in (["Read"], ["has space"], [""], [3], ["x" * 101]):
        with pytest.raises(ValidationError, match="scope"):
            ts.tokens.create(scopes=bad)
    with pytest.raises(ValidationError, match=r"\['read'\]"):
        ts.tokens.create(scopes="read")
    assert len(ts.tokens.create(scopes=[f"s{i}" for i in range(100)])[0].scopes) == 100
    with pytest.raises(ValidationError, match="at most 100 scopes, got 101"):
        ts.tokens.create(scopes=[f"s{i}" for i in range(101)])
    assert APIToken.select().count() == 2


def test_scopes_given_as_a_mapping_or_without_end_are_refused(ts: Store) -> None:
    """A dict iterates as its keys, which were kept as the scopes, its values dropped; an
    iterator without end was read until memory ran out."""
    with pytest.raises(ValidationError, match="scopes must be a list of strings, got dict"):
        ts.tokens.create(scopes={"read": True})  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="scopes must be a list of at most 10000 strings"):
        ts.tokens.create(scopes=itertools.repeat("read"))
    assert ts.tokens.create(scopes=["read"] * 10_000)[0].scopes == ["read"]
    assert APIToken.select().count() == 1


def test_name_must_be_short_text(ts: Store) -> None:
    assert ts.tokens.create(name="x" * 255)[0].name == "x" * 255
    for bad in ("x" * 256, 42):
        with pytest.raises(ValidationError, match="name"):
            ts.tokens.create(name=bad)  # type: ignore[arg-type]


def test_a_secret_given_as_the_name_is_refused_not_stored(ts: Store) -> None:
    # The name is kept in clear and shown by tokens list: a secret pasted there
    # would be readable in the file by anyone who can copy it.
    _, secret = ts.tokens.create()
    for name in (secret, f"ci {secret}\n", "0123456789abcdef0123456789abcdef", "whsec_abc"):
        with pytest.raises(ValidationError, match=r"name looks like a secret \(not shown\)") as err:
            ts.tokens.create(name=name)
        assert name.split()[-1] not in str(err.value)
    assert APIToken.select().count() == 1
    assert ts.tokens.create(name="ci, tsk_ keys")[0].name == "ci, tsk_ keys"


def test_a_secret_glued_into_a_name_is_refused_not_stored(ts: Store) -> None:
    # Only whole words were judged, so a secret pasted as key=value, a header line or
    # a URL's query was kept in clear; a 40-digit commit hash is no ArchiveBox key.
    _, secret = ts.tokens.create()
    legacy = "0123456789abcdef0123456789abcdef"
    for name in (
        f"ci key={secret}",
        f"X-API-Key:{secret}",
        f"https://app.example/?api_key={legacy}&x=1",
        f"deploy/{secret}\u200b",
        "secret=whsec_abc",
    ):
        with pytest.raises(ValidationError, match=r"name looks like a secret \(not shown\)"):
            ts.tokens.create(name=name)
    assert APIToken.select().count() == 1
    commit = "deploy 3f2a" + legacy + "9c1e"
    assert ts.tokens.create(name=commit)[0].name == commit


def test_a_secret_given_as_a_scope_is_refused_not_stored(ts: Store) -> None:
    # Scopes are kept in clear, listed and quoted in MissingScope messages, as names are;
    # an ArchiveBox key (32 lowercase hex digits) fits the scope alphabet.
    legacy = "0123456789abcdef0123456789abcdef"
    with pytest.raises(ValidationError, match=r"scope looks like a secret \(not shown\)") as err:
        ts.tokens.create(scopes=["read", legacy])
    assert legacy not in str(err.value)
    assert APIToken.select().count() == 0
    assert ts.tokens.create(scopes=["0123456789abcdef"])[0].scopes == ["0123456789abcdef"]


def test_token_prefix_is_configurable_and_old_prefixes_still_work(
    db_path: Path, clock: Clock
) -> None:
    with tokenstore._store.open(db_path, token_prefix="acme", clock=clock) as s:
        _, old = s.tokens.create()
        assert old.startswith("acme_") and looks_like_token(old, prefix="acme")
    with tokenstore._store.open(db_path, token_prefix="corp", clock=clock) as s:
        _, new = s.tokens.create()
        assert new.startswith("corp_")
        assert s.tokens.authenticate(old).token_hint == old[-4:]
    with pytest.raises(ValidationError, match="prefix"):
        tokenstore._store.open(db_path, token_prefix="Bad")


# -- the per-user limit ------------------------------------------------------------------


def test_limit_refuses_creation_beyond_live_tokens(ts: Store, clock: Clock) -> None:
    limited = Tokens(ts.db, ts.users, ts.clock, max_tokens_per_user=2)
    alice = ts.users.create("alice")
    first, _ = limited.create(alice)
    limited.create(alice, expires=timedelta(minutes=1))
    with pytest.raises(ValidationError, match="already has 2 live API tokens"):
        limited.create(alice)
    limited.create("system")  # another user has their own allowance
    limited.revoke(first)
    limited.create(alice)  # a revoked token no longer counts
    with pytest.raises(ValidationError):
        limited.create(alice)
    clock.advance(minutes=1, milliseconds=1)
    limited.create(alice)  # nor does an expired one
    assert len(limited.list(alice)) == 3
    assert len(limited.list(alice, include_revoked=True)) == 4


def test_a_token_counts_against_the_limit_exactly_while_it_authenticates(
    ts: Store, clock: Clock
) -> None:
    limited = Tokens(ts.db, ts.users, ts.clock, max_tokens_per_user=1)
    _, secret = limited.create(expires=timedelta(minutes=1))
    clock.advance(minutes=1)  # the instant it expires: still valid, so still live
    limited.authenticate(secret)
    with pytest.raises(ValidationError, match="already has 1 live API tokens"):
        limited.create()
    clock.advance(microseconds=1)  # past it, if by less than the stored millisecond
    with pytest.raises(ExpiredToken):
        limited.authenticate(secret)
    limited.create()  # expired, so not live


def test_limit_holds_against_concurrent_creators(ts: Store) -> None:
    limited = Tokens(ts.db, ts.users, ts.clock, max_tokens_per_user=3)
    owner = ts.users.create("busy")

    def create(n: int) -> str:
        try:
            limited.create(owner)
        except ValidationError:
            return "refused"
        return "created"

    def linger(sender: Any, **kwargs: Any) -> None:
        time.sleep(0.05)  # between counting and inserting: time for the others to count

    signals.pre_save.connect(linger, sender=APIToken)
    try:
        outcomes = _db.at_once(ts, 8, create)
    finally:
        signals.pre_save.disconnect(linger, sender=APIToken)
    assert sorted(outcomes) == ["created"] * 3 + ["refused"] * 5
    assert APIToken.select().where(APIToken.created_by == owner.id).count() == 3


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3"])
def test_limit_must_be_a_positive_int(ts: Store, bad: Any) -> None:
    with pytest.raises(ValidationError, match="max_tokens_per_user"):
        Tokens(ts.db, ts.users, ts.clock, max_tokens_per_user=bad)


# -- authenticating ----------------------------------------------------------------------


def test_authenticate_works_on_after_the_connection_was_closed_and_in_other_threads(
    ts: Store,
) -> None:
    """The lookup's cursor is kept per thread and connection: a new connection gets its own."""
    _, secret = ts.tokens.create(name="ci")
    assert ts.tokens.authenticate(secret).name == "ci"
    ts.db.close()  # this thread's connection: the next check opens another
    assert ts.tokens.authenticate(secret).name == "ci"
    found: list[str] = []
    worker = threading.Thread(target=lambda: found.append(ts.tokens.authenticate(secret).name))
    worker.start()
    worker.join(timeout=30)
    assert found == ["ci"]
    assert ts.tokens.authenticate(secret).name == "ci"


def test_authenticate_returns_the_token_as_a_select_would(ts: Store) -> None:
    token, secret = ts.tokens.create(name="ci", scopes=["read"], expires=timedelta(days=1))
    found = ts.tokens.authenticate(secret)
    ts.tokens.flush_uses()
    loaded = APIToken.get_by_id(token.id)
    assert found.__data__ == loaded.__data__
    assert found.last_used_at == START
    assert vars(found).keys() == vars(loaded).keys()
    assert found._stored == loaded._stored and not found._dirty and not found.dirty_fields
    assert found.created_by.username == "system"
    found.name = "renamed"  # the instance is a normal one: it saves
    found.save()
    assert ts.tokens.get(token.abid).name == "renamed"


def test_rows_written_by_hand_still_convert(ts: Store, clock: Clock) -> None:
    token, secret = ts.tokens.create(scopes=["read"])
    with _db.Raw(ts) as raw:  # another program writes a time with an offset and one without a zone
        raw.execute(
            "UPDATE tokenstore_api_token SET expires = '2030-01-02T07:00:00+02:00', "
            "last_used_at = '2030-01-02T03:04:05' WHERE id = ?",
            (token.id.hex,),
        )
    found = ts.tokens.authenticate(secret)
    assert found.id == token.id
    assert found.expires == datetime(2030, 1, 2, 5, 0, tzinfo=UTC)
    assert found.last_used_at == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert found.scopes == ["read"]


@pytest.mark.parametrize("stored", ['"admin"', "null", "[1]", '[["admin"]]', '{"admin":1}'])
def test_scopes_edited_into_no_list_of_strings_grant_nothing(ts: Store, stored: str) -> None:
    """A JSON string would grant every part of itself (``'adm' in 'admin'``); other shapes
    raised a raw TypeError. The row is damaged: the token is refused, naming it."""
    token, secret = ts.tokens.create(scopes=["read"])
    with _db.Raw(ts) as raw:
        raw.execute(
            "UPDATE tokenstore_api_token SET scopes = ? WHERE id = ?", (stored, token.id.hex)
        )
    for scope in ("adm", "admin", None):
        with pytest.raises(ValidationError, match=f"{token.abid}.*scopes") as caught:
            ts.tokens.authenticate(secret, scope)
        assert secret not in str(caught.value)
    try:
        read = ts.tokens.get(token.abid)  # a copy read for a later check grants nothing either
    except DamagedRow:  # not even a list: the row cannot be read at all
        assert not stored.startswith("[")
    else:
        assert not read.has_scope("adm") and not read.has_scope("admin")


@pytest.mark.parametrize("scopes", ["admin", {"admin": 1}])
def test_scopes_of_another_shape_saved_through_the_model_are_refused_unwritten(
    ts: Store, scopes: Any
) -> None:
    """A token's scopes set to a string and saved made a row tokenstore itself then called
    damaged, and every listing of tokens failed on it."""
    token, secret = ts.tokens.create(scopes=["read"])
    token.scopes = scopes
    with pytest.raises(ValidationError, match="scopes must be a list"):
        token.save()
    assert [t.scopes for t in ts.tokens.list()] == [["read"]]
    assert ts.tokens.authenticate(secret, "read").abid == token.abid


@pytest.mark.sqlite_only
def test_lookup_uses_the_digest_index(ts: Store) -> None:
    plan = " ".join(
        str(row)
        for row in ts.db.connection().execute(
            "EXPLAIN QUERY PLAN " + tokens._SELECT_BY_DIGEST, ("x",)
        )
    )
    assert "USING INDEX tokenstore_api_token_token_digest" in plan


def test_authentication_is_one_select_and_use_is_written_later_at_most_once_a_minute(
    ts: Store, clock: Clock
) -> None:
    token, secret = ts.tokens.create()
    first = _db.statements_during(ts, lambda: ts.tokens.authenticate(secret))
    assert len(first) == 1 and first[0].startswith("SELECT") and "token_digest = " in first[0]
    assert stored_row(ts, token)["last_used_at"] is None  # noted, not yet written
    assert ts.tokens.flush_uses() == 1
    assert stored_row(ts, token)["last_used_at"] == format_time(START)

    clock.advance(seconds=59, milliseconds=999)
    again = _db.statements_during(ts, lambda: ts.tokens.authenticate(secret))
    assert len(again) == 1 and again[0].startswith("SELECT")
    assert ts.tokens.flush_uses() == 0
    assert stored_row(ts, token)["last_used_at"] == format_time(START)

    clock.advance(milliseconds=1)
    found = ts.tokens.authenticate(secret)
    assert found.last_used_at == START + timedelta(minutes=1)
    ts.close()  # closing writes what was noted
    assert stored_row(ts, token)["last_used_at"] == format_time(START + timedelta(minutes=1))


def test_last_used_at_is_quiet_but_revocation_is_an_event(ts: Store, clock: Clock) -> None:
    token, secret = ts.tokens.create()
    events: list[Any] = []

    def receive(sender: Any, event: Any) -> None:
        events.append(event)

    signals.row_changed.connect(receive)
    try:
        ts.tokens.authenticate(secret)
        clock.advance(minutes=2)
        ts.tokens.authenticate(secret)
        ts.tokens.flush_uses()
        assert stored_row(ts, token)["last_used_at"] == format_time(clock.now)
        assert events == []
        ts.tokens.revoke(token)
    finally:
        signals.row_changed.disconnect(receive)
    assert [(e.table, e.op) for e in events] == [("tokenstore_api_token", "UPDATE")]
    assert events[0].new["revoked_at"] == format_time(clock.now)
    assert "token_digest" not in events[0].new


@pytest.mark.parametrize(
    "garbage",
    [None, b"tsk_x", 42, "", "tsk_", "not a token", "tsk_" + "A" * 36, "x" * 10_000, "tsk_\ud800"],
)
def test_malformed_secrets_are_refused_with_at_most_one_read(ts: Store, garbage: Any) -> None:
    def attempt() -> None:
        with pytest.raises(InvalidToken, match=r"malformed|missing"):
            ts.tokens.authenticate(garbage)

    ran = _db.statements_during(ts, attempt)
    assert len(ran) <= 1 and all(sql.startswith("SELECT") for sql in ran)


class _Text(str):
    """A str subclass, as frameworks hand over header values (Django's SafeString, say)."""

    def __str__(self) -> str:
        return "not the secret"


def test_a_secret_in_a_str_subclass_authenticates_as_text(ts: Store) -> None:
    token, secret = ts.tokens.create(scopes=["read"])
    assert ts.tokens.authenticate(_Text(secret), scope="read").id == token.id
    with pytest.raises(InvalidToken, match="checksum"):
        ts.tokens.authenticate(_Text(secret[:-1] + "?"))


@pytest.mark.parametrize(
    "around", ["Bearer {}", "Authorization: Bearer {}", "{}\n", " {}", "'{}'", "api_key={}"]
)
def test_a_secret_with_more_around_it_is_told_to_be_passed_alone(ts: Store, around: str) -> None:
    """A header's value copied whole ('Bearer tsk_...'), or the secret with its line end,
    was 'malformed or fails its checksum', as if a character of it were wrong."""
    _, secret = ts.tokens.create()
    with pytest.raises(InvalidToken, match="pass the token alone") as caught:
        ts.tokens.authenticate(around.format(secret))
    assert secret[4:-6] not in str(caught.value)
    with pytest.raises(InvalidToken, match=r"fails its checksum$"):  # no token in it
        ts.tokens.authenticate(around.format(secret[:-1] + ("B" if secret[-1] != "B" else "C")))


def test_a_changed_character_fails_the_checksum(ts: Store) -> None:
    _, secret = ts.tokens.create()
    for index in (4, 20, len(secret) - 1):
        original = secret[index]
        replacement = "B" if original != "B" else "C"
        changed = secret[:index] + replacement + secret[index + 1 :]

        def attempt(changed: str = changed) -> None:
            with pytest.raises(InvalidToken, match="checksum") as caught:
                ts.tokens.authenticate(changed)
            assert changed not in str(caught.value) and secret[4:-6] not in str(caught.value)

        ran = _db.statements_during(ts, attempt)
        assert len(ran) == 1 and ran[0].startswith("SELECT")


def test_a_well_formed_unknown_secret_costs_one_select(ts: Store) -> None:
    ts.tokens.create()

    def attempt() -> None:
        with pytest.raises(InvalidToken, match="not recognised"):
            ts.tokens.authenticate(generate_token())

    seen = _db.statements_during(ts, attempt)
    assert len(seen) == 1 and seen[0].startswith("SELECT")


def test_expiry_boundaries(ts: Store, clock: Clock) -> None:
    token, secret = ts.tokens.create(expires=timedelta(hours=2))
    clock.now = START + timedelta(hours=2)  # the exact instant: still valid
    assert ts.tokens.authenticate(secret).id == token.id
    clock.now += timedelta(microseconds=1)
    with pytest.raises(ExpiredToken, match=r"expired at 2030-01-02T05:04:05\.678Z$") as caught:
        ts.tokens.authenticate(secret)
    assert token.abid in str(caught.value) and secret not in str(caught.value)
    assert isinstance(caught.value, AuthenticationError)
    clock.now = START + timedelta(hours=1)  # a clock set back sees it valid again
    assert ts.tokens.authenticate(secret).id == token.id


def test_revoke_is_immediate_irreversible_and_idempotent(ts: Store, clock: Clock) -> None:
    token, secret = ts.tokens.create()
    ts.tokens.authenticate(secret)
    returned = ts.tokens.revoke(token)
    assert returned.revoked_at == token.revoked_at == START
    with pytest.raises(RevokedToken, match=r"revoked at 2030-01-02T03:04:05\.678Z$") as caught:
        ts.tokens.authenticate(secret)
    assert secret not in str(caught.value)

    clock.advance(hours=1)
    assert ts.tokens.revoke(token.abid).revoked_at == START  # the first revocation stands
    again = ts.tokens.get(token.abid)
    again.revoked_at = None
    with pytest.raises(
        ValidationError, match=r"revoked at 2030-01-02T03:04:05\.678Z; .*cannot be undone"
    ):
        again.save()
    again.revoked_at = clock.now
    with pytest.raises(ValidationError, match="cannot be undone"):
        again.save()
    assert stored_row(ts, token)["revoked_at"] == format_time(START)
    with pytest.raises(NotFound, match="no API token apt_01J00000000000000000000000"):
        ts.tokens.revoke("apt_01j00000000000000000000000")
    with pytest.raises(ValidationError, match="not an API token ABID"):
        ts.tokens.revoke("apt_01J0000000000000000000000000")
    with pytest.raises(ValidationError, match="secret, not a token's ABID") as caught:
        ts.tokens.revoke(secret)
    assert secret not in str(caught.value)


def test_saving_a_copy_read_before_the_revocation_does_not_undo_it(ts: Store) -> None:
    token, secret = ts.tokens.create(name="before")
    stale = ts.tokens.authenticate(secret)  # a copy read while the token was live
    ts.tokens.revoke(token.abid)
    stale.name = "renamed"
    stale.save()
    assert stored_row(ts, token)["name"] == "renamed"
    assert stored_row(ts, token)["revoked_at"] is not None
    with pytest.raises(RevokedToken):
        ts.tokens.authenticate(secret)


@pytest.mark.parametrize("revoked_at", [None, START + timedelta(days=1)])
def test_a_copy_read_before_the_revocation_cannot_set_revoked_at(
    ts: Store, revoked_at: datetime | None
) -> None:
    token, secret = ts.tokens.create(name="before")
    stale = ts.tokens.authenticate(secret)
    ts.tokens.revoke(token.abid)
    stale.revoked_at = revoked_at  # the copy knows nothing of the revocation
    with pytest.raises(ValidationError, match=rf"API token {token.abid} was revoked meanwhile"):
        stale.save()
    assert stored_row(ts, token)["revoked_at"] == format_time(START)
    with ts.db.atomic():  # the store still writes
        ts.tokens.create(name="after")


def test_the_file_itself_refuses_to_undo_a_revocation(ts: Store) -> None:
    token, _ = ts.tokens.create()
    ts.tokens.revoke(token)
    raw = _db.Raw(ts)
    try:
        with pytest.raises(raw.errors.IntegrityError, match="revocation is final"):
            raw.execute("UPDATE tokenstore_api_token SET revoked_at = NULL")
    finally:
        raw.close()
    assert stored_row(ts, token)["revoked_at"] is not None


def test_revoked_beats_expired(ts: Store, clock: Clock) -> None:
    token, secret = ts.tokens.create(expires=timedelta(minutes=1))
    ts.tokens.revoke(token)
    clock.advance(hours=1)
    with pytest.raises(RevokedToken):
        ts.tokens.authenticate(secret)


def test_scopes_restrict_and_no_scopes_means_unrestricted(ts: Store) -> None:
    scoped, scoped_secret = ts.tokens.create(scopes=["read", "snapshots:write"])
    _, open_secret = ts.tokens.create()
    assert ts.tokens.authenticate(scoped_secret, scope="read").id == scoped.id
    assert ts.tokens.authenticate(scoped_secret, scope="snapshots:write").id == scoped.id
    with pytest.raises(MissingScope, match="lacks scope 'admin'; it has: read, snapshots:write"):
        ts.tokens.authenticate(scoped_secret, scope="admin")
    assert ts.tokens.authenticate(open_secret, scope="admin").scopes == []
    with pytest.raises(ValidationError, match="scope"):
        ts.tokens.authenticate(open_secret, scope="Not Valid")
    assert scoped.has_scope("read") and not scoped.has_scope("admin")


def test_returned_scopes_are_the_callers_to_change(ts: Store) -> None:
    _, secret = ts.tokens.create(scopes=["read"])
    for _ in range(3):  # the first call reads the row, later ones reuse its conversion
        scopes = ts.tokens.authenticate(secret).scopes
        assert scopes == ["read"]
        scopes.append("admin")
    with pytest.raises(MissingScope):
        ts.tokens.authenticate(secret, scope="admin")


def test_a_row_changed_elsewhere_is_seen_on_the_next_call(ts: Store) -> None:
    token, secret = ts.tokens.create(scopes=["read"])
    ts.tokens.authenticate(secret, scope="read")
    with _db.Raw(ts) as raw:
        raw.execute(
            "UPDATE tokenstore_api_token SET scopes = '[\"write\"]', "
            "revoked_at = '2030-01-01T00:00:00.000Z' WHERE id = ?",
            (token.id.hex,),
        )
    with pytest.raises(RevokedToken):
        ts.tokens.authenticate(secret, scope="read")


def test_a_user_deleted_by_another_program_takes_its_tokens_with_it(ts: Store) -> None:
    """The sqlite3 shell does not enforce foreign keys unless told: the user's row goes and
    its tokens stay behind. They must stop working all the same, at once."""
    alice = ts.users.create("alice")
    _, secret = ts.tokens.create(alice)
    _, other = ts.tokens.create()
    ts.tokens.authenticate(secret)
    _db.edit(ts, "DELETE FROM tokenstore_user WHERE username = 'alice'")
    with pytest.raises(InvalidToken, match="not recognised"):
        ts.tokens.authenticate(secret)
    assert ts.tokens.authenticate(other).created_by_id == ts.system_user.id


def test_concurrent_authentication_from_threads(ts: Store, clock: Clock) -> None:
    issued = [ts.tokens.create(name=f"t{i}") for i in range(5)]
    revoked, revoked_secret = ts.tokens.create()
    ts.tokens.revoke(revoked)

    def work(n: int) -> None:
        for i in range(150):
            token, secret = issued[(n + i) % len(issued)]
            assert ts.tokens.authenticate(secret).id == token.id
            with pytest.raises(RevokedToken):
                ts.tokens.authenticate(revoked_secret)
            if i % 25 == 0:
                clock.advance(minutes=1)  # every thread now also races to write

    assert _db.at_once(ts, 6, work) == [None] * 6
    ts.tokens.flush_uses()
    for token, _ in issued:
        assert stored_row(ts, token)["last_used_at"] is not None


# -- listing and getting -----------------------------------------------------------------


def test_list_and_get(ts: Store, clock: Clock) -> None:
    alice = ts.users.create("alice")
    a1, _ = ts.tokens.create(alice, name="a1")
    clock.advance(seconds=1)
    s1, _ = ts.tokens.create(name="s1", expires=timedelta(seconds=1))
    clock.advance(seconds=1)
    a2, _ = ts.tokens.create(alice, name="a2")
    ts.tokens.revoke(a1)
    clock.advance(hours=1)
    assert [t.name for t in ts.tokens.list()] == ["s1", "a2"]  # expired ones are listed
    assert [t.name for t in ts.tokens.list(include_revoked=True)] == ["a1", "s1", "a2"]
    assert [t.name for t in ts.tokens.list("alice", include_revoked=True)] == ["a1", "a2"]
    assert [t.name for t in ts.tokens.list(alice)] == ["a2"]
    assert ts.tokens.get(s1.abid).name == "s1"
    with pytest.raises(NotFound, match="apt_"):
        ts.tokens.get("apt_01J00000000000000000000000")
    with pytest.raises(ValidationError):
        ts.tokens.get(a2.id)  # type: ignore[arg-type]


def pages_back(listing: Callable[..., list[Any]], key: str) -> list[list[str]]:
    """Pages of three, each from the first of the one before, until one comes back empty."""
    pages: list[list[str]] = []
    cursor = None
    while page := listing(limit=3, before=cursor):
        pages.append([getattr(record, key) for record in page])
        cursor = page[0]
        assert len(pages) < 10
    return pages


def test_list_pages_back_from_the_newest_with_limit_and_before(ts: Store, clock: Clock) -> None:
    """``limit`` keeps the newest tokens of the listing (still oldest first, as ``tail``
    does) and ``before`` continues from a token: pages walk back from the newest with
    no gap and no repeat, across tokens made in the same millisecond too."""
    for i in range(7):
        ts.tokens.create(name=f"t{i}")
        if i % 3 != 1:  # t1 and t2, t4 and t5 share their millisecond: the ABID orders them
            clock.advance(seconds=1)
    everyone = [t.abid for t in ts.tokens.list()]
    assert [t.abid for t in ts.tokens.list(limit=100)] == everyone
    pages = pages_back(ts.tokens.list, "abid")
    assert [len(page) for page in pages] == [3, 3, 1]
    assert [abid for page in reversed(pages) for abid in page] == everyone
    assert [t.abid for t in ts.tokens.list(before=everyone[3].lower())] == everyone[:3]

    ts.tokens.revoke(everyone[5])
    assert [t.abid for t in ts.tokens.list(limit=2)] == [everyone[4], everyone[6]]
    shown = ts.tokens.list(limit=2, include_revoked=True)
    assert [t.abid for t in shown] == everyone[5:]
    assert [t.abid for t in ts.tokens.list("system", limit=1, before=everyone[1])] == everyone[:1]


def test_users_list_pages_back_from_the_newest(ts: Store) -> None:
    """As ``tokens.list``: ``limit`` keeps the newest, ``before`` (a user, a name or an
    id) continues from a user, and the pages put together are the whole list."""
    for i in range(6):
        ts.users.create(f"u{i}")
    everyone = [u.username for u in ts.users.list()]
    assert everyone == ["system", "u0", "u1", "u2", "u3", "u4", "u5"]
    pages = pages_back(ts.users.list, "username")
    assert pages == [["u3", "u4", "u5"], ["u0", "u1", "u2"], ["system"]]
    assert [u.username for u in ts.users.list(limit=2, before="u3")] == ["u1", "u2"]
    u1 = ts.users.get("u1")
    assert [u.username for u in ts.users.list(before=u1.id)] == ["system", "u0"]
    with pytest.raises(NotFound, match="nobody"):
        ts.users.list(before="nobody")
    with pytest.raises(ValidationError, match="'ghost' is not saved yet"):
        ts.users.list(before=User(username="ghost"))  # no id to page back from: not "no users"
    for bad in (0, True, "2"):
        with pytest.raises(ValidationError, match="limit"):
            ts.users.list(limit=bad)  # type: ignore[arg-type]


def test_usernames_names_the_users_asked_for_in_as_many_queries_as_it_takes(ts: Store) -> None:
    """What a listing of tokens uses to name their owners, rather than reading every user."""
    with ts.atomic():
        made = {ts.users.create(f"u{i}").id: f"u{i}" for i in range(1201)}
    asked = [*made, *made, 10**9]  # repeated ids, and one no user has
    assert usernames(asked) == made
    some = sorted(made)[::300]
    assert usernames(iter(some)) == {id_: made[id_] for id_ in some}
    assert usernames([]) == {}


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "3", [3]])
def test_list_refuses_a_limit_that_is_no_positive_whole_number(ts: Store, bad: Any) -> None:
    with pytest.raises(ValidationError, match="limit"):
        ts.tokens.list(limit=bad)


def test_a_bad_cursor_is_named_as_the_before_it_was_given_as(ts: Store) -> None:
    """The message of a lookup alone ("not an API token ABID") leaves the caller guessing which."""
    calls = [
        (lambda: ts.tokens.list(before="garbage"), ValidationError),
        (lambda: ts.tokens.list(before="apt_01J00000000000000000000000"), NotFound),
        (lambda: ts.users.list(before=[1]), ValidationError),  # type: ignore[arg-type]
        (lambda: ts.users.list(before="nobody"), NotFound),
        (lambda: ts.webhooks.deliveries(before="xx"), NotFound),
    ]
    for call, kind in calls:
        with pytest.raises(kind) as raised:
            call()
        assert str(raised.value).startswith("before: "), str(raised.value)


def test_list_before_an_unknown_or_mistaken_token_says_so(ts: Store) -> None:
    with pytest.raises(NotFound, match="apt_01J00000000000000000000000"):
        ts.tokens.list(before="apt_01J00000000000000000000000")
    _, secret = ts.tokens.create()
    with pytest.raises(ValidationError) as refused:
        ts.tokens.list(before=secret)
    assert secret not in str(refused.value)


# -- reading a token from a request ------------------------------------------------------


def test_token_from_request_follows_archivebox_order() -> None:
    assert token_from_request({"X-API-Key": "k1", "Authorization": "Bearer k2"}, "api_key=k3") == (
        "k1"
    )
    assert token_from_request({"Authorization": "Bearer k2"}, {"api_key": "k3"}) == "k2"
    assert token_from_request({}, {"api_key": "k3"}) == "k3"
    assert token_from_request({}, {"api_key": ["k3", "k4"]}) == "k3"
    assert token_from_request({}, "a=1&api_key=k3") == "k3"
    assert token_from_request({}, None) is None
    assert token_from_request({}, "") is None


def test_header_names_that_are_not_text_are_skipped() -> None:
    """A mapping built by hand may hold any key; only text names a header."""
    headers: dict[Any, str] = {
        1: "k0",
        None: "k0",
        b"X-API-Key": "k0",
        "authorization": "Bearer k2",
    }
    assert token_from_request(headers) == "k2"
    assert token_from_request({1: "k0"}, "api_key=k3") == "k3"


def test_header_objects_of_web_frameworks_are_read() -> None:
    """Flask's ``request.headers`` (werkzeug), ``wsgiref`` and ``http.client`` headers are
    no ``Mapping``, yet have the ``get`` and ``items`` the search needs."""
    wsgiref_headers = WSGIHeaders([("x-api-key", "k1")])
    assert token_from_request(wsgiref_headers) == "k1"
    message = email.message.Message()
    message["Authorization"] = "Bearer k2"
    assert token_from_request(message, "api_key=k3") == "k2"
    assert token_from_request(email.message.Message(), "api_key=k3") == "k3"
    with pytest.raises(ValidationError, match="headers must be a mapping"):
        token_from_request([("X-API-Key", "k1")])  # type: ignore[arg-type]


def test_header_values_given_as_lists_are_read_alike() -> None:
    """Multi-value header maps (API Gateway's ``multiValueHeaders``) hold lists: the first
    value counts, for Authorization as for the API-key headers."""
    assert token_from_request({"X-API-Key": ["k1", "k0"]}) == "k1"
    assert token_from_request({"Authorization": ["Bearer k2", "Bearer k0"]}) == "k2"
    assert token_from_request({"Authorization": ("bearer k2",)}) == "k2"
    assert token_from_request({"Authorization": []}, "api_key=k3") == "k3"


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_bearer_scheme_is_case_insensitive(scheme: str) -> None:
    assert token_from_request({"Authorization": f"{scheme} k2"}) == "k2"


@pytest.mark.parametrize("absent", ["", "string", "None", "null", "  ", " null "])
def test_placeholder_values_count_as_absent(absent: str) -> None:
    assert token_from_request({"X-API-Key": absent, "Authorization": "Bearer k2"}) == "k2"
    assert token_from_request({"Authorization": f"Bearer {absent}"}, "api_key=k3") == "k3"
    assert token_from_request({}, {"api_key": absent}) is None


def test_header_names_ignore_case_and_other_schemes_are_ignored() -> None:
    assert token_from_request({"x-api-key": "k1"}) == "k1"
    assert token_from_request({"authorization": "bearer k2"}) == "k2"
    assert token_from_request({"Authorization": "Basic dXNlcjpwYXNz"}) is None
    assert token_from_request({"Authorization": "Bearerk2"}) is None
    assert token_from_request({"X-Custom": "k1"}, header="X-Custom") == "k1"
    assert token_from_request({"X-API-Key": "k1"}, header="X-Custom") is None


def test_archiveboxs_own_header_is_read_after_the_configured_one() -> None:
    """Scripts written for ArchiveBox 0.8 send ``X-ArchiveBox-API-Key``; their keys still work."""
    assert token_from_request({"X-ArchiveBox-API-Key": "k1"}) == "k1"
    assert token_from_request({"x-archivebox-api-key": "k1"}, header="X-Custom") == "k1"
    assert token_from_request({"X-ArchiveBox-API-Key": "k1", "X-API-Key": "k0"}) == "k0"
    assert token_from_request({"X-ArchiveBox-API-Key": "k1", "Authorization": "Bearer k2"}) == (
        "k1"
    )
    assert token_from_request({"X-ArchiveBox-API-Key": "null"}, "api_key=k3") == "k3"


@pytest.mark.parametrize("header", [5, None, b"X-API-Key", "", "X API Key", "X-Key\n"])
def test_a_header_that_cannot_name_one_is_refused(header: Any) -> None:
    with pytest.raises(ValidationError, match="header"):
        token_from_request({"X-API-Key": "k1"}, header=header)


def test_store_tokens_use_their_configured_header(ts: Store) -> None:
    assert ts.tokens.token_from_request({"X-API-Key": "k1"}) == "k1"
    custom = Tokens(ts.db, ts.users, ts.clock, header="X-ArchiveBox-API-Key")
    assert custom.token_from_request({"X-ArchiveBox-API-Key": "k1", "X-API-Key": "k0"}) == "k1"


# -- the secret goes nowhere -------------------------------------------------------------


@pytest.mark.sqlite_only
def test_secret_is_absent_from_the_database_files_and_logs(
    ts: Store, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token, secret = ts.tokens.create(name="ci", scopes=["read"])
    ts.tokens.authenticate(secret, scope="read")
    clock.advance(minutes=5)
    ts.tokens.authenticate(secret)
    with pytest.raises(MissingScope):
        ts.tokens.authenticate(secret, scope="write")
    wal = Path(f"{ts.path}-wal")
    assert wal.exists()
    data = ts.path.read_bytes() + wal.read_bytes()
    random_part = secret[4:34]
    assert secret.encode() not in data
    assert random_part.encode() not in data
    # The check can fail: what is stored instead is there to be found.
    assert token.token_digest.encode() in data
    assert token.abid.encode() in data
    assert secret not in caplog.text and random_part not in caplog.text


@pytest.mark.parametrize("name", ["josé", "Jürgen.M", "用户", "ölçü@example.org"])
def test_usernames_take_letters_of_any_script_as_django_does(ts: Store, name: str) -> None:
    """ArchiveBox users are Django users: ``[\\w.@+-]``, letters of any script."""
    assert ts.users.create(name).username == name
    assert ts.users.get(name).username == name


@pytest.mark.parametrize(
    "name", ["a b", "a\u202eb", "e\u0301", "a\x00", "a/b", "a" * 151, "", "\ud800"]
)
def test_usernames_refuse_what_django_refuses(ts: Store, name: str) -> None:
    with pytest.raises(ValidationError, match="username"):
        ts.users.create(name)


def test_a_secret_given_where_a_user_is_named_is_not_repeated(ts: Store) -> None:
    """A secret pasted for a username (``tokenstore tokens create "$SECRET"``) stays out of logs."""
    _, secret = ts.tokens.create()
    legacy = "0123456789abcdef0123456789abcdef"  # an ArchiveBox key
    signing = "whsec_hqRiqLyjxhXJ5jxfH9FsA/P9+LcRKNBf"  # a hook's signing secret
    pasted = ("{}", "{}\n", " {} ", "'{}'", "Bearer {}")  # a line end, blanks, quotes, a scheme
    for given in (form.format(text) for text in (secret, legacy, signing) for form in pasted):
        for call in (ts.users.get, ts.tokens.create, ts.tokens.list):
            with pytest.raises(NotFound, match="looks like a secret") as caught:
                call(given)
            assert given.strip(" '\n")[-30:-4] not in str(caught.value)
    with pytest.raises(NotFound, match="'bob'"):
        ts.users.get("bob")  # other names are quoted back


def test_a_secret_given_as_a_new_username_or_a_scope_is_not_repeated(ts: Store) -> None:
    """``users create "$SECRET"``, ``--scope "$SECRET"``: the refusal does not quote it.

    A username is kept in clear and printed, so a token given as one is refused, as it is
    as a token's name (it was once taken as a name like any other).
    """
    _, secret = ts.tokens.create()
    signing = "whsec_hqRiqLyjxhXJ5jxfH9FsA/P9+LcRKNBf"  # a hook's signing secret ("/" is no name's)
    for call in (
        lambda: ts.users.create(secret),
        lambda: ts.users.create(signing),
        lambda: ts.tokens.create(scopes=[secret]),
        lambda: ts.tokens.authenticate(secret, scope=signing),
    ):
        with pytest.raises(ValidationError, match=r"a secret,? \(?not shown") as caught:
            call()
        assert secret[4:-4] not in str(caught.value) and signing[6:-4] not in str(caught.value)
    with pytest.raises(ValidationError, match="'Bad'"):
        ts.tokens.create(scopes=["Bad"])  # other values are quoted back


@pytest.mark.sqlite_only
def test_a_secret_given_as_a_prefix_a_header_name_or_an_allowed_host_is_not_repeated(
    tmp_path: Path,
) -> None:
    """Options of open() and the header a request is read from: a secret pasted into one."""
    secret = generate_token()
    legacy = "0123456789abcdef0123456789abcdef"  # an ArchiveBox key, which is a valid scope
    signing = "whsec_hqRiqLyjxhXJ5jxfH9FsA/P9+LcRKNBf"  # "/" makes it a malformed network
    refusals: list[Callable[[], object]] = [
        lambda: tokenstore.open(tmp_path / "a.sqlite3", token_prefix=secret),
        lambda: tokenstore.open(tmp_path / "b.sqlite3", api_key_header=signing),
        lambda: tokenstore.open(tmp_path / "c.sqlite3", webhook_allow=[signing]),
        lambda: token_from_request({}, None, signing),
    ]
    for refusal in refusals:
        with pytest.raises(ValidationError, match="secret") as caught:
            refusal()
        assert secret[4:-4] not in str(caught.value) and signing[6:-4] not in str(caught.value)
    with tokenstore.open(tmp_path / "d.sqlite3") as store:
        _, key = store.tokens.create(scopes=["read"])
        with pytest.raises(MissingScope) as missing:
            store.tokens.authenticate(key, scope=legacy)
        assert legacy not in str(missing.value)


def test_a_taken_username_is_refused_and_the_transaction_goes_on(ts: Store) -> None:
    alice = ts.users.create("alice")
    with ts.atomic():
        with pytest.raises(ValidationError, match="'alice' is already taken"):
            ts.users.create("alice")
        bob = ts.users.create("bob")  # on PostgreSQL too: the failed insert had a savepoint
    assert sorted(u.username for u in ts.users.list()) == ["alice", "bob", "system"]
    # a refused name uses up no id, on PostgreSQL (a sequence) as on SQLite
    assert bob.id == alice.id + 1


def test_authentication_does_not_wait_for_a_writer_holding_the_lock(ts: Store) -> None:
    token, secret = ts.tokens.create()
    writer = _db.Raw(ts)  # another process is in the middle of a write
    if writer.postgres:
        ts.db.execute_sql("SET lock_timeout = '2s'")  # a write would wait for the lock: fail
        writer.execute('LOCK TABLE "tokenstore_api_token" IN EXCLUSIVE MODE')
    else:
        writer.execute("BEGIN IMMEDIATE")
    try:
        start = time.monotonic()
        for _ in range(3):
            assert ts.tokens.authenticate(secret).id == token.id
        assert time.monotonic() - start < 1  # the busy timeout is 10 s: no write was tried
    finally:
        writer.rollback()
        writer.close()
    assert ts.tokens.flush_uses() == 1


def test_uses_a_flush_could_not_write_are_kept_and_tried_again(
    db_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """A writer holding the lock past the busy timeout must not cost the use for good."""
    store = tokenstore._store.open(db_path, clock=clock, busy_timeout=5)
    try:
        token, secret = store.tokens.create()
        writer = _db.Raw(store)
        if writer.postgres:
            writer.execute('LOCK TABLE "tokenstore_api_token" IN EXCLUSIVE MODE')
        else:
            writer.execute("BEGIN IMMEDIATE")
        try:
            assert store.tokens.authenticate(secret).last_used_at == START
            with caplog.at_level(logging.WARNING, logger="tokenstore.tokens"):
                store.tokens._flush_in_background()  # the timer's flush, a minute later
            assert "could not record the use of 1 API tokens" in caplog.text
        finally:
            writer.rollback()
            writer.close()
        assert store.tokens._flusher is not None  # the timer tries again in a minute
        clock.advance(seconds=10)
        assert store.tokens.authenticate(secret).last_used_at == START  # still the noted use
        assert store.tokens.flush_uses() == 1
        assert stored_row(store, token)["last_used_at"] == format_time(START)
        assert store.tokens._flusher is None
    finally:
        store.close()


@pytest.mark.sqlite_only
def test_uses_a_called_flush_could_not_write_are_tried_again_by_the_timer(
    ts: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """flush_uses() cancelled the pending timer, and a failure left no timer to try again:
    the uses waited for a later use or close(), and a process killed meanwhile lost them."""
    token, secret = ts.tokens.create()
    ts.tokens.authenticate(secret)
    assert ts.tokens._flusher is not None
    raw = _db.Raw(ts)
    try:  # a trigger fails the write at once, where a lock would take the busy timeout
        with raw:
            raw.execute(
                "CREATE TRIGGER refuse_uses BEFORE UPDATE OF last_used_at "
                "ON tokenstore_api_token BEGIN SELECT RAISE(ABORT, 'not now'); END"
            )
        with caplog.at_level(logging.WARNING, logger="tokenstore.tokens"):
            assert ts.tokens.flush_uses() == 0
        assert "could not record the use of 1 API tokens" in caplog.text
        assert ts.tokens._flusher is not None  # the timer tries again in a minute
        with raw:
            raw.execute("DROP TRIGGER refuse_uses")
    finally:
        raw.close()
    assert ts.tokens.flush_uses() == 1
    assert stored_row(ts, token)["last_used_at"] == format_time(START)


def test_uses_flushed_in_a_transaction_that_rolls_back_are_kept(ts: Store) -> None:
    """The flush wrote them in the caller's transaction, then forgot them: lost at its rollback."""
    token, secret = ts.tokens.create()
    ts.tokens.authenticate(secret)
    with pytest.raises(RuntimeError), ts.atomic():
        assert ts.tokens.flush_uses() == 1
        raise RuntimeError("the caller's transaction fails")
    assert stored_row(ts, token)["last_used_at"] is None
    assert ts.tokens._flusher is not None  # the timer still has them to write
    assert ts.tokens.flush_uses() == 1
    assert stored_row(ts, token)["last_used_at"] == format_time(START)


def test_uses_within_one_millisecond_share_a_stamp_cut_to_the_millisecond(
    ts: Store, clock: Clock
) -> None:
    secrets = [ts.tokens.create()[1] for _ in range(4)]
    clock.now = START + timedelta(microseconds=123)
    assert ts.tokens.authenticate(secrets[0]).last_used_at == START
    clock.advance(microseconds=876)  # still within START's millisecond
    assert ts.tokens.authenticate(secrets[1]).last_used_at == START
    clock.advance(microseconds=1)  # the next millisecond
    assert ts.tokens.authenticate(secrets[2]).last_used_at == START + timedelta(milliseconds=1)
    clock.now = START - timedelta(microseconds=1)  # a clock set back: no stamp from the future
    assert ts.tokens.authenticate(secrets[3]).last_used_at == START - timedelta(milliseconds=1)
    assert ts.tokens.flush_uses() == 4


def test_a_use_checked_again_before_the_flush_is_the_one_noted(ts: Store, clock: Clock) -> None:
    token, secret = ts.tokens.create()
    first = ts.tokens.authenticate(secret)
    clock.advance(seconds=30)
    again = ts.tokens.authenticate(secret)  # the row still says never used
    assert first.last_used_at == again.last_used_at == START
    assert again._stored == again.__data__ and again._stored is not again.__data__
    again.last_used_at = None  # the caller's copy: the next check is not affected
    assert ts.tokens.authenticate(secret).last_used_at == START
    assert ts.tokens.flush_uses() == 1
    assert stored_row(ts, token)["last_used_at"] == format_time(START)


def test_more_tokens_than_the_memo_holds_all_authenticate(ts: Store) -> None:
    issued = [ts.tokens.create() for _ in range(tokens._CONVERTED_ROWS + 3)]
    for _ in range(2):
        for token, secret in issued:
            assert ts.tokens.authenticate(secret).id == token.id
    assert len(ts.tokens._converted) <= tokens._CONVERTED_ROWS


def test_a_user_that_is_not_in_the_store_owns_nothing(store: Store) -> None:
    ghost = User(id=999, username="ghost")  # deleted, or read from another store
    with pytest.raises(NotFound, match="999"):
        store.tokens.create(ghost)
    assert store.tokens.list() == []


def test_two_threads_revoking_one_token_both_succeed_with_the_first_time(store: Store) -> None:
    """Revoking again changes nothing, also while another thread's revocation commits: on
    PostgreSQL the second read the row before that commit, then set another time, which
    the file's own trigger refused with peewee's IntegrityError."""
    token, secret = store.tokens.create(name="shared")
    outcomes = _db.one_after_another(store, lambda: store.tokens.revoke(token.abid).revoked_at)
    assert isinstance(outcomes["first"], datetime), outcomes
    assert outcomes["second"] == outcomes["first"]
    assert store.tokens.get(token.abid).revoked_at == outcomes["first"]
    with pytest.raises(RevokedToken):
        store.tokens.authenticate(secret)


@pytest.mark.sqlite_only
def test_a_large_flush_writes_in_batches_each_its_own_transaction(
    ts: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """One transaction for every use noted held the write lock for all of them (8.7 µs a
    use: a million tokens used within a minute held it near the busy timeout)."""
    monkeypatch.setattr(tokens, "FLUSH_BATCH", 2)
    made = [ts.tokens.create() for _ in range(5)]
    for _, secret in made:
        ts.tokens.authenticate(secret)
    refused = made[2][0]  # the first of the second batch: the first batch stays written
    raw = _db.Raw(ts)
    try:
        with raw:
            raw.execute(
                "CREATE TRIGGER refuse_uses BEFORE UPDATE OF last_used_at "
                f"ON tokenstore_api_token WHEN NEW.id = '{refused.id.hex}' "
                "BEGIN SELECT RAISE(ABORT, 'not now'); END"
            )
        with caplog.at_level(logging.WARNING, logger="tokenstore.tokens"):
            assert ts.tokens.flush_uses() == 2
        assert "could not record the use of 3 API tokens" in caplog.text
        with raw:
            raw.execute("DROP TRIGGER refuse_uses")
    finally:
        raw.close()
    used = [stored_row(ts, token)["last_used_at"] for token, _ in made]
    assert used == [format_time(START)] * 2 + [None] * 3
    assert ts.tokens.flush_uses() == 3  # the rest were kept for the next flush
    assert [stored_row(ts, token)["last_used_at"] for token, _ in made] == [format_time(START)] * 5
