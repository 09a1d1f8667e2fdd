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
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import peewee

from . import __version__, signals
from .changes import ChangeEvent
from .errors import BlockedAddress
from .models import OutboundWebhook, WebhookDelivery, format_time, to_stored_time
from .netguard import AddressGuard
from .signing import signature_header

if TYPE_CHECKING:
    import requests

    from .store import Store

logger = logging.getLogger("tokenstore.delivery")

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

KIND_BY_OP = {"INSERT": "CREATE", "UPDATE": "UPDATE", "DELETE": "DELETE"}
TYPE_BY_OP = {"INSERT": "created", "UPDATE": "updated", "DELETE": "deleted"}

_ENABLED_HOOKS = (
    "SELECT id, ref, signal FROM tokenstore_outbound_webhook WHERE enabled = 1 ORDER BY created_at"
)


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
        fields[f.name] = jsonable(f.python_value(raw))
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
    if value.isdigit():
        delay = timedelta(seconds=int(value))
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        delay = when - now
    return max(timedelta(0), min(delay, MAX_RETRY_AFTER))


class Sender:
    """Posts messages over one keep-alive session per thread, through the address guard."""

    def __init__(self, guard: AddressGuard, connect_timeout: float, read_timeout: float) -> None:
        self.guard = guard
        self.timeout = (connect_timeout, read_timeout)
        self._local = threading.local()

    def session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            from .netguard import guarded_session

            session = guarded_session(self.guard)
            self._local.session = session
        return session

    def close(self) -> None:
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()
            self._local.session = None

    def post(self, url: str, body: bytes, headers: dict[str, str], now: datetime) -> Outcome:
        """One POST; never raises for what the network or the receiver does."""
        import requests

        start = time.perf_counter()
        try:
            response = self.session().post(
                url,
                data=body,
                headers=headers,
                timeout=self.timeout,
                allow_redirects=False,
                stream=True,
            )
        except BlockedAddress as exc:
            return Outcome(False, error=f"blocked: {exc}", duration_ms=_since(start))
        except requests.Timeout as exc:
            return Outcome(False, error=f"timed out: {_short(exc)}", duration_ms=_since(start))
        except requests.RequestException as exc:
            return Outcome(
                False, error=f"{type(exc).__name__}: {_short(exc)}", duration_ms=_since(start)
            )
        try:
            text = _read_limited(response)
        except requests.RequestException as exc:
            text = f"(response body unreadable: {_short(exc)})"
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


def _since(start: float) -> int:
    return round((time.perf_counter() - start) * 1000)


def _short(exc: BaseException) -> str:
    return str(exc)[:500]


def _read_limited(response: requests.Response) -> str:
    """Up to RESPONSE_LIMIT characters of the body, decoded with replacement.

    A body larger than that is not read to the end; closing the response then
    drops the connection rather than draining megabytes from it.
    """
    data = bytearray()
    for chunk in response.iter_content(8192):
        data += chunk
        if len(data) >= _RESPONSE_BYTES:
            break
    return bytes(data[:_RESPONSE_BYTES]).decode("utf-8", errors="replace")[:RESPONSE_LIMIT]


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
        return conn.execute(_ENABLED_HOOKS + " LIMIT 1").fetchone() is not None

    def on_events(
        self, conn: sqlite3.Connection, events: list[ChangeEvent]
    ) -> Callable[[], None] | None:
        """Write a pending delivery per matching hook and event; send them after commit."""
        hooks = conn.execute(_ENABLED_HOOKS).fetchall()
        if not hooks:
            return None
        store = self.store
        refs = {table: store.ref(model) for table, model in store.models.items()}
        created: list[WebhookDelivery] = []
        # The creator holds the delivery for one lease, so deliver_due elsewhere
        # does not send it at the same time; if this process dies, it is due after that.
        hold = format_time(store.clock() + self.lease)
        for event in events:
            ref = refs.get(event.table)
            kind = KIND_BY_OP[event.op]
            matching = [h for h in hooks if h[1] == ref and signal_matches(h[2], kind)]
            if not matching:
                continue
            model = store.models[event.table]
            payload = event_payload(store, model, event)
            body = dumps(payload)
            for hook_id, _, _ in matching:
                delivery = WebhookDelivery(
                    hook=hook_id,
                    event_id=event.id,
                    event_type=payload["type"],
                    payload=body,
                    next_attempt_at=hold,
                )
                delivery.save()
                created.append(delivery)
        if not created:
            return None
        return lambda: self.attempt_all(created)

    # -- sending ------------------------------------------------------------------------

    def attempt_all(self, deliveries: Iterable[WebhookDelivery]) -> None:
        for delivery in deliveries:
            self.attempt(delivery)

    def attempt(self, delivery: WebhookDelivery) -> WebhookDelivery:
        """Send one delivery now and record the outcome on it and on its hook."""
        hook: OutboundWebhook = OutboundWebhook.get_by_id(delivery.hook_id)
        now = to_stored_time(self.store.clock())
        if not hook.enabled:
            self._bury(delivery, now, f"hook disabled: {hook.disabled_reason or 'by hand'}")
            return delivery
        body = delivery.payload.encode("utf-8")
        outcome = self.sender.post(
            hook.endpoint, body, self.headers(hook, delivery, body, now), now
        )
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
        disabled_reason = ""
        if outcome.ok:
            delivery.status = "delivered"
            delivery.delivered_at = now
            delivery.next_attempt_at = None
            hook.last_success = now
            hook.failure_count = 0
            hook.failing_since = None
        else:
            hook.last_failure = now
            hook.failure_count += 1
            hook.failing_since = hook.failing_since or now
            if outcome.gone:
                disabled_reason = f"the endpoint answered 410 Gone at {format_time(now)}"
            elif (
                hook.failure_count >= self.disable_after_failures
                and now - hook.failing_since >= self.disable_after
            ):
                disabled_reason = (
                    f"{hook.failure_count} failed attempts in a row since "
                    f"{format_time(hook.failing_since)}; last: {outcome.error}"
                )
            if disabled_reason or delivery.attempts >= len(RETRY_SCHEDULE):
                delivery.status = "dead"
                delivery.next_attempt_at = None
            else:
                delivery.status = "failed"
                delay = outcome.retry_after
                if delay is None:
                    delay = RETRY_SCHEDULE[delivery.attempts]
                delivery.next_attempt_at = now + delay
        with self.store.atomic():
            delivery.save()
            hook.save(
                only=[
                    OutboundWebhook.last_response,
                    OutboundWebhook.last_success,
                    OutboundWebhook.last_failure,
                    OutboundWebhook.failure_count,
                    OutboundWebhook.failing_since,
                ]
            )
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
        delivery.save()

    def deliver_due(self, now: datetime | None = None, limit: int = 100) -> int:
        """Attempt every delivery whose time has come; returns how many were attempted.

        Each is taken with a conditional update first, so two processes
        running this at once never both send it.
        """
        now = to_stored_time(now or self.store.clock())
        stamp = format_time(now)
        due = [
            d.id
            for d in WebhookDelivery.select(WebhookDelivery.id)
            .where(
                WebhookDelivery.status.in_(("pending", "failed"))
                & (WebhookDelivery.next_attempt_at <= stamp)
            )
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
        ]
        attempted = 0
        hold = format_time(now + self.lease)
        for delivery_id in due:
            taken = (
                WebhookDelivery.update(next_attempt_at=hold)
                .where(
                    (WebhookDelivery.id == delivery_id)
                    & WebhookDelivery.status.in_(("pending", "failed"))
                    & (WebhookDelivery.next_attempt_at <= stamp)
                )
                .execute()
            )
            if taken:
                self.attempt(WebhookDelivery.get_by_id(delivery_id))
                attempted += 1
        return attempted
