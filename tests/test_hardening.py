"""Odd values thrown at every public call: only TokenstoreError (or success) comes out.

Each probe puts one odd value (huge, negative or non-finite numbers, NUL,
lone surrogates, bytes, wrong types, extreme spans and times) into one
argument of a public call, the others being valid. The call must succeed
or raise a TokenstoreError; when it raises, the file's rows must be as they
were (nothing half-written) and so must the hook object it was given.

Probes never reach beyond 127.0.0.1: hooks point at a closed local port,
and a hook made with an odd endpoint is deleted at once.
"""

from __future__ import annotations

import itertools
import math
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any

import peewee
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tokenstore
import tokenstore.admin
from tokenstore import ABID, Options, Store, TokenstoreError, ValidationError
from tokenstore._inputs import MAX_SPAN
from tokenstore._models import ABIDModel

CLOSED = "http://127.0.0.1:9/hook"


class Probe(ABIDModel):
    """The model the probes' hooks watch; nothing writes to it, so nothing is delivered."""

    abid_prefix = "prb_"
    text = peewee.TextField(default="")


TEXT = st.text(
    st.one_of(
        st.characters(exclude_categories=[]),  # surrogates included
        st.sampled_from(["\x00", "\ud800", "\udfff", "\n", "\r"]),
    ),
    max_size=12,
)

ODD: st.SearchStrategy[Any] = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([0, -1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 2**70]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308]),
    st.booleans(),
    st.none(),
    TEXT,
    st.sampled_from(["", " ", "whsec_", "whsec_!!", "tsk_", "apt_", "whk_", "msg_", "1; DROP x"]),
    st.binary(max_size=12),
    st.timedeltas(),
    st.sampled_from([timedelta.max, timedelta.min, timedelta(0), timedelta(days=-1)]),
    st.datetimes(timezones=st.sampled_from([None, UTC, timezone(timedelta(hours=-14))])),
    st.sampled_from(
        [
            datetime.max.replace(tzinfo=timezone(timedelta(hours=-5))),
            datetime.min.replace(tzinfo=timezone(timedelta(hours=5))),
        ]
    ),
    st.lists(TEXT, max_size=3),
    st.dictionaries(TEXT, TEXT, max_size=2),
    st.builds(object),
)


def rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every committed row of every table, read on a connection of its own."""
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: conn.execute(f'SELECT * FROM "{t}" ORDER BY rowid').fetchall() for t in tables}
    finally:
        conn.close()


class World:
    """One store with a user, a token and a hook the probes use as their valid arguments."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.store = tokenstore.open(path, webhook_allow=["127.0.0.1/32"], read_timeout=0.5)
        self.store.register(Probe)
        self.alice = self.store.users.create("alice")
        self.token, self.secret = self.store.tokens.create(self.alice, name="ci")
        self.hook = self.store.webhooks.create("probe", Probe, CLOSED)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("hardening") / "store.sqlite3")
    try:
        yield w
    finally:
        w.store.close()


def _made_and_gone(w: World, **fields: Any) -> None:
    hook = w.store.webhooks.create(**{"name": "odd", "ref": Probe, "endpoint": CLOSED, **fields})
    w.store.webhooks.delete(hook)


def _thread(w: World, v: Any) -> None:
    w.store.webhooks.start_retry_thread(v).stop()


def _receiver(**kwargs: Any) -> None:
    args: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "on_event": lambda payload, headers: None,
        **kwargs,
    }
    tokenstore.make_receiver(**args).server_close()


def _app(environ: Any, start_response: Any) -> list[bytes]:
    return []


SIGNED = {"webhook-id": "msg_1", "webhook-timestamp": "1", "webhook-signature": "v1,AAAA"}


def _verify(secret: str, headers: Any = SIGNED, body: Any = b"{}", **kwargs: Any) -> Any:
    """verify_webhook at the time SIGNED was signed, so the checks past the timestamp run."""
    return tokenstore.verify_webhook(secret, headers, body, **{"now": 1, **kwargs})


PROBES: dict[str, Callable[[World, Any], Any]] = {
    "users.create(username)": lambda w, v: w.store.users.create(v),
    "users.create(superuser)": lambda w, v: w.store.users.create("bob", v),
    "users.get": lambda w, v: w.store.users.get(v),
    "tokens.create(user)": lambda w, v: w.store.tokens.create(v),
    "tokens.create(name)": lambda w, v: w.store.tokens.create(w.alice, name=v),
    "tokens.create(expires)": lambda w, v: w.store.tokens.create(w.alice, expires=v),
    "tokens.create(scopes)": lambda w, v: w.store.tokens.create(w.alice, scopes=v),
    "tokens.authenticate(secret)": lambda w, v: w.store.tokens.authenticate(v),
    "tokens.authenticate(scope)": lambda w, v: w.store.tokens.authenticate(w.secret, v),
    "tokens.revoke": lambda w, v: w.store.tokens.revoke(v),
    "tokens.get": lambda w, v: w.store.tokens.get(v),
    "tokens.list(user)": lambda w, v: w.store.tokens.list(v),
    "tokens.list(include_revoked)": lambda w, v: w.store.tokens.list(include_revoked=v),
    "token_from_request(headers)": lambda w, v: w.store.tokens.token_from_request(v),
    "token_from_request(query)": lambda w, v: w.store.tokens.token_from_request({}, v),
    "webhooks.create(name)": lambda w, v: _made_and_gone(w, name=v),
    "webhooks.create(ref)": lambda w, v: _made_and_gone(w, ref=v),
    "webhooks.create(endpoint)": lambda w, v: _made_and_gone(w, endpoint=v),
    "webhooks.create(signal)": lambda w, v: _made_and_gone(w, signal=v),
    "webhooks.create(headers)": lambda w, v: _made_and_gone(w, headers=v),
    "webhooks.create(auth_token)": lambda w, v: _made_and_gone(w, auth_token=v),
    "webhooks.create(keep_last_response)": lambda w, v: _made_and_gone(w, keep_last_response=v),
    "webhooks.create(created_by)": lambda w, v: _made_and_gone(w, created_by=v),
    "webhooks.get": lambda w, v: w.store.webhooks.get(v),
    "webhooks.list(enabled)": lambda w, v: w.store.webhooks.list(v),
    "webhooks.update(hook)": lambda w, v: w.store.webhooks.update(v, name="probe"),
    "webhooks.update(name)": lambda w, v: w.store.webhooks.update(w.hook, name=v),
    "webhooks.update(endpoint)": lambda w, v: w.store.webhooks.update(w.hook, endpoint=v),
    "webhooks.update(headers)": lambda w, v: w.store.webhooks.update(w.hook, headers=v),
    "webhooks.update(auth_token)": lambda w, v: w.store.webhooks.update(w.hook, auth_token=v),
    "webhooks.update(enabled)": lambda w, v: w.store.webhooks.update(w.hook, enabled=v),
    "webhooks.update(signal)": lambda w, v: w.store.webhooks.update(w.hook, signal=v),
    "webhooks.update(ref)": lambda w, v: w.store.webhooks.update(w.hook, ref=v),
    "webhooks.delete": lambda w, v: w.store.webhooks.delete(v),
    "webhooks.enable": lambda w, v: w.store.webhooks.enable(v),
    "webhooks.disable(hook)": lambda w, v: w.store.webhooks.disable(v),
    "webhooks.disable(reason)": lambda w, v: w.store.webhooks.disable(w.hook, v),
    "webhooks.rotate_secret(hook)": lambda w, v: w.store.webhooks.rotate_secret(v),
    "webhooks.rotate_secret(grace)": lambda w, v: w.store.webhooks.rotate_secret(w.hook, v),
    "webhooks.deliveries(hook)": lambda w, v: w.store.webhooks.deliveries(v),
    "webhooks.deliveries(status)": lambda w, v: w.store.webhooks.deliveries(status=v),
    "webhooks.deliveries(limit)": lambda w, v: w.store.webhooks.deliveries(limit=v),
    "webhooks.deliveries(before)": lambda w, v: w.store.webhooks.deliveries(before=v),
    "webhooks.prune": lambda w, v: w.store.webhooks.prune(v),
    "webhooks.allow": lambda w, v: w.store.webhooks.allow(v),
    "webhooks.disallow": lambda w, v: w.store.webhooks.disallow(v),
    "store.import_archivebox(path)": lambda w, v: w.store.import_archivebox(v, dry_run=True),
    "store.import_archivebox(ref_map)": lambda w, v: w.store.import_archivebox(
        w.path, ref_map=v, dry_run=True
    ),
    "store.import_archivebox(dry_run)": lambda w, v: w.store.import_archivebox(w.path, dry_run=v),
    "webhooks.delivery": lambda w, v: w.store.webhooks.delivery(v),
    "webhooks.deliver_due(now)": lambda w, v: w.store.webhooks.deliver_due(v),
    "webhooks.deliver_due(limit)": lambda w, v: w.store.webhooks.deliver_due(limit=v),
    "webhooks.ping": lambda w, v: w.store.webhooks.ping(v),
    "webhooks.redeliver": lambda w, v: w.store.webhooks.redeliver(v),
    "webhooks.start_retry_thread": _thread,
    "store.dispatch": lambda w, v: w.store.dispatch(v),
    "store.register": lambda w, v: w.store.register(v),
    "store.model_for_ref": lambda w, v: w.store.model_for_ref(v),
    "ABID.parse(text)": lambda w, v: ABID.parse(v),
    "ABID.parse(prefix)": lambda w, v: ABID.parse("apt_01JAZ6BQG0D53BD22B01XRS78E", v),
    "abid_from_values(prefix)": lambda w, v: tokenstore.abid_from_values(
        v, datetime.now(UTC), "uri", "00", 1
    ),
    "abid_from_values(ts)": lambda w, v: tokenstore.abid_from_values("apt_", v, "uri", "00", 1),
    "looks_like_token": lambda w, v: tokenstore.looks_like_token(v),
    "verify_webhook(secret)": lambda w, v: _verify(v),
    "verify_webhook(headers)": lambda w, v: _verify(w.hook.secret, headers=v),
    "verify_webhook(header value)": lambda w, v: _verify(
        w.hook.secret, headers={**SIGNED, "webhook-signature": v}
    ),
    "verify_webhook(body)": lambda w, v: _verify(w.hook.secret, body=v),
    "verify_webhook(tolerance)": lambda w, v: _verify(w.hook.secret, tolerance=v),
    "verify_webhook(now)": lambda w, v: _verify(w.hook.secret, now=v),
    "TokenAuthMiddleware(scope)": lambda w, v: tokenstore.TokenAuthMiddleware(_app, w.store, v),
    "TokenAuthMiddleware(header)": lambda w, v: tokenstore.TokenAuthMiddleware(
        _app, w.store, header=v
    ),
    "make_receiver(port)": lambda w, v: _receiver(port=v),
    "make_receiver(secret)": lambda w, v: _receiver(secret=v),
    "make_receiver(tolerance)": lambda w, v: _receiver(tolerance=v),
}


@pytest.mark.parametrize("probe", sorted(PROBES))
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(value=ODD)
def test_only_tokenstore_errors_and_nothing_half_written(
    world: World, probe: str, value: Any
) -> None:
    before = rows(world.path)
    hook_before = dict(world.hook.__data__)
    try:
        PROBES[probe](world, value)
    except TokenstoreError:
        assert rows(world.path) == before
        assert world.hook.__data__ == hook_before
    finally:
        world.hook = world.store.webhooks.get(world.hook.abid)


class _Unshowable:
    """A value whose repr raises, as a broken object of the caller's might."""

    def __repr__(self) -> str:
        raise RuntimeError("this object cannot be shown")


@pytest.mark.parametrize("probe", sorted(PROBES))
@pytest.mark.parametrize(
    "value", [10**5000, -(10**5000), _Unshowable()], ids=["huge", "-huge", "unshowable"]
)
def test_a_value_no_message_can_quote_is_still_a_tokenstore_error(
    world: World, probe: str, value: Any
) -> None:
    """str() refuses an int of over 4,300 digits: quoting one made the error message raise."""
    before = rows(world.path)
    try:
        PROBES[probe](world, value)
    except TokenstoreError as exc:
        assert len(str(exc)) <= 1100 and rows(world.path) == before
    finally:
        world.hook = world.store.webhooks.get(world.hook.abid)


@pytest.mark.parametrize("name", sorted(f.name for f in Options.__dataclass_fields__.values()))
@settings(max_examples=60, deadline=None)
@given(value=ODD)
def test_every_option_is_checked(name: str, value: Any) -> None:
    """A value is refused with a TokenstoreError, or kept with the type and range it needs."""
    try:
        options = Options(**{name: value})
    except TokenstoreError:
        return
    kept = getattr(options, name)
    assert isinstance(kept, bool) == (name in ("create", "dispatch_on_open", "read_only"))
    assert not isinstance(kept, float) or 0 <= kept < math.inf
    assert not isinstance(kept, int) or isinstance(kept, bool) or 0 <= kept < 2**63
    assert not isinstance(kept, timedelta) or timedelta(0) <= kept <= MAX_SPAN
    assert not isinstance(kept, str) or "\x00" not in kept


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"read_timeout": -1}, "read_timeout must be more than 0"),
        ({"connect_timeout": 0}, "connect_timeout must be more than 0"),
        ({"busy_timeout": math.nan}, "busy_timeout must be at least 5"),
        ({"connect_timeout": math.inf}, "connect_timeout must be more than 0"),
        ({"read_timeout": True}, "read_timeout must be a number of seconds, got bool"),
        ({"max_tokens_per_user": True}, "max_tokens_per_user must be an integer, got bool"),
        ({"max_tokens_per_user": 0}, "max_tokens_per_user must be between 1"),
        ({"disable_after_failures": 2**70}, "disable_after_failures must be between 1"),
        ({"disable_after_failures": 3.0}, "disable_after_failures must be an integer"),
        ({"disable_after": timedelta(days=-1)}, "disable_after must be a non-negative"),
        ({"secret_grace": 3600}, "secret_grace must be a timedelta, got int"),
        ({"secret_grace": timedelta.max}, "secret_grace must be a non-negative timedelta"),
        ({"claim_timeout": timedelta(0)}, "claim_timeout must be a positive timedelta"),
        ({"dispatch_on_open": 1}, "dispatch_on_open must be true or false"),
        ({"create": "yes"}, "create must be true or false"),
        ({"read_only": None}, "read_only must be true or false"),
        ({"token_prefix": "TSK"}, "token prefix must be 2 to 8 lowercase"),
        ({"api_key_header": "X-API Key"}, "api_key_header 'X-API Key' is not a valid HTTP"),
        ({"webhook_allow": b"127.0.0.1"}, "webhook_allow must be a list"),
        ({"webhook_allow": {"127.0.0.1": False}}, "webhook_allow must be a list of hosts .*dict"),
        ({"webhook_allow": itertools.repeat("::1")}, "webhook_allow must be a list of at most"),
        ({"webhook_allow": ["10.0.0.0/8\x00"]}, "webhook_allow entry must not contain a NUL"),
        ({"webhook_allow": ["300.0.0.0/8"]}, "not a valid CIDR"),
    ],
)
def test_bad_options_are_named(tmp_path: Path, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Options(**options)
    with pytest.raises(ValidationError, match=message):
        tokenstore.open(tmp_path / "store.sqlite3", **options)
    assert list(tmp_path.iterdir()) == []


def _raising_clock() -> datetime:
    raise RuntimeError("no time server")


@pytest.mark.parametrize(
    ("clock", "message"),
    [
        (datetime.now, "the store's clock returned a bad time: naive datetime"),
        (lambda: "2024-10-24T12:00:00Z", "the store's clock returned a bad time: expected a"),
        (_raising_clock, "the store's clock raised RuntimeError: no time server"),
        (lambda: datetime.max.replace(tzinfo=UTC), "the store's clock returned 9999-12-31"),
        (lambda: datetime.min.replace(tzinfo=UTC), "the store's clock returned 0001-01-01"),
        (lambda: datetime(1969, 12, 31, tzinfo=UTC), "outside 1970-01-01"),
        (
            lambda: datetime(9999, 12, 31, 20, tzinfo=timezone(timedelta(hours=-5))),
            "is out of range in UTC",
        ),
    ],
)
def test_a_clock_that_cannot_answer_is_refused_at_open(
    tmp_path: Path, clock: Callable[[], Any], message: str
) -> None:
    """Found later, such a time was a TypeError or an OverflowError from deep inside."""
    with pytest.raises(ValidationError, match=message):
        tokenstore.open(tmp_path / "store.sqlite3", clock=clock)
    assert list(tmp_path.iterdir()) == []


class _BrokenZone(tzinfo):
    """A caller's time zone that cannot say its offset, or says one no datetime takes."""

    def __init__(self, offset: Any) -> None:
        self.offset = offset

    def utcoffset(self, dt: datetime | None) -> Any:
        if isinstance(self.offset, Exception):
            raise self.offset
        return self.offset

    def dst(self, dt: datetime | None) -> None:
        return None


@pytest.mark.parametrize(
    "zone",
    [
        _BrokenZone(RuntimeError("no zone data")),
        _BrokenZone(timedelta(hours=30)),
        _BrokenZone("+02:00"),
    ],
    ids=["raises", "beyond-a-day", "not-a-timedelta"],
)
def test_a_time_whose_zone_cannot_answer_is_a_validation_error(
    tmp_path: Path, zone: tzinfo
) -> None:
    """Its own RuntimeError, ValueError or TypeError came out of now= and out of a clock."""
    broken = datetime(2024, 10, 24, 12, tzinfo=zone)
    with pytest.raises(ValidationError, match="the store's clock returned a bad time"):
        tokenstore.open(tmp_path / "clock.sqlite3", clock=lambda: broken)
    with tokenstore.open(tmp_path / "store.sqlite3") as store:
        for call in (store.webhooks.deliver_due, store.webhooks.erase_expired_secrets):
            with pytest.raises(ValidationError, match=r"now: .*time zone"):
                call(now=broken)


def test_a_clock_that_turns_bad_later_is_refused_where_it_is_read(
    db_path: Path, backend: str
) -> None:
    answers: list[Any] = [datetime.now(timezone(timedelta(hours=2)))]  # aware, not UTC: fine
    store = tokenstore.open(db_path, clock=lambda: answers[-1])
    try:
        token, secret = store.tokens.create(expires=timedelta(days=1))
        assert token.created_at.tzinfo == UTC
        answers.append(datetime.now())  # naive: before, a TypeError from comparing times
        with pytest.raises(ValidationError, match="the store's clock returned a bad time"):
            store.tokens.authenticate(secret)
        answers.append(datetime.max.replace(tzinfo=UTC))  # before, an OverflowError
        with pytest.raises(ValidationError, match="the store's clock returned 9999"):
            store.tokens.create(expires=timedelta(days=1))
        answers.append(datetime.now(UTC))
        assert store.tokens.authenticate(secret).id == token.id
    finally:
        answers.append(datetime.now(UTC))
        store.close()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.users.get(2**70), "user id must be between 1"),
        (lambda s: s.users.get("a\ud800"), "username is not valid Unicode"),
        (lambda s: s.webhooks.get("a\ud800"), "webhook ABID or name is not valid Unicode"),
        (lambda s: s.webhooks.get("a\x00"), "webhook ABID or name must not contain a NUL"),
        (
            lambda s: s.tokens.create(expires=timedelta(days=999999999)),
            "expires must be a positive timedelta of at most 36525 days",
        ),
        (lambda s: s.tokens.create(name="a\x00b"), "token name must not contain a NUL"),
        (lambda s: s.tokens.create(name="a\ud800b"), "token name is not valid Unicode"),
        (
            lambda s: s.webhooks.create("a\x00b", "tokenstore.User", CLOSED),
            "webhook name must not contain a NUL",
        ),
        (
            lambda s: s.webhooks.create("h", "tokenstore.User", CLOSED + "\ud800"),
            "webhook endpoint is not valid Unicode",
        ),
        (
            lambda s: s.webhooks.rotate_secret("probe", grace=timedelta(days=999999999)),
            "grace must be a non-negative timedelta",
        ),
        (
            lambda s: s.webhooks.rotate_secret("probe", grace=timedelta(seconds=-1)),
            "grace must be a non-negative timedelta",
        ),
        (lambda s: s.webhooks.deliveries(limit="1; DROP TABLE x"), "limit must be a whole"),
        (lambda s: s.webhooks.deliveries(limit=-1), "limit must be a whole number from 1"),
        (lambda s: s.webhooks.deliver_due(limit=0), "limit must be between 1"),
        (lambda s: s.webhooks.deliver_due("2030-01-01"), "^now: expected a datetime, got str"),
        (lambda s: s.webhooks.deliver_due(datetime(2030, 1, 1)), "^now: naive datetime"),
        (lambda s: s.webhooks.erase_expired_secrets(0), "^now: expected a datetime, got int"),
        (
            lambda s: s.webhooks.create("h", "tokenstore.User", None),
            "^webhook endpoint must be a URL as a string, got NoneType",
        ),
        (
            lambda s: s.webhooks.update("probe", endpoint=b"http://example.com/"),
            "^webhook endpoint must be a URL as a string, got bytes",
        ),
        (
            lambda s: s.webhooks.deliveries(before=tokenstore.WebhookDelivery()),
            "^before: a delivery never saved",
        ),
        (lambda s: s.wait_for_changes(math.nan), "timeout must be at least 0"),
        (lambda s: s.wait_for_changes(-1), "timeout must be at least 0"),
        (lambda s: s.webhooks.start_retry_thread(0), "interval must be more than 0"),
        (lambda s: s.dispatch(deliver="no"), "deliver must be true or false"),
    ],
)
def test_the_probes_that_failed_on_main(
    store: Store, call: Callable[[Store], Any], message: str
) -> None:
    store.webhooks.create("probe", "tokenstore.User", CLOSED)
    with pytest.raises(ValidationError, match=message):
        call(store)


def test_a_retry_threads_stop_checks_its_timeout_before_stopping(store: Store) -> None:
    thread = store.webhooks.start_retry_thread(60)
    try:
        with pytest.raises(ValidationError, match="timeout must be a number of seconds, got str"):
            thread.stop("x")  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="timeout must be at least 0"):
            thread.stop(math.nan)
        assert thread.is_alive()
    finally:
        thread.stop()
    assert not thread.is_alive()


@pytest.mark.parametrize("path", ["a\x00b", "a\ud800b", b"store.sqlite3", 5, None, ""])
def test_open_refuses_paths_it_cannot_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValidationError, match="the store path"):
        tokenstore.open(path)
    assert list(tmp_path.iterdir()) == []


def test_a_value_sqlite_cannot_bind_is_a_validation_error(store: Store) -> None:
    """The driver's last word (an application's field holding what no column can) is ours too."""
    store.register(Probe)
    backend = "SQLite" if store.path else "PostgreSQL"
    with pytest.raises(ValidationError, match=f"cannot be stored in {backend}"):
        Probe.create(text="a\ud800")
    if store.path:  # PostgreSQL compares an integer beyond 64 bits as a numeric: no match
        with pytest.raises(ValidationError, match="cannot be stored in SQLite"):
            Probe.update(text="x").where(Probe.created_by == 2**70).execute()
    assert Probe.select().count() == 0


def test_a_huge_value_quoted_in_an_error_loses_its_middle_not_the_message(store: Store) -> None:
    """A 100,000-character username made a 100,000-character error (and CLI line)."""
    with pytest.raises(ValidationError) as caught:
        store.users.create("x" * 50_000 + "tail")
    message = str(caught.value)
    assert len(message) <= 1_000
    assert message.startswith("username 'xxx") and "characters left out" in message
    assert "tail'" in message  # the end of the value, and what follows it, are kept
    short = "y" * 300
    with pytest.raises(tokenstore.NotFound) as found:
        store.users.get(short)
    assert str(found.value) == f"no user '{short}'"


class _LyingStr(str):
    """A str whose str() names another file, with a NUL in it."""

    def __str__(self) -> str:
        return "\x00other"


def test_a_str_subclass_path_is_its_own_characters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Path() called the subclass's __str__: a ValueError, or another file than the one checked."""
    monkeypatch.chdir(tmp_path)
    with tokenstore.open(_LyingStr("store.sqlite3")) as store:
        assert store.path is not None and store.path.name == "store.sqlite3"
    tokenstore.migrate(_LyingStr("store.sqlite3"), _LyingStr("copy.sqlite3"))
    assert (tmp_path / "copy.sqlite3").exists()


@pytest.mark.parametrize(
    "call",
    [
        lambda s, v: s.model_for_ref(v),
        lambda s, v: s.ref(v),
        lambda s, v: s.register(v),
        lambda s, v: s.webhooks.create("h", v, CLOSED),
        lambda s, v: s.webhooks.create("h", "tokenstore.User", CLOSED, signal=v),
        lambda s, v: s.webhooks.create("h", "tokenstore.User", CLOSED, headers=v),
        lambda s, v: s.tokens.create(scopes=v),
        lambda s, v: s.webhooks.deliveries(status=v),
        lambda s, v: s.webhooks.deliveries(limit=v),
        lambda s, v: tokenstore.make_receiver(v, 0, "whsec_x", lambda p, h: None),
    ],
    ids=[
        "model_for_ref",
        "ref",
        "register",
        "ref=",
        "signal",
        "headers",
        "scopes",
        "status",
        "limit",
        "host",
    ],
)
def test_a_secret_given_in_the_wrong_place_is_not_quoted_back(
    tmp_path: Path, call: Callable[[Store, Any], Any]
) -> None:
    with tokenstore.open(tmp_path / "store.sqlite3", webhook_allow=["127.0.0.1/32"]) as store:
        _, secret = store.tokens.create()
        with pytest.raises(ValidationError) as caught:
            call(store, secret)
        assert secret not in str(caught.value)


def test_scopes_as_bytes_are_refused_as_such(store: Store) -> None:
    """Bytes iterate as numbers: the message was about a scope 120."""
    with pytest.raises(ValidationError, match="scopes must be a list of strings, got bytes"):
        store.tokens.create(scopes=b"x")


def test_a_str_subclass_is_stored_as_its_own_characters(store: Store) -> None:
    """check_text passed the subclass on; PostgreSQL's driver stored what its __str__ said."""
    hook = store.webhooks.create("probe", "tokenstore.User", CLOSED)
    store.webhooks.disable(hook, _LyingStr("by hand"))
    assert store.webhooks.get("probe").disabled_reason == "by hand"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: tokenstore.admin.grants_admin(None, s.system_user), "token must be a"),
        (lambda s: tokenstore.admin.grants_admin(s.tokens.create()[0], 0), "owner must be a"),
        (lambda s: tokenstore.admin.public_warning(None), "host must be a string"),
        (lambda s: tokenstore.admin.make_admin_server(s, port=0, public=1), "public must be"),
        (lambda s: tokenstore.signals.send_isolated(None, s), "signal must be a Signal"),
        (lambda s: s.tokens.create()[0].has_scope(None), "scope must be a string"),
        (lambda s: s.tokens.create()[0].is_valid(0), "for_date: expected a datetime"),
        (lambda s: s.tokens.create(scopes=tokenstore.User), "scopes must be a list"),
    ],
)
def test_helpers_refuse_a_wrong_type(
    store: Store, call: Callable[[Store], Any], message: str
) -> None:
    """An AttributeError from inside, or a False/True for anything (is_valid, has_scope)."""
    with pytest.raises(ValidationError, match=message):
        call(store)
