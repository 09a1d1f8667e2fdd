"""``store.webhooks``: outbound hooks, their deliveries, and the calls that manage them.

Every CLI ``tokenstore webhooks ...`` command is one of these methods.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import peewee

from ._abid import ABID
from ._allowlist import AllowList
from ._backend import Backend
from ._capture import model_ref
from ._credentials import looks_like_secret, quoted
from ._errors import InvalidABID, NotFound, ValidationError, about, shown
from ._inputs import (
    check_flag,
    check_int,
    check_seconds,
    check_span,
    check_text,
)
from ._models import OutboundWebhook, User, WebhookDelivery, unknown_owner
from ._outbox import Outbox
from ._outcomes import Outcomes
from ._payload import dumps
from ._retry_path import RetryPath
from ._retry_thread import RetryThread
from ._signing import new_signing_secret
from ._times import EARLIEST_NOW, LATEST_NOW, format_time, to_stored_time

logger = logging.getLogger("tokenstore.webhooks")

DELIVERY_STATUSES = ("pending", "failed", "delivered", "dead")

#: How many batches of the delivery log the retry path prunes once a minute (or each
#: call, while it is behind), and their size.
PRUNE_BATCHES = 4
PRUNE_BATCH = 500

#: How many deliveries ``deliveries()`` returns unless told, and at most.
DELIVERIES_PAGE = 100
MAX_DELIVERIES_PAGE = 10_000

#: The fields ``update()`` may change; the rest is bookkeeping.
EDITABLE = (
    "name",
    "signal",
    "ref",
    "endpoint",
    "headers",
    "auth_token",
    "enabled",
    "keep_last_response",
)


def _time_given(now: Any) -> datetime:
    """The time a caller passed as ``now``, the message naming it when it is none.

    It stands for the store's clock, so it is held to the range a clock's
    reading is: holds, retries and the log's cutoff are counted from it.
    """
    with about("now"):
        when = to_stored_time(now)
    if when < EARLIEST_NOW:
        raise ValidationError(
            f"now must be at least {format_time(EARLIEST_NOW)}, got {format_time(when)}"
        )
    if when > LATEST_NOW:
        raise ValidationError(
            f"now must be at most {format_time(LATEST_NOW)}, got {format_time(when)}"
        )
    return when


class Webhooks:
    """Create, change and inspect outbound webhooks; send what is due.

    Hooks are checked by the ``HookValidator`` bound to the model. Deliveries
    are the outbox's and the retry path's: this is the API over them. ``secret_grace`` is how long a
    rotated-out signing secret still signs.
    """

    def __init__(
        self,
        db: Backend,
        outbox: Outbox,
        retry_path: RetryPath,
        outcomes: Outcomes,
        allowlist: AllowList,
        clock: Callable[[], datetime],
        secret_grace: timedelta,
        keep_deliveries: timedelta | None,
    ) -> None:
        self.db = db
        self.outbox = outbox
        self.retry_path = retry_path
        self.outcomes = outcomes
        self._allowlist = allowlist
        self.clock = clock
        self.secret_grace = secret_grace
        self.keep_deliveries = keep_deliveries
        self._next_prune = 0.0  # time.monotonic() of the retry path's next pruning
        self._retry_threads: list[RetryThread] = []

    def close(self) -> None:
        """Close this thread's HTTP session."""
        self.outbox.sender.close()

    def stop_retry_threads(self) -> None:
        """Stop the retry threads started here (``store.close()`` does).

        Left running after the store closed, each kept its connection and
        went on sending: one more thread with every open and close. Rounds
        in progress are waited for up to one lease in all, however many
        threads there are; past that each ends by itself, as its round does.
        """
        threads, self._retry_threads = self._retry_threads, []
        for thread in threads:  # all asked first, so their rounds' ends are waited for together
            thread.stop(0)
        give_up = time.monotonic() + self.outbox.lease.total_seconds()
        for thread in threads:
            thread.stop(max(0.0, give_up - time.monotonic()))

    def create(
        self,
        name: str,
        ref: str | type[peewee.Model],
        endpoint: str,
        signal: str = "CREATE_UPDATE_OR_DELETE",
        headers: Mapping[str, str] | None = None,
        auth_token: str = "",
        keep_last_response: bool = False,
        created_by: User | None = None,
    ) -> OutboundWebhook:
        """Add a hook that POSTs each matching change of model ``ref`` to ``endpoint``.

        ``ref`` is a registered model or its ``module.ClassName``; ``signal``
        names the kinds of change sent (``CREATE``, ``UPDATE``, ``DELETE``,
        ``M2M`` or a combination such as ``CREATE_OR_UPDATE``); ``headers``
        and ``auth_token`` (the Authorization header) go with every request
        and stay private, but for the headers that identify, sign and frame
        the message (``webhook-id``, ``webhook-timestamp``,
        ``webhook-signature``, ``User-Agent``, ``Content-Length``,
        ``Transfer-Encoding``): tokenstore sends its own of those (and no
        Transfer-Encoding) whatever the hook holds, so a hook imported with one
        keeps working; ``created_by`` defaults to the system user. The
        hook's signing secret is ``hook.secret``: give it to the receiver.
        The ``name`` is unique, and no hook's ABID (``whk_...``): hooks are
        found by either.
        An endpoint at an address the guard refuses raises BlockedAddress.
        """
        if created_by is not None and not isinstance(created_by, User):
            raise ValidationError(
                f"created_by must be a User or None, got {type(created_by).__name__}"
            )
        hook = OutboundWebhook(
            name=name,
            ref=model_ref(ref) if isinstance(ref, type) else ref,
            endpoint=endpoint,
            signal=signal,
            headers={} if headers is None else headers,  # validate() checks and copies it
            auth_token=auth_token,
            keep_last_response=keep_last_response,
            secret=new_signing_secret(),
            created_by=created_by,
        )
        self._save(hook)
        return hook

    def _save(self, hook: OutboundWebhook) -> None:
        try:
            with self.db.atomic():
                hook.save()
        except peewee.IntegrityError as exc:
            # SQLite names the columns (table.name), PostgreSQL the unique index (table_name).
            if ".name" in str(exc) or "webhook_name" in str(exc):
                raise ValidationError(f"a webhook named {hook.name!r} already exists") from None
            if ".ref" in str(exc) or ".endpoint" in str(exc) or "_ref_endpoint" in str(exc):
                raise ValidationError(
                    f"a webhook for {hook.ref} at {hook.endpoint} already exists"
                ) from None
            missing = unknown_owner(exc, hook.created_by_id)
            if missing is not None:
                raise missing from None
            raise

    def allowlist(self) -> builtins.list[str]:
        """The hosts and networks hooks may reach beyond public addresses, for every process."""
        return self._allowlist.entries()

    def allow(self, entry: str) -> builtins.list[str]:
        """Let hooks reach a host, an address or a network (``127.0.0.1/32``), in every process.

        The list lives in the file, so the application, the ``tokenstore``
        command and any dispatcher judge endpoints alike. Returns the list.
        """
        return self._allowlist.add([entry])

    def disallow(self, entry: str) -> builtins.list[str]:
        """Take an entry off the file's allowlist; returns the list."""
        return self._allowlist.remove(entry)

    def list(self, enabled: bool | None = None) -> list[OutboundWebhook]:
        """Hooks, oldest first (ties by ABID, alike on both backends); ``enabled`` filters."""
        query = OutboundWebhook.select().order_by(OutboundWebhook.created_at, OutboundWebhook.abid)
        if enabled is not None:
            query = query.where(OutboundWebhook.enabled == check_flag(enabled, "enabled"))
        return list(query)

    def get(self, key: str) -> OutboundWebhook:
        """A hook by ABID (any case) or by name; an ABID wins over a name spelled like it."""
        check_text(key, "webhook ABID or name")
        hook = None
        with contextlib.suppress(InvalidABID):  # not an ABID: a name, then
            abid = ABID.parse(key, prefix="whk_").canonical
            hook = OutboundWebhook.get_or_none(OutboundWebhook.abid == abid)
        if hook is None:
            hook = OutboundWebhook.get_or_none(OutboundWebhook.name == key)
        if hook is None:
            shown = "(a secret, not shown)" if looks_like_secret(key) else repr(str(key)[:80])
            raise NotFound(f"no webhook with ABID or name {shown}")
        return hook

    def update(
        self,
        hook: OutboundWebhook | str,
        *,
        unchanged_since: datetime | None = None,
        **changes: Any,
    ) -> OutboundWebhook:
        """Change the given fields of a hook, all or nothing.

        The fields are those of ``EDITABLE``: name, signal, ref, endpoint,
        headers, auth_token, enabled, keep_last_response. ``enabled`` only
        sets the flag: ``enable()`` also forgets the failure streak, and
        ``disable()`` gives up what the hook still had to send.
        ``unchanged_since`` is the ``modified_at`` the caller saw: if the
        hook was changed since (another editor saved), nothing is written and
        ``ValidationError`` says so.
        """
        hook = self._hook(hook)
        unknown = sorted(set(changes) - set(EDITABLE))
        if unknown:
            raise ValidationError(
                f"cannot update {', '.join(unknown)}; editable fields: {', '.join(EDITABLE)}"
            )
        if "ref" in changes and isinstance(changes["ref"], type):
            changes["ref"] = model_ref(changes["ref"])
        if unchanged_since is not None:
            with about("unchanged_since"):
                unchanged_since = to_stored_time(unchanged_since)
        before = {key: getattr(hook, key) for key in changes}
        for key, value in changes.items():
            setattr(hook, key, value)
        try:
            with self.db.atomic():
                if unchanged_since is not None:
                    stored = self._locked(hook)
                    if stored.modified_at != unchanged_since:
                        raise ValidationError(
                            f"webhook {stored.name!r} was changed meanwhile (at "
                            f"{format_time(stored.modified_at)}, after "
                            f"{format_time(unchanged_since)}): nothing was saved"
                        )
                self._save(hook)
        except Exception:
            # Nothing was stored; the caller's object must not claim otherwise,
            # or its next save() would write the refused values after all.
            for key, value in before.items():
                setattr(hook, key, value)
            raise
        return hook

    def delete(self, hook: OutboundWebhook | str) -> None:
        """Remove a hook and its delivery log."""
        self._hook(hook).delete_instance()

    def enable(self, hook: OutboundWebhook | str) -> OutboundWebhook:
        """Turn a hook back on, forgetting its failure streak."""
        hook = self._hook(hook)
        with self.db.atomic():
            hook.enabled = True
            hook.disabled_reason = ""
            hook.failure_count = 0
            hook.failing_since = None
            hook.save()
        return hook

    def disable(
        self, hook: OutboundWebhook | str, reason: str = "disabled by hand"
    ) -> OutboundWebhook:
        """Turn a hook off; what it still had to send is given up (``redeliver`` brings it back)."""
        hook = self._hook(hook)
        self.outcomes.disable(
            hook, check_text(reason, "reason", max_length=255, kept_as="a reason")
        )
        return hook

    def rotate_secret(
        self,
        hook: OutboundWebhook | str,
        grace: timedelta | None = None,
        expected: str | None = None,
    ) -> OutboundWebhook:
        """Give a hook a new signing secret; the old one keeps signing too for ``grace``.

        ``expected`` is the ``secret_version`` the caller saw: if the hook's secret is
        another by now (the same request sent twice, a rotation elsewhere), nothing is
        rotated and ``ValidationError`` says so.
        """
        hook = self._hook(hook)
        grace = self.secret_grace if grace is None else check_span(grace, "grace", allow_zero=True)
        if expected is not None:
            check_text(expected, "expected")
        with self.db.atomic():  # the secret as it is now: another rotation's may have committed
            stored = self._locked(hook)
            if expected is not None and stored.secret_version != expected:
                raise ValidationError(
                    f"the signing secret of webhook {stored.name!r} was rotated meanwhile "
                    "(it is not the version expected): it was not rotated again"
                )
            hook.previous_secret = stored.secret
            hook.previous_secret_expires = to_stored_time(self.clock()) + grace
            hook.secret = new_signing_secret()
            hook.save()
        return hook

    def _locked(self, hook: OutboundWebhook) -> OutboundWebhook:
        """The hook's row as stored now, locked for this transaction: the writers that
        check it first (a rotation, an update that names a version) go one after another."""
        self.outbox.lock_hook(OutboundWebhook.id.db_value(hook.id))
        stored = OutboundWebhook.get_or_none(OutboundWebhook.id == hook.id)
        if stored is None:
            raise NotFound(f"no webhook {hook.name!r}: it was deleted meanwhile")
        return stored

    def _hook(self, hook: OutboundWebhook | str) -> OutboundWebhook:
        """The hook named, or the hook object given if its row is still there.

        A copy whose row was deleted (or never stored) would save to nothing and
        report success, or break a foreign key when a delivery is made for it.
        """
        if not isinstance(hook, OutboundWebhook):
            return self.get(hook)
        if not OutboundWebhook.select().where(OutboundWebhook.id == hook.id).exists():
            raise NotFound(f"no webhook {hook.name!r}: it was deleted, or never stored")
        return hook

    # -- deliveries ---------------------------------------------------------------------

    def deliveries(
        self,
        hook: OutboundWebhook | str | None = None,
        status: str | None = None,
        limit: int = DELIVERIES_PAGE,
        before: WebhookDelivery | str | None = None,
    ) -> builtins.list[WebhookDelivery]:
        """A page of the delivery log, newest first, optionally for one hook or one status.

        ``before`` (a delivery or its ``msg_...`` ABID) is the cursor: the page
        starts after it, so passing the last delivery of one page gives the next,
        even if that delivery was pruned meanwhile.
        """
        if type(limit) is not int or not 1 <= limit <= MAX_DELIVERIES_PAGE:
            raise ValidationError(
                f"limit must be a whole number from 1 to {MAX_DELIVERIES_PAGE}, got {quoted(limit)}"
            )
        query = WebhookDelivery.select().order_by(
            WebhookDelivery.created_at.desc(), WebhookDelivery.abid.desc()
        )
        if before is not None:
            query = query.where(
                peewee.Tuple(WebhookDelivery.created_at, WebhookDelivery.abid)
                < peewee.Tuple(*self._place_in_log(before))
            )
        if hook is not None:
            query = query.where(WebhookDelivery.hook == self._hook(hook).id)
        if status is not None:
            if status not in DELIVERY_STATUSES:
                raise ValidationError(
                    f"delivery status {quoted(status)} is not one of: "
                    f"{', '.join(DELIVERY_STATUSES)}"
                )
            query = query.where(WebhookDelivery.status == status)
        return list(query.limit(limit))

    def _place_in_log(self, before: WebhookDelivery | str) -> tuple[str, str]:
        """Where a cursor stands in the log's order: its delivery's ``created_at`` and ABID.

        A delivery pruned since its page was read still has a place: its ABID
        holds the time it was made, to the millisecond, as ``created_at`` does.
        """
        if isinstance(before, WebhookDelivery):
            after = before
        else:
            try:
                with about("before"):
                    after = self.delivery(before)
            except NotFound as missing:
                try:
                    gone = ABID.parse(before, prefix="msg_")
                    return format_time(gone.datetime), gone.canonical
                except InvalidABID:  # no delivery's ABID at all
                    raise missing from None
        if after.created_at is None or after.abid is None:  # it has no place in the log
            raise ValidationError(
                "before: a delivery never saved; pass one from the log, or its msg_ ABID"
            )
        return format_time(after.created_at), after.abid

    def prune(self, older_than: timedelta | None = None) -> int:
        """Delete finished deliveries (delivered, dead) older than ``older_than``; how many.

        The default is the store's ``keep_deliveries``. Each hook's latest
        finished delivery is kept, so its last outcome stays readable. The
        retry path also prunes, a little at a time, off the writing thread.
        """
        keep = self.keep_deliveries if older_than is None else older_than
        if keep is None:
            return 0
        return self.retry_path.prune(check_span(keep, "older_than", allow_zero=True))

    def delivery(self, abid: str) -> WebhookDelivery:
        """One delivery by its ABID (the ``webhook-id`` its receiver saw).

        Text that is no delivery's ABID is no delivery (NotFound), as an
        unknown one is; anything but text is the caller's mistake (ValidationError).
        """
        if not isinstance(abid, str):
            raise ValidationError(
                f"a delivery's webhook-id (msg_...) is text, got {type(abid).__name__}"
            )
        if looks_like_secret(abid):  # pasted by mistake: not to be quoted into a log
            raise NotFound("no delivery of that id, which looks like a secret (not shown)")
        try:
            found = WebhookDelivery.get_or_none(
                WebhookDelivery.abid == ABID.parse(abid, prefix="msg_").canonical
            )
        except InvalidABID as exc:
            raise NotFound(f"no delivery {shown(abid)}: {exc}") from None
        if found is None:
            raise NotFound(f"no delivery {shown(abid)}")
        return found

    def deliver_due(self, now: Any = None, limit: int = 100) -> int:
        """Attempt the deliveries whose retry time has come; returns how many were attempted.

        At most ``limit`` attempts; ``now`` (an aware datetime, default the
        store's clock) decides what is due. Rotated-out signing secrets whose
        grace period is over are erased first. Once a minute it also prunes a
        few batches of the delivery log (see ``prune``); while the batches come
        back full, at every call, so a log that grows faster than a few
        batches a minute is still held to ``keep_deliveries``.
        """
        check_int(limit, "limit", minimum=1)
        when = None if now is None else _time_given(now)
        self.erase_expired_secrets(when)
        attempted = self.retry_path.deliver_due(when, limit)
        if self.keep_deliveries is not None and time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + 60
            pruned = self.retry_path.prune(self.keep_deliveries, PRUNE_BATCHES, PRUNE_BATCH)
            if pruned == PRUNE_BATCHES * PRUNE_BATCH:  # behind: the next call goes on
                self._next_prune = 0.0
        return attempted

    def erase_expired_secrets(self, now: datetime | None = None) -> None:
        """Erase rotated-out signing secrets whose grace is over: nobody signs with them now.

        With ``secure_delete`` on, their bytes are overwritten, not just unlinked.
        """
        cutoff = to_stored_time(self.clock()) if now is None else _time_given(now)
        expired = OutboundWebhook.previous_secret_expires <= cutoff
        if OutboundWebhook.select().where(expired).exists():  # a read: no write lock if none
            OutboundWebhook.update(previous_secret=None, previous_secret_expires=None).where(
                expired
            ).execute()

    def ping(self, hook: OutboundWebhook | str) -> WebhookDelivery:
        """Send a ``webhook.ping`` message now, to check a receiver and its secret."""
        hook = self._enabled(self._hook(hook))
        now = to_stored_time(self.clock())
        payload = {
            "type": "webhook.ping",
            "timestamp": format_time(now),
            "data": {"hook": hook.abid, "name": hook.name, "ref": hook.ref},
        }
        # Held like a change's delivery: if this process dies before the attempt, it is retried.
        try:
            delivery = self.outbox.create_ping(hook, dumps(payload), now)
        except peewee.IntegrityError as exc:  # its foreign key: deleted since it was read
            if "foreign key" not in str(exc).lower():
                raise
            raise NotFound(f"no webhook {hook.name!r}: it was deleted meanwhile") from None
        return self.outbox.attempt(delivery, now)

    def redeliver(self, delivery: WebhookDelivery | str) -> WebhookDelivery:
        """Send a delivery again now, with the same ``webhook-id``; its hook must be enabled."""
        self.outbox.refuse_in_transaction("webhooks.redeliver()")
        if not isinstance(delivery, WebhookDelivery):
            delivery = self.delivery(delivery)
        # The row, not the object given: one never saved has no hook to look up, and one
        # edited in memory would send another body under the same webhook-id.
        stored = self.outbox.delivery(delivery.id.hex)
        hook = None if stored is None else self.outbox.hook(stored.hook_id)
        if stored is None or hook is None:
            raise NotFound(
                f"no delivery {delivery.abid}: it was deleted with its hook, or pruned, "
                "or never saved"
            )
        return self.outbox.attempt(stored, hook=self._enabled(hook))

    @staticmethod
    def _enabled(hook: OutboundWebhook) -> OutboundWebhook:
        """The hook, if it may send: asked to send through a disabled hook, the caller is told.

        Sending would otherwise be refused at the attempt, which records the
        delivery as dead: a delivered message's log would say it never arrived.
        """
        if not hook.enabled:
            raise ValidationError(
                f"webhook {hook.name!r} is disabled ({hook.disabled_reason or 'by hand'}); "
                "enable it first"
            )
        return hook

    def start_retry_thread(self, interval: float = 5.0) -> RetryThread:
        """Run ``deliver_due`` every ``interval`` seconds in a daemon thread until stopped.

        It stops with ``stop()``, or when the store closes. A read-only store
        raises StoreReadOnly: each attempt is recorded, which it cannot do.
        """
        self.db.refuse_if_read_only()
        thread = RetryThread(self, check_seconds(interval, "interval"))
        # The HTTP library is loaded on this thread, which forks if anything does: loaded by
        # the new thread's first round, it held an import lock a child forked meanwhile
        # waited for forever.
        self.outbox.sender.session()
        self._retry_threads = [t for t in self._retry_threads if t.is_alive()]
        self._retry_threads.append(thread)
        thread.start()
        return thread
