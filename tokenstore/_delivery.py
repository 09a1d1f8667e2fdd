"""Webhook messages: matching hooks, payloads, signing, sending, outcomes, retries.

A delivery row is written in the same transaction as the change it reports
(inside the commit, through the change dispatcher's consumer hook), so a
committed change is never lost and a rolled-back one is never sent. The first
attempt is made right after the commit, in the writing thread; later attempts
follow ``RETRY_SCHEDULE`` and are made by ``deliver_due()``.
"""

from __future__ import annotations

import base64
import decimal
import json
import logging
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import peewee

from . import __version__, signals
from ._changes import ChangeEvent
from ._errors import BlockedAddress
from ._fields import UTCDateTimeField
from ._models import ABID_COLLISION_RETRIES, BaseModel, OutboundWebhook, WebhookDelivery
from ._netguard import AddressGuard
from ._signing import signature_header
from ._times import format_time, to_stored_time, utcnow

if TYPE_CHECKING:
    import requests

    from ._store import Store

logger = logging.getLogger("tokenstore._delivery")

#: When each attempt is made, counted from the previous one (Standard Webhooks' schedule).
RETRY_SCHEDULE: tuple[timedelta, ...] = (
    timedelta(0),
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=10),
)

#: How much of a response body is kept, in characters (as django-signal-webhooks).
RESPONSE_LIMIT = 8000
_RESPONSE_BYTES = RESPONSE_LIMIT * 4  # enough bytes for that many UTF-8 characters

#: The longest Retry-After honoured; a receiver asking for more gets the schedule's longest step.
MAX_RETRY_AFTER = timedelta(hours=10)
_MAX_RETRY_SECONDS = int(MAX_RETRY_AFTER.total_seconds())

KIND_BY_OP = {"INSERT": "CREATE", "UPDATE": "UPDATE", "DELETE": "DELETE"}
TYPE_BY_OP = {"INSERT": "created", "UPDATE": "updated", "DELETE": "deleted"}

_ANY_ENABLED_HOOK = "SELECT 1 FROM tokenstore_outbound_webhook WHERE enabled = 1 LIMIT 1"


def signal_matches(signal: str, kind: str) -> bool:
    """django-signal-webhooks' rule: a hook fires for every kind its signal name contains."""
    return kind in signal


def jsonable(value: Any) -> Any:
    """A field value as JSON: times as ISO-8601, UUIDs dashed, bytes base64."""
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, decimal.Decimal):
        return str(value)
    return value


def dumps(payload: Any) -> str:
    """Compact JSON, the exact bytes that are signed and sent."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str)


def event_payload(store: Store, model: type[peewee.Model], event: ChangeEvent) -> dict[str, Any]:
    """The body of a change message. Private fields were never captured, so never appear."""
    columns = model._meta.columns
    fields: dict[str, Any] = {}
    for column, raw in event.row.items():
        f = columns.get(column)
        if f is None:
            continue
        known = _JSON_OF.get((model, column))
        if known is None or known[0] is not f:
            known = _JSON_OF[(model, column)] = (f, _json_converter(f))
        fields[f.name] = known[1](raw)
    pk = fields.get(model._meta.primary_key.name, event.pk)  # type: ignore[union-attr]
    return {
        "type": f"{model.__name__.lower()}.{TYPE_BY_OP[event.op]}",
        "timestamp": event.created_at,
        "data": {
            "model": store.ref(model),
            "pk": None if pk is None else str(pk),
            "abid": fields.get("abid"),
            "fields": fields,
        },
    }


def _field_json(field: peewee.Field, raw: Any) -> Any:
    """A captured value as JSON; as stored when the field cannot read it.

    This runs inside the commit of whatever transaction claims the event: a
    row edited into nonsense in the sqlite3 shell must not fail that commit
    (and every later one that claims the event again).
    """
    try:
        return jsonable(field.python_value(raw))
    except Exception:
        return raw


#: Each captured column's converter to JSON, by model and column, with the field it was made for.
_JSON_OF: dict[tuple[type[peewee.Model], str], tuple[peewee.Field, Callable[[Any], Any]]] = {}

_CANONICAL_TIME = re.compile(
    r"[1-9][0-9]{3}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z"
)
_UUID_HEX = re.compile(r"[0-9a-f]{32}")


def _json_converter(field: peewee.Field) -> Callable[[Any], Any]:
    """``_field_json`` for one field, with shortcuts for the values it would give back as they are.

    Every value of every change is converted inside a commit, and most need
    no conversion: text of a text field, an integer of an integer field, a
    time already in the stored form (parsing and formatting it again gives
    the same text, or fails and gives the raw text). A UUID's hex needs only
    its dashes. Anything else, and any field that reads values its own way,
    takes the general path, so the output is the same byte for byte.
    """

    def general(raw: Any) -> Any:
        return _field_json(field, raw)

    kind = type(field)
    if kind.python_value is peewee.ForeignKeyField.python_value:
        # A captured key is never a model instance: the referenced field reads it.
        kind = type(field.rel_field)  # type: ignore[attr-defined]
    if kind.python_value is UTCDateTimeField.python_value:

        def time_json(raw: Any) -> Any:
            if raw is None or (type(raw) is str and _CANONICAL_TIME.fullmatch(raw)):
                return raw
            return general(raw)

        return time_json
    if kind.python_value is peewee.UUIDField.python_value:

        def uuid_json(raw: Any) -> Any:
            if type(raw) is str and _UUID_HEX.fullmatch(raw):
                return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"
            return None if raw is None else general(raw)

        return uuid_json
    as_is: type | None = None
    if kind.python_value is peewee.Field.python_value:
        if kind.adapt is peewee._StringField.adapt:
            as_is = str
        elif kind.adapt is peewee.IntegerField.adapt:
            as_is = int
    if as_is is None:
        return general
    same: type = as_is

    def plain_json(raw: Any) -> Any:
        return raw if raw is None or type(raw) is same else general(raw)

    return plain_json


@dataclass
class Outcome:
    """What one HTTP attempt came to."""

    ok: bool
    status_code: int | None = None
    error: str = ""
    body: str = ""
    retry_after: timedelta | None = None
    gone: bool = False
    duration_ms: int = 0


def parse_retry_after(value: str | None, now: datetime) -> timedelta | None:
    """Retry-After in seconds or as an HTTP date; nonsense counts as absent."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        # Capped before timedelta sees it: a receiver's "99999999999999" must not overflow it.
        seconds = int(value) if len(value) <= 9 else _MAX_RETRY_SECONDS
        return timedelta(seconds=min(seconds, _MAX_RETRY_SECONDS))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    return max(timedelta(0), min(when - now, MAX_RETRY_AFTER))


#: How many endpoints' prepared URLs a sender keeps (all of them are forgotten past that).
_PREPARED_URLS = 1024


class Sender:
    """Posts messages over one keep-alive session per thread, through the address guard."""

    def __init__(self, guard: AddressGuard, connect_timeout: float, read_timeout: float) -> None:
        self.guard = guard
        self.timeout = (connect_timeout, read_timeout)
        self._local = threading.local()
        self._urls: dict[str, str | None] = {}  # endpoint -> its prepared URL

    def session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            from ._netguard import guarded_session

            session = guarded_session(self.guard)
            self._local.session = session
        return session

    def close(self) -> None:
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()
            self._local.session = None

    def _prepare(self, url: str, body: bytes, headers: dict[str, str]) -> requests.PreparedRequest:
        """The request ``PreparedRequest.prepare`` makes of a POST, with the URL prepared once.

        Prepared here rather than by Session.request: a webhook carries no
        session cookies or default headers, and skipping their merge saved a
        sixth of a send. Each step is requests' own, in its order, except two
        that do nothing here: cookies (there are none to send) and hooks. A
        hook posts to one endpoint every time, and preparing its URL (parsing,
        IDNA, requoting) was a third of the rest; the prepared URL depends on
        the URL alone, so it is kept, for a bounded number of endpoints.
        """
        import requests

        request = requests.PreparedRequest()
        request.prepare_method("POST")
        prepared = self._urls.get(url)
        if prepared is None:
            request.prepare_url(url, None)
            if len(self._urls) >= _PREPARED_URLS:
                self._urls.clear()
            self._urls[url] = prepared = request.url
        request.url = prepared
        request.prepare_headers(headers)
        request.prepare_body(body, None)
        request.prepare_auth(None, url)  # credentials in the URL become Basic auth, as before
        return request

    def post(self, url: str, body: bytes, headers: dict[str, str], now: datetime) -> Outcome:
        """One POST; never raises for what the network or the receiver does."""
        import requests

        start = time.perf_counter()
        try:
            request = self._prepare(url, body, headers)
            # Sent by the session's adapter, which holds the guard: Session.send would
            # add only cookie bookkeeping and a redirect lookup for redirects never followed.
            session = self.session()
            response = session.get_adapter(request.url or url).send(
                request,
                stream=True,
                timeout=self.timeout,
                verify=True if session.verify is None else session.verify,
                cert=session.cert,
                proxies=session.proxies,
            )
        except BlockedAddress as exc:
            return Outcome(False, error=f"blocked: {exc}", duration_ms=_since(start))
        except requests.Timeout as exc:
            return Outcome(False, error=f"timed out: {_short(exc)}", duration_ms=_since(start))
        except Exception as exc:
            # RequestException and its kind, but also what a hook's stored settings can
            # provoke (a header value http.client cannot encode): recorded, never raised.
            return Outcome(
                False, error=f"{type(exc).__name__}: {_short(exc)}", duration_ms=_since(start)
            )
        try:
            text = _read_limited(response, time.monotonic() + self.timeout[1])
        except Exception as exc:
            text = f"(response body unreadable: {type(exc).__name__}: {_short(exc)})"
        finally:
            response.close()
        code = response.status_code
        outcome = Outcome(200 <= code < 300, code, body=text, duration_ms=_since(start))
        if outcome.ok:
            return outcome
        if 300 <= code < 400:
            where = response.headers.get("Location", "(no Location)")
            outcome.error = f"HTTP {code}: redirect to {where} not followed"
        elif code == 410:
            outcome.error = "HTTP 410 Gone: the receiver asked for this hook to stop"
            outcome.gone = True
        else:
            outcome.error = f"HTTP {code}"
            if code in (429, 503):
                outcome.retry_after = parse_retry_after(response.headers.get("Retry-After"), now)
        return outcome


def _redacted(error: str, hook: OutboundWebhook) -> str:
    """An error text with the hook's secrets blanked out.

    HTTP libraries quote a header value they refuse to send; that value may be
    the auth token or a credential in the hook's headers, and the error goes to
    the delivery log, the command's output and the ``webhook_failed`` signal.
    """
    secrets = [hook.auth_token, hook.secret, hook.previous_secret, *(hook.headers or {}).values()]
    for secret in sorted((x for x in secrets if x and len(x) >= 4), key=len, reverse=True):
        error = error.replace(secret, "***").replace(repr(secret)[1:-1], "***")
    return error


def _since(start: float) -> int:
    return round((time.perf_counter() - start) * 1000)


def _short(exc: BaseException) -> str:
    return str(exc)[:500]


def _read_limited(response: requests.Response, deadline: float) -> str:
    """Up to RESPONSE_LIMIT characters of the body, decoded with replacement.

    A body larger than that is not read to the end; closing the response then
    drops the connection rather than draining megabytes from it. Reading also
    stops at ``deadline`` (a ``time.monotonic()`` value): the read timeout
    bounds each wait, not the total, and a receiver trickling a byte at a time
    must not hold the writing thread (or outlast the delivery's lease). Each
    ``read1`` call waits on the socket at most once, so the check between
    calls is enough.
    """
    raw = response.raw
    read = getattr(raw, "read1", raw.read)  # urllib3 < 2 has no read1
    data = bytearray()
    while len(data) < _RESPONSE_BYTES and time.monotonic() < deadline:
        chunk = read(8192, decode_content=True)
        if not chunk:
            break
        data += chunk
    return bytes(data[:_RESPONSE_BYTES]).decode("utf-8", errors="replace")[:RESPONSE_LIMIT]


def _columns(model: type[peewee.Model]) -> str:
    return ", ".join(f'"{f.column_name}"' for f in model._meta.sorted_fields)


# The hot path (one delivery per matching hook on every save) runs these
# statements directly: peewee builds its SQL afresh for every query, and
# for these wide tables that took longer than the HTTP request itself.
_HOOK_TABLE = OutboundWebhook._meta.table_name
_DELIVERY_TABLE = WebhookDelivery._meta.table_name
_SELECT_HOOK = f'SELECT {_columns(OutboundWebhook)} FROM "{_HOOK_TABLE}" WHERE "id" = ?'
_ENABLED_HOOKS = (
    f'SELECT {_columns(OutboundWebhook)} FROM "{_HOOK_TABLE}" WHERE "enabled" = 1 '
    'ORDER BY "created_at"'
)
_SELECT_DELIVERY = f'SELECT {_columns(WebhookDelivery)} FROM "{_DELIVERY_TABLE}" WHERE "id" = ?'
_INSERT_DELIVERY = (
    f'INSERT INTO "{_DELIVERY_TABLE}" ("id", "abid", "created_by_id", "created_at", '
    '"modified_at", "hook_id", "event_id", "event_type", "payload", "next_attempt_at", '
    '"status", "attempts", "last_error") '
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, '')"
)
_RECORD_DELIVERY = (
    f'UPDATE "{_DELIVERY_TABLE}" SET "status" = ?, "attempts" = ?, "next_attempt_at" = ?, '
    '"last_attempt_at" = ?, "last_status_code" = ?, "last_error" = ?, "duration_ms" = ?, '
    '"delivered_at" = ?, "modified_at" = ? WHERE "id" = ?'
)
# Counted in SQL, so attempts recorded at once by two threads both count. Like
# django-signal-webhooks' bulk_update of these fields, outcomes leave ``updated`` alone.
_HOOK_SUCCEEDED = (
    f'UPDATE "{_HOOK_TABLE}" SET "last_success" = ?, "failure_count" = 0, '
    '"failing_since" = NULL, "last_response" = '
    'CASE WHEN "keep_last_response" THEN ? ELSE "last_response" END WHERE "id" = ?'
)
_HOOK_FAILED = (
    f'UPDATE "{_HOOK_TABLE}" SET "last_failure" = ?, "failure_count" = "failure_count" + 1, '
    '"failing_since" = coalesce("failing_since", ?), "last_response" = '
    'CASE WHEN "keep_last_response" THEN ? ELSE "last_response" END WHERE "id" = ? '
    'RETURNING "failure_count", "failing_since"'
)
_TAKE = (
    f'UPDATE "{_DELIVERY_TABLE}" SET "next_attempt_at" = ? '
    "WHERE \"id\" = ? AND \"status\" IN ('pending', 'failed') AND "
)
_TAKE_DUE = _TAKE + '"next_attempt_at" <= ?'
_SELECT_DUE = (
    f'SELECT "id" FROM "{_DELIVERY_TABLE}" '
    "WHERE \"status\" IN ('pending', 'failed') AND \"next_attempt_at\" <= ? "
    'ORDER BY "next_attempt_at" LIMIT ?'
)
_TAKE_HELD = _TAKE + '"attempts" = 0 AND "next_attempt_at" = ?'
# Where a hook's ref and signal are in a row of _ENABLED_HOOKS (by name: fields compare as SQL).
_HOOK_NAMES = [f.name for f in OutboundWebhook._meta.sorted_fields]
_REF_AT, _SIGNAL_AT = _HOOK_NAMES.index("ref"), _HOOK_NAMES.index("signal")


def _from_row(model: type[BaseModel], row: Sequence[Any]) -> Any:
    """A model instance from a row of all its columns, in field order."""
    fields = model._meta.sorted_fields
    return model.from_stored(
        {f.name: f.python_value(raw) for f, raw in zip(fields, row, strict=True)}
    )


def _load(model: type[BaseModel], sql: str, db: peewee.Database, pk: Any) -> Any:
    """One row by primary key as a model instance (as a SELECT would give it), or None."""
    pk_field = model._meta.primary_key
    row = db.execute_sql(sql, (pk_field.db_value(pk),)).fetchone()  # type: ignore[union-attr]
    return None if row is None else _from_row(model, row)


class Deliverer:
    """Creates, sends and records deliveries for one store."""

    def __init__(
        self,
        store: Store,
        sender: Sender,
        disable_after_failures: int,
        disable_after: timedelta,
    ) -> None:
        self.store = store
        self.sender = sender
        self.disable_after_failures = disable_after_failures
        self.disable_after = disable_after

    @property
    def lease(self) -> timedelta:
        """How long an attempt may take; a delivery's next attempt waits at least this long."""
        return timedelta(seconds=sum(self.sender.timeout) + 5)

    # -- inside the committing transaction ----------------------------------------------

    def wants_events(self, conn: sqlite3.Connection) -> bool:
        return conn.execute(_ANY_ENABLED_HOOK).fetchone() is not None

    def on_events(
        self, conn: sqlite3.Connection, events: list[ChangeEvent]
    ) -> Callable[[], None] | None:
        """Write a pending delivery per matching hook and event; send them after commit.

        Hooks are matched on their ``ref`` and ``signal`` columns alone; only
        a hook that matches is made into an instance (once per commit), so
        hooks on other models cost the commit no conversion of their 22 columns.
        """
        rows = conn.execute(_ENABLED_HOOKS).fetchall()
        if not rows:
            return None
        store = self.store
        ref_of, signal_of = OutboundWebhook.ref.python_value, OutboundWebhook.signal.python_value
        candidates = [(ref_of(row[_REF_AT]), signal_of(row[_SIGNAL_AT])) for row in rows]
        hooks: dict[int, OutboundWebhook] = {}
        created: list[tuple[WebhookDelivery, OutboundWebhook]] = []
        now = to_stored_time(store.clock())
        # The creator holds the delivery for one lease, so deliver_due elsewhere
        # does not send it at the same time; if this process dies, it is due after that.
        held_until = now + self.lease
        stamps = (format_time(now), format_time(held_until))
        for event in events:
            model = store.models.get(event.table)
            if model is None:
                continue
            ref = store.ref(model)
            kind = KIND_BY_OP[event.op]
            matching = [
                i
                for i, (hook_ref, signal) in enumerate(candidates)
                if hook_ref == ref and signal_matches(signal, kind)
            ]
            if not matching:
                continue
            payload = event_payload(store, model, event)
            body = dumps(payload)
            for i in matching:
                hook = hooks.get(i)
                if hook is None:
                    hook = hooks[i] = _from_row(OutboundWebhook, rows[i])
                delivery = self._new_delivery(
                    hook.id, payload["type"], body, now, held_until, event.id
                )
                self._insert(conn, delivery, stamps)
                created.append((delivery, hook))
        if not created:
            return None
        return lambda: self.attempt_all(created, held_until)

    def _new_delivery(
        self,
        hook_id: uuid.UUID,
        event_type: str,
        body: str,
        now: datetime,
        next_attempt_at: datetime,
        event_id: int | None = None,
    ) -> WebhookDelivery:
        """A pending delivery, made as ABIDModel would make it on insert (which follows)."""
        delivery = WebhookDelivery.from_stored(
            {
                "id": WebhookDelivery.new_id(),
                "abid": "",
                "created_by": self.store.db.system_user_id,
                "created_at": now,
                "modified_at": now,
                "hook": hook_id,
                "event_id": event_id,
                "event_type": event_type,
                "payload": body,
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": next_attempt_at,
                "last_attempt_at": None,
                "last_status_code": None,
                "last_error": "",
                "duration_ms": None,
                "delivered_at": None,
            }
        )
        delivery.abid = str(delivery.compute_abid())
        return delivery

    @staticmethod
    def _insert(
        conn: sqlite3.Connection, delivery: WebhookDelivery, stamps: tuple[str, str]
    ) -> None:
        """Insert a new delivery; on an ABID collision draw a new id, as ABIDModel does.

        ``stamps`` are its ``created_at`` and ``next_attempt_at`` as stored,
        formatted once by the caller for all the deliveries of one commit.

        An ABID keeps 30 random bits; one bulk change makes its deliveries for
        a hook in the same millisecond with the same type, so among thousands
        a collision is likely, and it must not fail the commit carrying them.
        """
        created, next_attempt = stamps
        for attempt in range(ABID_COLLISION_RETRIES + 1):
            try:
                conn.execute(
                    _INSERT_DELIVERY,
                    (
                        delivery.id.hex,
                        delivery.abid,
                        delivery.created_by_id,
                        created,
                        created,
                        delivery.hook_id.hex,
                        delivery.event_id,
                        delivery.event_type,
                        delivery.payload,
                        next_attempt,
                    ),
                )
                return
            except sqlite3.IntegrityError as exc:
                if f"{_DELIVERY_TABLE}.abid" not in str(exc) or attempt == ABID_COLLISION_RETRIES:
                    raise
                delivery.id = WebhookDelivery.new_id()
                delivery.abid = str(delivery.compute_abid())

    def create_ping(self, hook: OutboundWebhook, body: str, now: datetime) -> WebhookDelivery:
        """A delivery that no change caused (``ping``): written now, sent by the caller."""
        delivery = self._new_delivery(hook.id, "webhook.ping", body, now, now + self.lease)
        stamps = (format_time(delivery.created_at), format_time(delivery.next_attempt_at))
        with self.store.atomic():
            self._insert(self.store.db.connection(), delivery, stamps)
        return delivery

    # -- sending ------------------------------------------------------------------------

    def attempt_all(
        self,
        deliveries: Iterable[tuple[WebhookDelivery, OutboundWebhook]],
        held_until: datetime,
    ) -> None:
        """Send, one after another, the deliveries one commit wrote and held until ``held_until``.

        Each comes with its hook as that commit read it, so the hook is not read again.

        An attempt may take the sender's connect and read timeouts. A delivery
        whose hold would run out before its attempt could end (the ones queued
        behind slow receivers) is taken again first, as ``deliver_due`` takes
        it, and skipped if a retry runner elsewhere took it meanwhile: sending
        it here too would deliver it twice.
        """
        budget = timedelta(seconds=sum(self.sender.timeout))
        for delivery, hook in deliveries:
            now = to_stored_time(self.store.clock())
            if now + budget >= held_until and not self._take(
                _TAKE_HELD, delivery.id.hex, now, format_time(held_until)
            ):
                continue
            self.attempt(delivery, now, hook)

    def _take(self, sql: str, delivery_id: str, now: datetime, condition: str) -> bool:
        """Hold an unsent delivery (by stored id) for one lease from ``now``, if ``sql`` agrees."""
        hold = format_time(now + self.lease)
        with self.store.atomic():
            cursor = self.store.db.execute_sql(sql, (hold, delivery_id, condition))
            return bool(cursor.rowcount)

    def attempt(
        self,
        delivery: WebhookDelivery,
        now: datetime | None = None,
        hook: OutboundWebhook | None = None,
    ) -> WebhookDelivery:
        """Send one delivery and record the outcome on it and on its hook.

        ``now`` (default: the store's clock) is the time the attempt is made
        and recorded at, and the ``webhook-timestamp`` it is signed with.
        ``hook`` is the delivery's hook when the caller has just read it.
        """
        if hook is None:
            hook = _load(OutboundWebhook, _SELECT_HOOK, self.store.db, delivery.hook_id)
        if hook is None:  # deleted meanwhile, and its deliveries with it
            return delivery
        now = to_stored_time(self.store.clock() if now is None else now)
        if not hook.enabled:
            self._bury(delivery, now, f"hook disabled: {hook.disabled_reason or 'by hand'}")
            return delivery
        body = delivery.payload.encode("utf-8")
        try:
            headers = self.headers(hook, delivery, body, now)
        except Exception as exc:
            # A hook edited outside the API (the sqlite3 shell) may not make a request.
            outcome = Outcome(False, error=f"cannot build the request: {_short(exc)}")
        else:
            outcome = self.sender.post(hook.endpoint, body, headers, now)
        if outcome.error:
            outcome.error = _redacted(outcome.error, hook)
        self.record(hook, delivery, outcome, now)
        return delivery

    def headers(
        self, hook: OutboundWebhook, delivery: WebhookDelivery, body: bytes, now: datetime
    ) -> dict[str, str]:
        """The hook's headers, then defaults, then the signature headers nobody may override."""
        headers = dict(hook.headers or {})
        present = {name.lower() for name in headers}
        if "content-type" not in present:
            headers["Content-Type"] = "application/json"
        if hook.auth_token and "authorization" not in present:
            headers["Authorization"] = hook.auth_token
        own = {"user-agent", "webhook-id", "webhook-timestamp", "webhook-signature"}
        headers = {k: v for k, v in headers.items() if k.lower() not in own}
        secrets = [hook.secret]
        if (
            hook.previous_secret
            and hook.previous_secret_expires is not None
            and hook.previous_secret_expires > now
        ):
            secrets.append(hook.previous_secret)
        timestamp = int(now.timestamp())
        headers["User-Agent"] = f"tokenstore/{__version__}"
        headers["webhook-id"] = delivery.abid
        headers["webhook-timestamp"] = str(timestamp)
        headers["webhook-signature"] = signature_header(secrets, delivery.abid, timestamp, body)
        return headers

    def record(
        self, hook: OutboundWebhook, delivery: WebhookDelivery, outcome: Outcome, now: datetime
    ) -> None:
        """Write the attempt's outcome, schedule the next one, and disable hopeless hooks."""
        delivery.attempts += 1
        delivery.last_attempt_at = now
        delivery.last_status_code = outcome.status_code
        delivery.last_error = outcome.error
        delivery.duration_ms = outcome.duration_ms
        if hook.keep_last_response:
            hook.last_response = outcome.body
        stamp = format_time(now)
        disabled_reason = ""
        with self._bookkeeping() as conn:
            if outcome.ok:
                conn.execute(_HOOK_SUCCEEDED, (stamp, outcome.body, hook.id.hex))
                hook.last_success = now
                hook.failure_count = 0
                hook.failing_since = None
                delivery.status = "delivered"
                delivery.delivered_at = now
                delivery.next_attempt_at = None
            else:
                row = conn.execute(
                    _HOOK_FAILED, (stamp, stamp, outcome.body, hook.id.hex)
                ).fetchone()
                hook.last_failure = now
                if row is None:  # the hook was deleted meanwhile
                    row = (hook.failure_count + 1, stamp)
                hook.failure_count = row[0]
                hook.failing_since = OutboundWebhook.failing_since.python_value(row[1])
                disabled_reason = self._disabled_reason(hook, outcome, now)
                if disabled_reason or delivery.attempts >= len(RETRY_SCHEDULE):
                    delivery.status = "dead"
                    delivery.next_attempt_at = None
                else:
                    delivery.status = "failed"
                    delay = outcome.retry_after
                    if delay is None:
                        delay = RETRY_SCHEDULE[delivery.attempts]
                    delivery.next_attempt_at = now + delay
            self._write(conn, delivery)
        if disabled_reason:
            self.disable(hook, disabled_reason)
        if outcome.ok:
            signals.send_isolated(
                signals.webhook_delivered, OutboundWebhook, hook=hook, delivery=delivery
            )
        else:
            signals.send_isolated(
                signals.webhook_failed,
                OutboundWebhook,
                hook=hook,
                delivery=delivery,
                error=outcome.error,
            )
        if disabled_reason:
            signals.send_isolated(
                signals.webhook_disabled, OutboundWebhook, hook=hook, reason=disabled_reason
            )

    def _disabled_reason(self, hook: OutboundWebhook, outcome: Outcome, now: datetime) -> str:
        """Why a failure ends the hook: a 410, or failing for too many attempts and too long."""
        if outcome.gone:
            return f"the endpoint answered 410 Gone at {format_time(now)}"
        since: datetime = hook.failing_since or now
        if hook.failure_count >= self.disable_after_failures and now - since >= self.disable_after:
            return (
                f"{hook.failure_count} failed attempts in a row since {format_time(since)}; "
                f"last: {outcome.error}"
            )
        return ""

    @contextmanager
    def _bookkeeping(self) -> Iterator[sqlite3.Connection]:
        """A transaction for outcome bookkeeping, on this thread's connection.

        What it writes (delivery rows, a hook's quiet fields) is never
        captured, so when no transaction is open it commits without the
        change dispatcher's claim: two statements fewer on every send.
        Inside a caller's transaction it simply joins it.
        """
        conn = self.store.db.connection()
        if conn.in_transaction:
            yield conn
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @staticmethod
    def _write(conn: sqlite3.Connection, delivery: WebhookDelivery) -> None:
        """Store a delivery's outcome fields, as they are on the instance."""
        delivery.modified_at = utcnow()
        db_value = WebhookDelivery.last_attempt_at.db_value

        def time_value(value: Any) -> str | None:
            return format_time(value) if isinstance(value, datetime) else db_value(value)

        conn.execute(
            _RECORD_DELIVERY,
            (
                delivery.status,
                delivery.attempts,
                time_value(delivery.next_attempt_at),
                time_value(delivery.last_attempt_at),
                delivery.last_status_code,
                delivery.last_error,
                delivery.duration_ms,
                time_value(delivery.delivered_at),
                time_value(delivery.modified_at),
                delivery.id.hex,
            ),
        )

    def disable(self, hook: OutboundWebhook, reason: str) -> None:
        """Stop a hook and give up on what it still had to send."""
        with self.store.atomic():
            hook.enabled = False
            hook.disabled_reason = reason
            hook.save(only=[OutboundWebhook.enabled, OutboundWebhook.disabled_reason])
            WebhookDelivery.update(status="dead", next_attempt_at=None).where(
                (WebhookDelivery.hook == hook.id)
                & WebhookDelivery.status.in_(("pending", "failed"))
            ).execute()

    def _bury(self, delivery: WebhookDelivery, now: datetime, reason: str) -> None:
        delivery.status = "dead"
        delivery.next_attempt_at = None
        delivery.last_error = reason
        with self._bookkeeping() as conn:
            self._write(conn, delivery)

    def deliver_due(self, now: datetime | None = None, limit: int = 100) -> int:
        """Attempt every delivery whose time has come; returns how many were attempted.

        Each is taken with a conditional update first, so two processes
        running this at once never both send it. Without ``now`` the clock is
        read again for each one: sending the others took time, and a hold
        counted from the start could run out before the attempt ends.
        """
        fixed = now is not None
        now = to_stored_time(now or self.store.clock())
        stamp = format_time(now)
        due = [row[0] for row in self.store.db.execute_sql(_SELECT_DUE, (stamp, limit)).fetchall()]
        attempted = 0
        for delivery_id in due:
            at = now if fixed else to_stored_time(self.store.clock())
            if not self._take(_TAKE_DUE, delivery_id, at, stamp):
                continue
            delivery = _load(WebhookDelivery, _SELECT_DELIVERY, self.store.db, delivery_id)
            if delivery is not None:
                self.attempt(delivery, at)
                attempted += 1
        return attempted
