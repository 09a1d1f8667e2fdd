"""The pages: each function answers one route for a signed-in visit.

They use tokenstore's public API (``store.users``, ``store.tokens``,
``store.webhooks`` and the public models), and a few private helpers: the
sender's ``message_headers``, to show a delivery's request headers;
``usernames``, to name owners a page at a time; and ``live_from``, so the
overview counts as live exactly the tokens ``authenticate`` accepts. Secrets
are put on a page once, through the session's ``reveal``, on the page after
the one that made them; header values and auth tokens are never shown, only
their names or presence.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import peewee

import tokenstore
from tokenstore import APIToken, OutboundWebhook, User, WebhookDelivery
from tokenstore._credentials import quoted
from tokenstore._inputs import check_text
from tokenstore._sending import message_headers
from tokenstore._tokens import live_from
from tokenstore._users import usernames

from ._chart import chart, hourly_outcomes
from ._sessions import MAX_FORMS, Reveal

if TYPE_CHECKING:
    from ._http import Response
    from ._visit import Visit

#: What masked values are shown as.
MASK = "••••••"
#: Deliveries per page of the delivery log.
PAGE_SIZE = 50
#: Delivery states, in the order the filter offers them.
STATUSES = ("pending", "failed", "delivered", "dead")


def _form(visit: Visit) -> dict[str, str]:
    return visit.request.form()


@contextmanager
def _once(visit: Visit) -> Iterator[None]:
    """The block, for a form sent for the first time: one sent again (a double click, the
    page sent again from the history) is refused. A block that fails did nothing, and
    gives the form back to be sent again."""
    form_id = _required(_form(visit), "form_id")
    if not visit.session.take_form(form_id):
        raise tokenstore.ValidationError(
            "this form was sent already (a double click, or the page sent again), or is "
            f"older than the session's last {MAX_FORMS} forms: it was not carried out again; "
            "reload the page for a new one"
        )
    try:
        yield
    except BaseException:
        visit.session.keep_form(form_id)
        raise


def _required(form: dict[str, str], name: str) -> str:
    """A hidden field every form of the page carries: without it, the form is not the page's.

    It is checked here as text under its own name: a form made by hand must not
    be told about the API's name for what it sent.
    """
    value = form.get(name)
    if not value:
        raise tokenstore.ValidationError(
            f"the form carries no {name}: reload the page and send it again"
        )
    return check_text(value, name)


# -- overview -------------------------------------------------------------------------------


def overview(visit: Visit) -> Response:
    store = visit.store
    now = store.clock()
    live_tokens = APIToken.select().where(
        APIToken.revoked_at.is_null()
        & (APIToken.expires.is_null() | (APIToken.expires >= live_from(now)))
    )
    hooks = store.webhooks.list()
    counts = {
        "users": User.select().where(User.id != store.system_user.id).count(),
        "live tokens": live_tokens.count(),
        "webhooks": len(hooks),
        "enabled webhooks": sum(1 for hook in hooks if hook.enabled),
        "pending deliveries": WebhookDelivery.select()
        .where(WebhookDelivery.status == "pending")
        .count(),
        "failed deliveries": WebhookDelivery.select()
        .where(WebhookDelivery.status.in_(("failed", "dead")))
        .count(),
    }
    picture = chart(hourly_outcomes(store, now))
    return visit.render("overview.html", page="overview", counts=counts, chart=picture)


# -- users ----------------------------------------------------------------------------------


def users(visit: Visit, error: str = "") -> Response:
    """The users, newest first, a page at a time: ``after`` is the last id of the page before."""
    store = visit.store
    cursor = visit.request.query.get("after", "")
    after = _as_id(cursor)
    if cursor and after is None:
        raise tokenstore.ValidationError(f"after must be a user id, got {quoted(cursor)}")
    with _cursor():  # one more, and the system user
        listed = store.users.list(limit=PAGE_SIZE + 2, before=after)
    shown, more = _page([u for u in reversed(listed) if u.id != store.system_user.id])
    counted: Any = (  # (owner id, count) tuples, which peewee's stubs cannot say
        APIToken.select(APIToken.created_by, peewee.fn.COUNT(APIToken.id))
        .where(APIToken.revoked_at.is_null(), APIToken.created_by.in_([u.id for u in shown]))
        .group_by(APIToken.created_by)
        .tuples()
    )
    owned: dict[int, int] = {owner: count for owner, count in counted}
    return visit.render(
        "users.html",
        page="users",
        users=shown,
        owned=owned,
        more=more and more.id,
        first_page=after is None,
        error=error,
    )


@contextmanager
def _cursor() -> Iterator[None]:
    """A refused cursor named as the page's address names it: ``after``, not the store's
    ``before``, which the visitor never typed."""
    try:
        yield
    except (tokenstore.ValidationError, tokenstore.NotFound) as exc:
        if not str(exc).startswith("before: "):
            raise
        raise type(exc)(f"after: {str(exc).removeprefix('before: ')}") from None


def _as_id(text: str) -> int | None:
    """``text`` as a user id, if it is one: ASCII digits ("\u00b2".isdigit() too), short
    enough for int() to take. The range is ``store.users``' to check."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 100 else None


def _page(rows: list[Any]) -> tuple[list[Any], Any]:
    """Rows read one past ``PAGE_SIZE``: the page, and its last row if another page follows."""
    shown = rows[:PAGE_SIZE]
    return shown, shown[-1] if len(rows) > PAGE_SIZE else None


def add_user(visit: Visit) -> Response:
    form = _form(visit)
    user = visit.store.users.create(form.get("username", "").strip(), form.get("superuser") == "on")
    return visit.done("/users", f"User {user.username} added.")


# -- tokens ---------------------------------------------------------------------------------


def token_state(token: APIToken, now: Any) -> str:
    if token.revoked_at is not None:
        return "revoked"
    return "active" if token.is_valid(now) else "expired"


def tokens(visit: Visit, error: str = "") -> Response:
    """The tokens, newest first, a page at a time: ``after`` is the last ABID of the page before."""
    store = visit.store
    now = store.clock()
    after = visit.request.query.get("after")
    with _cursor():
        listed = store.tokens.list(include_revoked=True, limit=PAGE_SIZE + 1, before=after or None)
    listed.reverse()  # newest first
    shown, more = _page(listed)
    return visit.render(
        "tokens.html",
        page="tokens",
        tokens=[(token, token_state(token, now)) for token in shown],
        more=more and more.abid,
        first_page=not after,
        names=usernames({token.created_by_id for token in shown}),
        # Owners to choose from, while there are few enough to list; past that, a name is typed.
        users=store.users.list(limit=PAGE_SIZE + 1),
        many_users=PAGE_SIZE,
        form_id=visit.form_id(),
        error=error,
    )


def _expiry(text: str) -> timedelta | None:
    if not text.strip():
        return None
    try:
        days = float(text)
    except ValueError:
        raise tokenstore.ValidationError(
            f"expires in {quoted(text)} days: give a number of days, or leave it empty for never"
        ) from None
    # Above 0 but below a microsecond is no time at all, which the store refuses in its own words.
    if not 0 < days <= 36_500 or not timedelta(days=days):
        raise tokenstore.ValidationError(
            f"expires in {quoted(text)} days: use 0 < days <= 36500 (a microsecond at least)"
        )
    return timedelta(days=days)


def create_token(visit: Visit) -> Response:
    form = _form(visit)
    scopes = form.get("scopes", "").replace(",", " ").split()
    user = form.get("user", "").strip()
    owner = _as_id(user)
    with _once(visit):
        token, secret = visit.store.tokens.create(
            user if owner is None else owner,
            name=form.get("name", "").strip() or None,
            expires=_expiry(form.get("expires_days", "")),
            scopes=scopes,
        )
    visit.session.reveal = Reveal(f"Secret of token {token.abid}", secret)
    return visit.done("/tokens", f"Token {token.abid} created.")


def confirm_revoke(visit: Visit, abid: str) -> Response:
    token = visit.store.tokens.get(abid)
    owner = usernames({token.created_by_id}).get(token.created_by_id, "?")
    return visit.render(
        "confirm.html",
        page="tokens",
        title="Revoke token",
        question=f"Revoke token {token.abid} ({token.token_redacted}, "
        f"{token.name or 'unnamed'}, of {owner}) for good?",
        action=f"/tokens/{token.abid}/revoke",
        button="Revoke",
        back="/tokens",
        fields=[],
        warning="This is the token this session signed in with: revoking it signs you out."
        if token.abid == visit.session.token_abid
        else "",
    )


def revoke_token(visit: Visit, abid: str) -> Response:
    """Revokes the token; one revoked already (the form sent twice, another tab) is said so."""
    token = visit.store.tokens.get(abid)
    if token.revoked_at is not None:
        return visit.done("/tokens", f"Token {token.abid} was revoked already.")
    token = visit.store.tokens.revoke(token)
    return visit.done("/tokens", f"Token {token.abid} revoked.")


# -- webhooks -------------------------------------------------------------------------------


def parse_headers(text: str) -> dict[str, str]:
    """``Name: value`` lines (blank lines skipped) as a headers mapping.

    A line ends at LF, or CRLF as browsers send a textarea; not at whatever
    else ``str.splitlines`` breaks at (a lone CR, U+2028, ``\\x0b``...): a value
    holding one stays one value, which the store refuses for its control
    character, rather than a second header of the value's making. A name
    written twice is refused: as a mapping, its first value would be dropped
    without a word.
    """
    headers: dict[str, str] = {}
    for number, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise tokenstore.ValidationError(
                f"headers, line {number}: write each header as 'Name: value'"
            )
        if name.strip().lower() in {given.lower() for given in headers}:
            raise tokenstore.ValidationError(
                f"headers, line {number}: {name.strip()!r} is named twice (ignoring case)"
            )
        headers[name.strip()] = value.strip()
    return headers


def next_attempt(hook: OutboundWebhook) -> Any:
    """When the hook's next retry is due, if one is waiting."""
    waiting = (
        WebhookDelivery.select(WebhookDelivery.next_attempt_at)
        .where(
            (WebhookDelivery.hook == hook.id)
            & WebhookDelivery.status.in_(("pending", "failed"))
            & WebhookDelivery.next_attempt_at.is_null(False)
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .first()
    )
    return None if waiting is None else waiting.next_attempt_at


def _refs(store: tokenstore.Store) -> list[str]:
    """The models a new hook may watch: all but the delivery log, which is not captured."""
    models = (m for m in store.models.values() if m is not WebhookDelivery)
    return sorted(store.ref(model) for model in models)


def webhooks(visit: Visit, error: str = "") -> Response:
    store = visit.store
    hooks = store.webhooks.list()
    return visit.render(
        "webhooks.html",
        page="webhooks",
        hooks=[(hook, next_attempt(hook)) for hook in hooks],
        refs=_refs(store),
        error=error,
    )


def add_webhook(visit: Visit) -> Response:
    form = _form(visit)
    hook = visit.store.webhooks.create(
        form.get("name", "").strip(),
        form.get("ref", ""),
        form.get("endpoint", "").strip(),
        signal=form.get("signal", "").strip() or "CREATE_UPDATE_OR_DELETE",
        headers=parse_headers(form.get("headers", "")),
        auth_token=form.get("auth_token", ""),
        keep_last_response=form.get("keep_last_response") == "on",
    )
    visit.session.reveal = Reveal(f"Signing secret of webhook {hook.name}", hook.secret)
    return visit.done(f"/webhooks/{hook.abid}", f"Webhook {hook.name} added.")


def webhook(visit: Visit, abid: str, error: str = "") -> Response:
    store = visit.store
    hook = store.webhooks.get(abid)
    recent = store.webhooks.deliveries(hook, limit=10)
    return visit.render(
        "webhook.html",
        page="webhooks",
        hook=hook,
        header_names=sorted(hook.headers or {}),
        now=store.clock(),
        next_attempt=next_attempt(hook),
        deliveries=recent,
        refs=_refs(store),
        mask=MASK,
        error=error,
    )


def edit_webhook(visit: Visit, abid: str) -> Response:
    """Saves the form over the hook it was shown: a hook saved meanwhile (in another tab) is
    refused, not overwritten with what this form showed of it."""
    form = _form(visit)
    version = _required(form, "hook_version")
    try:
        shown = datetime.fromisoformat(version)
    except ValueError:
        raise tokenstore.ValidationError(
            f"hook_version {quoted(version)} is not a time: reload the page"
        ) from None
    changes: dict[str, Any] = {
        "name": form.get("name", "").strip(),
        "endpoint": form.get("endpoint", "").strip(),
        "signal": form.get("signal", "").strip(),
        "keep_last_response": form.get("keep_last_response") == "on",
    }
    # Stored values are never put in the form, so an empty field keeps them.
    if form.get("clear_headers") == "on":
        changes["headers"] = {}
    elif form.get("headers", "").strip():
        changes["headers"] = parse_headers(form["headers"])
    if form.get("clear_auth_token") == "on":
        changes["auth_token"] = ""
    elif form.get("auth_token", ""):
        changes["auth_token"] = form["auth_token"]
    hook = visit.store.webhooks.update(abid, unchanged_since=shown, **changes)
    return visit.done(f"/webhooks/{hook.abid}", f"Webhook {hook.name} saved.")


def enable_webhook(visit: Visit, abid: str) -> Response:
    """Enables a disabled hook; an enabled one keeps its failure streak, untouched."""
    hook = visit.store.webhooks.get(abid)
    if hook.enabled:
        return visit.done(f"/webhooks/{hook.abid}", f"Webhook {hook.name} is already enabled.")
    hook = visit.store.webhooks.enable(hook)
    return visit.done(f"/webhooks/{hook.abid}", f"Webhook {hook.name} enabled.")


def disable_webhook(visit: Visit, abid: str) -> Response:
    """Disables an enabled hook; a disabled one keeps the reason it was disabled for."""
    reason = _form(visit).get("reason", "").strip() or "disabled in the admin page"
    hook = visit.store.webhooks.get(abid)
    if not hook.enabled:
        return visit.done(f"/webhooks/{hook.abid}", f"Webhook {hook.name} is already disabled.")
    hook = visit.store.webhooks.disable(hook, reason)
    return visit.done(f"/webhooks/{hook.abid}", f"Webhook {hook.name} disabled.")


def rotate_secret(visit: Visit, abid: str) -> Response:
    """Once per form: a second send of it finds the secret it names rotated already."""
    expected = _required(_form(visit), "secret_version")
    hook = visit.store.webhooks.rotate_secret(abid, expected=expected)
    visit.session.reveal = Reveal(f"New signing secret of webhook {hook.name}", hook.secret)
    return visit.done(
        f"/webhooks/{hook.abid}",
        f"Signing secret of {hook.name} rotated; the old one signs too until "
        f"{hook.previous_secret_expires:%Y-%m-%d %H:%M UTC}.",
    )


def ping_webhook(visit: Visit, abid: str) -> Response:
    sent = visit.store.webhooks.ping(abid)
    return visit.done(f"/deliveries/{sent.abid}", f"Ping sent: {sent.status}.")


def confirm_delete(visit: Visit, abid: str) -> Response:
    hook = visit.store.webhooks.get(abid)
    return visit.render(
        "confirm.html",
        page="webhooks",
        title="Delete webhook",
        question=f"Delete webhook {hook.name} ({hook.abid}) and its delivery log?",
        action=f"/webhooks/{hook.abid}/delete",
        button="Delete",
        back=f"/webhooks/{hook.abid}",
        # The name the hook had (as the page shows it), sent back: a second send finds the
        # hook gone, and says whose.
        fields=[("hook_name", hook.name)],
        warning="",
    )


def delete_webhook(visit: Visit, abid: str) -> Response:
    """Deletes the hook. The confirmation's form sent again (a double click, another tab,
    the back button) finds it gone: the hook it was shown for was deleted, and the list
    says so. Without that form, a hook that is not there is not found."""
    try:
        hook = visit.store.webhooks.get(abid)
    except tokenstore.NotFound:
        shown = _form(visit).get("hook_name")
        if not shown:
            raise
        return visit.done("/webhooks", f"Webhook {shown} was deleted already.")
    visit.store.webhooks.delete(hook)
    return visit.done("/webhooks", f"Webhook {hook.name} deleted.")


# -- deliveries -----------------------------------------------------------------------------


def deliveries(visit: Visit) -> Response:
    """The log, newest first, paged by a cursor: the last ABID of the page before."""
    store = visit.store
    query = visit.request.query
    hook_key, status, after = query.get("hook", ""), query.get("status", ""), query.get("after")
    with _cursor():
        rows = store.webhooks.deliveries(
            hook_key or None, status or None, limit=PAGE_SIZE + 1, before=after or None
        )
    shown, more = _page(rows)
    hooks = store.webhooks.list()
    return visit.render(
        "deliveries.html",
        page="deliveries",
        deliveries=shown,
        more=more and more.abid,
        hooks=hooks,
        hook_names={hook.id: hook.name for hook in hooks},
        hook_key=hook_key,
        status_filter=status,
        statuses=STATUSES,
        first_page=not after,
    )


def request_headers(
    store: tokenstore.Store, hook: OutboundWebhook, sent: WebhookDelivery
) -> list[tuple[str, str]]:
    """The headers of the delivery's last attempt, as the sender builds them, values masked.

    They are built again for the attempt's time (now, if it was never sent)
    from the hook as it is now; the signature is the one sent unless the hook
    was edited or its secret rotated since. The one use of a private helper
    here: the public API has no way to ask for a message's headers.
    """
    when = sent.last_attempt_at or store.clock()
    built = message_headers(hook, sent.abid, sent.payload.encode("utf-8"), when)
    private = {name.lower() for name in hook.headers or {}}
    if hook.auth_token:
        private.add("authorization")
    return [(name, MASK if name.lower() in private else value) for name, value in built.items()]


def delivery(visit: Visit, abid: str, error: str = "") -> Response:
    store = visit.store
    sent = store.webhooks.delivery(abid)
    hook = store.webhooks.get(sent.hook.abid)
    try:
        payload = json.dumps(json.loads(sent.payload), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
        payload = sent.payload
    # A hook keeps only its latest response body, and only with keep_last_response.
    latest = sent.last_attempt_at is not None and sent.last_attempt_at in (
        hook.last_success,
        hook.last_failure,
    )
    return visit.render(
        "delivery.html",
        page="deliveries",
        delivery=sent,
        hook=hook,
        payload=payload,
        headers=request_headers(store, hook, sent),
        response_body=hook.last_response if latest and hook.keep_last_response else None,
        form_id=visit.form_id(),
        error=error,
    )


def redeliver(visit: Visit, abid: str) -> Response:
    with _once(visit):
        sent = visit.store.webhooks.redeliver(abid)
    return visit.done(f"/deliveries/{sent.abid}", f"Redelivered: {sent.status}.")
