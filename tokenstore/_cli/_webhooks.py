"""``tokenstore webhooks``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from .._errors import ValidationError
from .._models import WebhookDelivery
from .._webhooks import DELIVERIES_PAGE, DELIVERY_STATUSES, MAX_DELIVERIES_PAGE
from ._base import Commands, _command, _group, _open
from ._output import HOOK_GONE, Output, _warn_if_blocked, delivery_dict, hook_dict, hook_name
from ._values import _duration_type, _header, _positive_int, _secret, _time_type

# -- webhooks -----------------------------------------------------------------------------


def _headers(given: Sequence[str] | None) -> dict[str, str]:
    """The ``--header`` options as a dict; a name given twice is refused, not half dropped.

    Names differing only in case are the API's to refuse, as HTTP takes them for one.
    """
    headers: dict[str, str] = {}
    for option in given or ():
        name, value = _header(option)
        if name in headers:
            raise ValidationError(f"--header {name!r} is given twice")
        headers[name] = value
    return headers


def cmd_webhooks_create(args: argparse.Namespace, out: Output) -> int:
    """``store.webhooks.create``; the signing secret is printed this once."""
    with _open(args) as store:
        hook = store.webhooks.create(
            args.name,
            args.ref,
            args.endpoint,
            signal=args.signal,
            headers=_headers(args.header),
            auth_token=_secret(args.auth_token),
            keep_last_response=args.keep_last_response,
            created_by=None if args.owner is None else store.users.get(args.owner),
        )
        out.record({**hook_dict(hook), "secret": hook.secret})
    print("Give the secret to the receiver so it can verify signatures.", file=sys.stderr)
    return 0


def cmd_webhooks_list(args: argparse.Namespace, out: Output) -> int:
    """``store.webhooks.list``."""
    with _open(args, read=True) as store:
        hooks = [hook_dict(h) for h in store.webhooks.list(enabled=args.enabled)]
    out.rows(hooks, ["abid", "name", "signal", "ref", "endpoint", "enabled", "failure_count"])
    return 0


def _show_allowlist(out: Output, entries: list[str]) -> None:
    """The allowlist as rows of one column."""
    out.rows([{"entry": entry} for entry in entries], ["entry"])


def cmd_webhooks_allowlist(args: argparse.Namespace, out: Output) -> int:
    """The file's allowlist, which every process applies."""
    with _open(args, read=True) as store:
        _show_allowlist(out, store.webhooks.allowlist())
    return 0


def cmd_webhooks_allow(args: argparse.Namespace, out: Output) -> int:
    """Add to the file's allowlist."""
    with _open(args) as store:
        _show_allowlist(out, store.webhooks.allow(args.entry))
    return 0


def cmd_webhooks_disallow(args: argparse.Namespace, out: Output) -> int:
    """Take an entry off the file's allowlist."""
    with _open(args) as store:
        _show_allowlist(out, store.webhooks.disallow(args.entry))
    return 0


def cmd_webhooks_get(args: argparse.Namespace, out: Output) -> int:
    """``store.webhooks.get``."""
    with _open(args, read=True) as store:
        out.record(hook_dict(store.webhooks.get(args.hook)))
    return 0


def cmd_webhooks_update(args: argparse.Namespace, out: Output) -> int:
    """``store.webhooks.update`` with the fields given; the rest stay."""
    changes: dict[str, Any] = {
        key: getattr(args, key)
        for key in ("name", "signal", "ref", "endpoint", "enabled", "keep_last_response")
        if getattr(args, key) is not None
    }
    if args.header is not None or args.no_headers:
        changes["headers"] = _headers(args.header)
    if args.auth_token is not None:
        changes["auth_token"] = _secret(args.auth_token)
    if not changes:
        raise ValidationError("webhooks update: give at least one field to change")
    with _open(args) as store:
        out.record(hook_dict(store.webhooks.update(args.hook, **changes)))
    return 0


def cmd_webhooks_delete(args: argparse.Namespace, out: Output) -> int:
    """``store.webhooks.delete``."""
    with _open(args) as store:
        hook = store.webhooks.get(args.hook)
        store.webhooks.delete(hook)
    out.record({"deleted": hook.abid, "name": hook.name})
    return 0


def cmd_webhooks_enable(args: argparse.Namespace, out: Output) -> int:
    """``store.webhooks.enable``."""
    with _open(args) as store:
        out.record(hook_dict(store.webhooks.enable(args.hook)))
    return 0


def cmd_webhooks_disable(args: argparse.Namespace, out: Output) -> int:
    """``store.webhooks.disable``."""
    with _open(args) as store:
        out.record(hook_dict(store.webhooks.disable(args.hook, args.reason)))
    return 0


def cmd_webhooks_rotate_secret(args: argparse.Namespace, out: Output) -> int:
    """``store.webhooks.rotate_secret``; the new secret is printed this once."""
    with _open(args) as store:
        hook = store.webhooks.rotate_secret(args.hook, grace=args.grace)
        out.record({**hook_dict(hook), "secret": hook.secret})
    return 0


def cmd_webhooks_deliveries(args: argparse.Namespace, out: Output) -> int:
    """``store.webhooks.deliveries``: a page of the log."""
    with _open(args, read=True) as store:
        found = store.webhooks.deliveries(
            args.hook, status=args.status, limit=args.limit, before=args.before
        )
        names = {hook.id: hook.name for hook in store.webhooks.list()}
    out.rows(
        [delivery_dict(d, names.get(d.hook_id, HOOK_GONE)) for d in found],
        ["webhook_id", "hook", "event_type", "status", "attempts", "last_status_code",
         "last_error", "created_at"],
    )  # fmt: skip
    return 0


def cmd_webhooks_prune(args: argparse.Namespace, out: Output) -> int:
    """``store.webhooks.prune``, reporting how many deliveries went."""
    with _open(args) as store:
        out.record({"deliveries_deleted": store.webhooks.prune(args.older_than)})
    return 0


def cmd_webhooks_delivery(args: argparse.Namespace, out: Output) -> int:
    """``store.webhooks.delivery``, its payload included."""
    with _open(args, read=True) as store:
        delivery = store.webhooks.delivery(args.delivery)
        name = hook_name(delivery.hook_id)
        out.record({**delivery_dict(delivery, name), "payload": delivery.payload})
    return 0


def cmd_webhooks_deliver_due(args: argparse.Namespace, out: Output) -> int:
    """``store.webhooks.deliver_due``."""
    with _open(args) as store:
        attempted = store.webhooks.deliver_due(args.now, limit=args.limit)
        out.record({"deliveries_attempted": attempted})
    return 0


def _sent(out: Output, delivery: WebhookDelivery, hook: str) -> int:
    """Show a delivery just attempted; exit 1 unless it was delivered."""
    out.record(delivery_dict(delivery, hook))
    _warn_if_blocked(delivery)
    return 0 if delivery.status == "delivered" else 1


def cmd_webhooks_ping(args: argparse.Namespace, out: Output) -> int:
    """``store.webhooks.ping``; exit 1 unless delivered."""
    with _open(args) as store:
        hook = store.webhooks.get(args.hook)
        return _sent(out, store.webhooks.ping(hook), hook.name)


def cmd_webhooks_redeliver(args: argparse.Namespace, out: Output) -> int:
    """``store.webhooks.redeliver``; exit 1 unless delivered."""
    with _open(args) as store:
        delivery = store.webhooks.redeliver(args.delivery)
        return _sent(out, delivery, hook_name(delivery.hook_id))


def _hook_argument(parser: argparse.ArgumentParser) -> None:
    """The positional HOOK argument (an ABID or a name)."""
    parser.add_argument("hook", help="the hook's ABID (whk_...) or name")


def add_webhooks_commands(commands: Commands) -> None:
    """``tokenstore webhooks ...``."""
    hooks = _group(
        commands,
        "webhooks",
        "manage outbound webhooks and their deliveries",
        "  tokenstore --allow 127.0.0.1/32 webhooks create users tokenstore.User "
        "http://127.0.0.1:8787/\n"
        "  tokenstore webhooks ping users\n"
        "  tokenstore webhooks deliveries users --status failed\n"
        "  tokenstore webhooks update users --signal CREATE",
    )
    p = _command(
        hooks,
        "create",
        cmd_webhooks_create,
        "store.webhooks.create",
        "add a hook that POSTs every matching change of a model",
        aliases=["add"],
        prints="Prints the hook and its signing secret, shown this once: give it to the receiver.",
    )
    p.add_argument("name", help="a unique name for the hook")
    p.add_argument("ref", help="the model, as module.ClassName, e.g. tokenstore.User")
    p.add_argument("endpoint", help="the http(s) URL to POST to")
    p.add_argument(
        "--signal",
        default="CREATE_UPDATE_OR_DELETE",
        help="which changes to send: CREATE, UPDATE, DELETE, M2M or a combination like "
        "CREATE_OR_UPDATE",
    )
    p.add_argument(
        "--header",
        action="append",
        metavar="NAME=VALUE",
        help="a header sent with every request; NAME=- reads its value from stdin, a line "
        "each, before --auth-token - (repeatable) (default: none)",
    )
    p.add_argument(
        "--auth-token",
        default="",
        help="sent as the Authorization header; - reads it from stdin (default: none)",
    )
    p.add_argument(
        "--keep-last-response", action="store_true", help="keep the receiver's last answer"
    )
    p.add_argument(
        "--owner",
        metavar="USERNAME",
        help="the user the hook belongs to (default: the system user)",
    )

    _command(
        hooks,
        "allowlist",
        cmd_webhooks_allowlist,
        "store.webhooks.allowlist",
        "show the hosts and networks hooks may reach beyond public addresses",
    )
    for name, handler, what in (
        ("allow", cmd_webhooks_allow, "let hooks reach a host, address or network"),
        ("disallow", cmd_webhooks_disallow, "take an entry off the allowlist"),
    ):
        p = _command(hooks, name, handler, f"store.webhooks.{name}", f"{what}, in every process")
        p.add_argument("entry", help="a host name, an IP address or a CIDR network")
    p = _command(hooks, "list", cmd_webhooks_list, "store.webhooks.list", "list hooks")
    state = p.add_mutually_exclusive_group()
    state.add_argument(
        "--enabled", action="store_const", const=True, help="only enabled hooks (default: all)"
    )
    state.add_argument(
        "--disabled",
        dest="enabled",
        action="store_const",
        const=False,
        help="only disabled hooks (default: all)",
    )

    p = _command(
        hooks, "get", cmd_webhooks_get, "store.webhooks.get", "show a hook", aliases=["show"]
    )
    _hook_argument(p)

    p = _command(
        hooks,
        "update",
        cmd_webhooks_update,
        "store.webhooks.update",
        "change some fields of a hook, all or nothing",
    )
    _hook_argument(p)
    unchanged = "(default: unchanged)"
    p.add_argument("--name", help=f"a new name {unchanged}")
    p.add_argument("--signal", help=f"which changes to send, e.g. CREATE_OR_UPDATE {unchanged}")
    p.add_argument("--ref", help=f"another model, as module.ClassName {unchanged}")
    p.add_argument("--endpoint", help=f"another URL {unchanged}")
    headers = p.add_mutually_exclusive_group()
    headers.add_argument(
        "--header",
        action="append",
        metavar="NAME=VALUE",
        help="replace the headers with these; NAME=- reads a value from stdin (repeatable) "
        f"{unchanged}",
    )
    headers.add_argument("--no-headers", action="store_true", help="remove every header")
    p.add_argument(
        "--auth-token", help=f"a new Authorization header; - reads it from stdin {unchanged}"
    )
    p.add_argument(
        "--enabled",
        action=argparse.BooleanOptionalAction,
        help="only set the hook's flag: `webhooks enable` also forgets its failures, "
        f"`webhooks disable` gives up what it had to send {unchanged}",
    )
    p.add_argument(
        "--keep-last-response",
        action=argparse.BooleanOptionalAction,
        help=f"keep the receiver's last answer {unchanged}",
    )

    p = _command(hooks, "delete", cmd_webhooks_delete, "store.webhooks.delete", "delete a hook")
    _hook_argument(p)
    p = _command(
        hooks,
        "enable",
        cmd_webhooks_enable,
        "store.webhooks.enable",
        "turn a hook on, forgetting its failures",
    )
    _hook_argument(p)
    p = _command(
        hooks,
        "disable",
        cmd_webhooks_disable,
        "store.webhooks.disable",
        "turn a hook off, giving up what it still had to send",
    )
    _hook_argument(p)
    p.add_argument("--reason", default="disabled by hand", help="recorded with the hook")
    p = _command(
        hooks,
        "rotate-secret",
        cmd_webhooks_rotate_secret,
        "store.webhooks.rotate_secret",
        "give a hook a new signing secret; the old one keeps signing for --grace",
        prints="Prints the hook and its new signing secret, shown this once.",
    )
    _hook_argument(p)
    p.add_argument(
        "--grace",
        type=_duration_type("--grace", allow_zero=True),
        metavar="DURATION",
        help="how long the old secret keeps signing, 0s for not at all "
        "(default: the store's secret_grace, 24h)",
    )
    p = _command(
        hooks,
        "deliveries",
        cmd_webhooks_deliveries,
        "store.webhooks.deliveries",
        "show the delivery log, newest first",
    )
    p.add_argument(
        "hook", nargs="?", help="the hook's ABID (whk_...) or name (default: every hook)"
    )
    p.add_argument(
        "--status",
        choices=DELIVERY_STATUSES,
        help="only deliveries in this state (default: all)",
    )
    p.add_argument(
        "--limit",
        type=_positive_int,
        default=DELIVERIES_PAGE,
        help=f"at most this many, up to {MAX_DELIVERIES_PAGE}",
    )
    p.add_argument(
        "--before",
        metavar="WEBHOOK_ID",
        help="only deliveries older than this one (msg_...): the next page after it "
        "(default: from the newest)",
    )
    p = _command(
        hooks,
        "prune",
        cmd_webhooks_prune,
        "store.webhooks.prune",
        "delete finished deliveries older than the store keeps; each hook's latest stays",
    )
    p.add_argument(
        "--older-than",
        type=_duration_type("--older-than", allow_zero=True),
        metavar="DURATION",
        help="delete those older than this (default: the store's keep_deliveries, 30d)",
    )
    p = _command(
        hooks,
        "delivery",
        cmd_webhooks_delivery,
        "store.webhooks.delivery",
        "show one delivery, its payload included",
    )
    p.add_argument("delivery", help="the delivery's webhook-id (msg_...)")
    p = _command(
        hooks,
        "deliver-due",
        cmd_webhooks_deliver_due,
        "store.webhooks.deliver_due",
        "send the deliveries whose retry time has come",
        aliases=["retry"],
    )
    p.add_argument("--limit", type=_positive_int, default=100, help="at most this many")
    p.add_argument(
        "--now",
        type=_time_type("--now"),
        metavar="TIME",
        help="what is due by this ISO-8601 time, e.g. 2030-01-01T00:00:00Z (default: now)",
    )
    p = _command(
        hooks,
        "ping",
        cmd_webhooks_ping,
        "store.webhooks.ping",
        "send a webhook.ping now; exit 1 unless delivered",
    )
    _hook_argument(p)
    p = _command(
        hooks,
        "redeliver",
        cmd_webhooks_redeliver,
        "store.webhooks.redeliver",
        "send a delivery again now, same webhook-id; exit 1 unless delivered",
    )
    p.add_argument("delivery", help="the delivery's webhook-id (msg_...)")
