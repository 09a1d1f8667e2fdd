"""The ``tokenstore`` command: a thin layer over the Python API.

Each command calls one documented method (``tokenstore tokens create`` is
``store.tokens.create``), prints the result for people, or as JSON with
``--json``, and exits 2 on bad input with the error on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import peewee

from ._abid import ABID, abid_from_values
from ._errors import AuthenticationError, TokenstoreError, ValidationError
from ._models import APIToken, OutboundWebhook, User, WebhookDelivery
from ._signing import SECRET_PREFIX
from ._store import SCHEMA_VERSION, Store
from ._store import open as open_store
from ._times import format_time
from ._version import __version__

DEFAULT_DB = "tokenstore.sqlite3"

_DURATION = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_expiry(text: str) -> datetime | timedelta:
    """``30d``, ``12h``, ``90m`` (a span from now) or an ISO-8601 time with a timezone."""
    match = _DURATION.fullmatch(text.strip())
    if match:
        return timedelta(**{_UNITS[match[2]]: int(match[1])})
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError(
            f"--expires {text!r} is neither a span like 30d/12h/90m nor an ISO-8601 time"
        ) from None
    if when.tzinfo is None:
        raise ValidationError(f"--expires {text!r} needs a timezone, e.g. {text}+00:00")
    return when


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ValidationError(f"--header {text!r} must look like Name=value")
    return name.strip(), value


# -- how records are shown ----------------------------------------------------------------


def _time(value: datetime | None) -> str | None:
    return None if value is None else format_time(value)


def user_dict(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "is_superuser": user.is_superuser,
        "created_at": _time(user.created_at),
    }


def token_dict(token: APIToken) -> dict[str, Any]:
    return {
        **token.__json__(),
        "name": token.name,
        "scopes": list(token.scopes or []),
        "revoked_at": _time(token.revoked_at),
        "last_used_at": _time(token.last_used_at),
        "valid": token.is_valid(),
    }


def hook_dict(hook: OutboundWebhook) -> dict[str, Any]:
    return {
        "abid": hook.abid,
        "name": hook.name,
        "signal": hook.signal,
        "ref": hook.ref,
        "endpoint": hook.endpoint,
        "headers": sorted(hook.headers or {}),
        "has_auth_token": bool(hook.auth_token),
        "enabled": hook.enabled,
        "disabled_reason": hook.disabled_reason,
        "keep_last_response": hook.keep_last_response,
        "created": _time(hook.created_at),
        "updated": _time(hook.modified_at),
        "last_success": _time(hook.last_success),
        "last_failure": _time(hook.last_failure),
        "failure_count": hook.failure_count,
        "last_response": hook.last_response,
        "secret_rotating_until": _time(
            hook.previous_secret_expires if hook.previous_secret else None
        ),
    }


def delivery_dict(delivery: WebhookDelivery, hook_name: str) -> dict[str, Any]:
    return {
        "webhook_id": delivery.abid,
        "hook": hook_name,
        "event_type": delivery.event_type,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "duration_ms": delivery.duration_ms,
        "created_at": _time(delivery.created_at),
        "next_attempt_at": _time(delivery.next_attempt_at),
        "delivered_at": _time(delivery.delivered_at),
    }


def abid_dict(abid: ABID) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "abid": str(abid),
        "prefix": abid.prefix,
        "ts": abid.ts,
        "uri": abid.uri,
        "subtype": abid.subtype,
        "rand": abid.rand,
        "ulid": abid.ulid,
        "typeid": abid.typeid,
    }
    shown["datetime"] = abid.datetime.isoformat()
    shown["uuid"] = str(abid.uuid)
    return shown


class Output:
    """Prints records as aligned ``key: value`` blocks, rows, or JSON."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def record(self, data: dict[str, Any]) -> None:
        if self.as_json:
            print(json.dumps(data, indent=2))
            return
        width = max(len(k) for k in data)
        for key, value in data.items():
            print(f"{key:<{width}}  {'' if value is None else value}")

    def rows(self, items: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
        if self.as_json:
            print(json.dumps(list(items), indent=2))
            return
        if not items:
            print("(none)")
            return
        table = [list(columns)]
        table += [["" if item.get(c) is None else str(item[c]) for c in columns] for item in items]
        widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
        for row in table:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


# -- commands -------------------------------------------------------------------------------

Handler = Callable[[argparse.Namespace, Output], int]


def _store(args: argparse.Namespace, dispatch_on_open: bool = True) -> Store:
    allow = [a for a in args.allow or [] if a]
    store = open_store(args.db, webhook_allow=allow, dispatch_on_open=False)
    for name in (a for a in args.app or [] if a):
        register_module(store, name)
    if dispatch_on_open:
        store.dispatch()
    return store


def register_module(store: Store, name: str) -> list[type[peewee.Model]]:
    """Register every peewee model a module defines, as the application itself would.

    The command runs in its own process: to name an application's models in
    hooks, or to fire their events with full field types, it needs the classes.
    """
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise ValidationError(f"--app {name!r} cannot be imported: {exc}") from None
    models = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, peewee.Model)
        and obj.__module__ == module.__name__
    ]
    for model in models:
        store.register(model)
    return models


def cmd_init(args: argparse.Namespace, out: Output) -> int:
    with _store(args) as store:
        out.record(
            {
                "path": str(store.path.resolve()),
                "schema_version": SCHEMA_VERSION,
                "inspect_with": f"sqlite3 {store.path}",
            }
        )
    return 0


def cmd_abid_parse(args: argparse.Namespace, out: Output) -> int:
    out.record(abid_dict(ABID.parse(args.abid, prefix=args.prefix)))
    return 0


def cmd_abid_new(args: argparse.Namespace, out: Output) -> int:
    abid = abid_from_values(args.prefix, datetime.now(UTC), args.uri, args.subtype, None)
    out.record(abid_dict(abid))
    return 0


def cmd_users_add(args: argparse.Namespace, out: Output) -> int:
    with _store(args) as store:
        out.record(user_dict(store.users.create(args.username, superuser=args.superuser)))
    return 0


def cmd_users_list(args: argparse.Namespace, out: Output) -> int:
    with _store(args) as store:
        users = [user_dict(u) for u in store.users.list()]
        out.rows(users, ["id", "username", "is_superuser", "created_at"])
    return 0


def cmd_tokens_create(args: argparse.Namespace, out: Output) -> int:
    with _store(args) as store:
        user = store.users.get(args.username)
        expires = parse_expiry(args.expires) if args.expires else None
        token, secret = store.tokens.create(
            user, name=args.name, expires=expires, scopes=tuple(args.scope or ())
        )
        data = {**token_dict(token), "secret": secret}
        out.record(data)
        print(
            "Store this secret now: it is not kept and will not be shown again.",
            file=sys.stderr,
        )
    return 0


def cmd_tokens_list(args: argparse.Namespace, out: Output) -> int:
    with _store(args) as store:
        user = store.users.get(args.user) if args.user else None
        names = {str(u.id): u.username for u in store.users.list()}
        tokens = [token_dict(t) for t in store.tokens.list(user, include_revoked=args.all)]
        for item in tokens:
            item["user"] = names[item["created_by_id"]]
        out.rows(tokens, ["abid", "user", "name", "token", "expires", "revoked_at", "valid"])
    return 0


def cmd_tokens_revoke(args: argparse.Namespace, out: Output) -> int:
    with _store(args) as store:
        token = store.tokens.get(args.abid)
        store.tokens.revoke(token)
        out.record(token_dict(store.tokens.get(args.abid)))
    return 0


def cmd_tokens_verify(args: argparse.Namespace, out: Output) -> int:
    secret = sys.stdin.readline().strip() if args.secret == "-" else args.secret
    with _store(args) as store:
        try:
            token = store.tokens.authenticate(secret, scope=args.scope)
        except AuthenticationError as exc:
            out.record({"valid": False, "reason": type(exc).__name__, "message": str(exc)})
            return 1
        out.record({"valid": True, **token_dict(token)})
    return 0


def cmd_dispatch(args: argparse.Namespace, out: Output) -> int:
    with _store(args, dispatch_on_open=False) as store:
        if not args.watch:
            fired = store.dispatch(deliver=False)
            sent = store.webhooks.deliver_due()
            out.record({"events": fired, "deliveries_attempted": sent})
            return 0
        watch(store, args.interval)
    return 0


def watch(store: Store, interval: float) -> None:
    """Dispatch whenever another connection commits, and send due retries, until Ctrl-C.

    Ctrl-C is taken between rounds, never in the middle of one: a transaction
    or a delivery's bookkeeping is not cut short.
    """
    stopping = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stopping.set())
    conn = store.db.connection()
    seen = None
    print(f"watching {store.path} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        while not stopping.is_set():
            (version,) = conn.execute("PRAGMA data_version").fetchone()
            if version != seen:  # another connection committed since the last round
                seen = version
                fired = store.dispatch(deliver=False)
                if fired:
                    print(f"{format_time(store.clock())} fired {fired} events", flush=True)
            sent = store.webhooks.deliver_due()
            if sent:
                print(f"{format_time(store.clock())} attempted {sent} deliveries", flush=True)
            stopping.wait(interval)
    finally:
        signal.signal(signal.SIGINT, previous)
    print("stopped", file=sys.stderr)


def cmd_webhooks_add(args: argparse.Namespace, out: Output) -> int:
    with _store(args) as store:
        hook = store.webhooks.create(
            args.name,
            args.ref,
            args.endpoint,
            signal=args.signal,
            headers=dict(_header(h) for h in args.header or ()),
            auth_token=args.auth_token,
            keep_last_response=args.keep_last_response,
        )
        out.record({**hook_dict(hook), "secret": hook.secret})
        print("Give the secret to the receiver so it can verify signatures.", file=sys.stderr)
    return 0


def cmd_webhooks_list(args: argparse.Namespace, out: Output) -> int:
    with _store(args) as store:
        hooks = [hook_dict(h) for h in store.webhooks.list()]
        out.rows(hooks, ["abid", "name", "signal", "ref", "endpoint", "enabled", "failure_count"])
    return 0


def _hook_command(
    action: Callable[[Store, argparse.Namespace], OutboundWebhook | None],
) -> Handler:
    def run(args: argparse.Namespace, out: Output) -> int:
        with _store(args) as store:
            hook = action(store, args)
            if hook is not None:
                out.record(hook_dict(hook))
        return 0

    return run


def cmd_webhooks_delete(args: argparse.Namespace, out: Output) -> int:
    with _store(args) as store:
        hook = store.webhooks.get(args.hook)
        store.webhooks.delete(hook)
        out.record({"deleted": hook.abid, "name": hook.name})
    return 0


def cmd_webhooks_rotate(args: argparse.Namespace, out: Output) -> int:
    with _store(args) as store:
        grace = None if args.grace is None else timedelta(seconds=args.grace)
        hook = store.webhooks.rotate_secret(args.hook, grace=grace)
        out.record({**hook_dict(hook), "secret": hook.secret})
    return 0


def _delivery_command(
    action: Callable[[Store, argparse.Namespace], WebhookDelivery],
) -> Handler:
    def run(args: argparse.Namespace, out: Output) -> int:
        with _store(args) as store:
            delivery = action(store, args)
            out.record(delivery_dict(delivery, delivery.hook.name))
        return 0 if delivery.status == "delivered" else 1

    return run


def cmd_webhooks_deliveries(args: argparse.Namespace, out: Output) -> int:
    with _store(args) as store:
        found = store.webhooks.deliveries(args.hook, status=args.status, limit=args.limit)
        names = {hook.id: hook.name for hook in store.webhooks.list()}
        out.rows(
            [delivery_dict(d, names[d.hook_id]) for d in found],
            ["webhook_id", "hook", "event_type", "status", "attempts", "last_status_code",
             "last_error", "created_at"],
        )  # fmt: skip
    return 0


def cmd_webhooks_retry(args: argparse.Namespace, out: Output) -> int:
    with _store(args) as store:
        out.record({"deliveries_attempted": store.webhooks.deliver_due()})
    return 0


def listen_secret(args: argparse.Namespace) -> str:
    """The signing secret ``listen`` verifies with, kept out of argv where it can be.

    A secret given with ``--secret`` is visible to anyone running ``ps``; the
    environment and a file (or stdin) are not.
    """
    if args.secret is not None and args.secret_file is not None:
        raise ValidationError("give the signing secret with --secret or --secret-file, not both")
    if args.secret_file == "-":
        secret = sys.stdin.readline().strip()
    elif args.secret_file is not None:
        try:
            secret = Path(args.secret_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValidationError(f"--secret-file {args.secret_file}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ValidationError(f"--secret-file {args.secret_file} is not UTF-8 text") from None
    else:
        secret = args.secret or os.environ.get("TOKENSTORE_LISTEN_SECRET", "")
    if not secret:
        raise ValidationError(
            "listen needs the hook's signing secret: set TOKENSTORE_LISTEN_SECRET "
            "or pass --secret-file PATH (- reads it from stdin)"
        )
    if not secret.startswith(SECRET_PREFIX):
        raise ValidationError(f"the signing secret must be the hook's {SECRET_PREFIX}... secret")
    return secret


def cmd_listen(args: argparse.Namespace, out: Output) -> int:
    from ._receiver import make_receiver

    def show(payload: dict[str, Any], headers: Any) -> None:
        if out.as_json:
            print(json.dumps({"webhook_id": headers.get("webhook-id"), "payload": payload}))
        else:
            print(f"{headers.get('webhook-id')} {payload.get('type')} verified", flush=True)
            print(json.dumps(payload, indent=2), flush=True)

    server = make_receiver(args.host, args.port, listen_secret(args), show)
    port = server.server_address[1]
    print(f"listening on http://{args.host}:{port}/ (Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0


def cmd_demo(args: argparse.Namespace, out: Output) -> int:
    from ._demo import run_demo

    return run_demo(args.dir)


# -- the parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenstore", description="API tokens and outbound webhooks in one SQLite file."
    )
    parser.add_argument("--version", action="version", version=f"tokenstore {__version__}")
    parser.add_argument(
        "--db",
        default=os.environ.get("TOKENSTORE_DB", DEFAULT_DB),
        help=f"the store file (default: $TOKENSTORE_DB, else ./{DEFAULT_DB})",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument(
        "--allow",
        action="append",
        default=os.environ.get("TOKENSTORE_WEBHOOK_ALLOW", "").split(","),
        metavar="HOST_OR_CIDR",
        help="let webhooks reach this host or network (repeatable; $TOKENSTORE_WEBHOOK_ALLOW)",
    )
    parser.add_argument(
        "--app",
        action="append",
        default=os.environ.get("TOKENSTORE_APP", "").split(","),
        metavar="MODULE",
        help="import MODULE and register the peewee models it defines "
        "(repeatable; $TOKENSTORE_APP)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(group: Any, name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    add(commands, "init", cmd_init, "create the store file (or check an existing one)")

    abid = commands.add_parser("abid", help="make and read ABIDs").add_subparsers(
        dest="abid_command", required=True, metavar="COMMAND"
    )
    p = add(abid, "parse", cmd_abid_parse, "show the parts and views of an ABID")
    p.add_argument("abid")
    p.add_argument("--prefix", help="the prefix to expect (or to add to a bare suffix)")
    p = add(abid, "new", cmd_abid_new, "make an ABID for now")
    p.add_argument("--prefix", required=True, help="three letters, e.g. apt")
    p.add_argument("--uri", required=True, help="the uri source, e.g. a URL or owner id")
    p.add_argument("--subtype", default="00", help="two characters kept as-is, else hashed")

    users = commands.add_parser("users", help="manage users").add_subparsers(
        dest="users_command", required=True, metavar="COMMAND"
    )
    p = add(users, "add", cmd_users_add, "add a user (store.users.create)")
    p.add_argument("username")
    p.add_argument("--superuser", action="store_true")
    add(users, "list", cmd_users_list, "list users (store.users.list)")

    tokens = commands.add_parser("tokens", help="manage API tokens").add_subparsers(
        dest="tokens_command", required=True, metavar="COMMAND"
    )
    p = add(tokens, "create", cmd_tokens_create, "issue a token (store.tokens.create)")
    p.add_argument("username")
    p.add_argument("--name")
    p.add_argument("--expires", help="a span (30d, 12h, 90m) or an ISO-8601 time")
    p.add_argument("--scope", action="append", help="a scope the token grants (repeatable)")
    p = add(tokens, "list", cmd_tokens_list, "list tokens (store.tokens.list)")
    p.add_argument("--user")
    p.add_argument("--all", action="store_true", help="include revoked tokens")
    p = add(tokens, "revoke", cmd_tokens_revoke, "revoke a token for good (store.tokens.revoke)")
    p.add_argument("abid")
    p = add(
        tokens,
        "verify",
        cmd_tokens_verify,
        "check a secret (store.tokens.authenticate); exit 0 if valid, 1 if not",
    )
    p.add_argument("secret", help="the secret, or - to read it from stdin")
    p.add_argument("--scope")

    p = add(
        commands,
        "dispatch",
        cmd_dispatch,
        "fire pending change events and send due deliveries (store.dispatch)",
    )
    p.add_argument("--watch", action="store_true", help="keep watching until Ctrl-C")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between checks")

    hooks = commands.add_parser("webhooks", help="manage outbound webhooks").add_subparsers(
        dest="webhooks_command", required=True, metavar="COMMAND"
    )
    p = add(hooks, "add", cmd_webhooks_add, "add a hook (store.webhooks.create)")
    p.add_argument("name")
    p.add_argument("ref", help="the model, as module.ClassName")
    p.add_argument("endpoint", help="the http(s) URL to POST to")
    p.add_argument("--signal", default="CREATE_UPDATE_OR_DELETE")
    p.add_argument("--header", action="append", help="Name=value sent with every request")
    p.add_argument("--auth-token", default="", help="sent as the Authorization header")
    p.add_argument("--keep-last-response", action="store_true")
    add(hooks, "list", cmd_webhooks_list, "list hooks (store.webhooks.list)")
    for name, help_text, action in (
        ("show", "show a hook (store.webhooks.get)", lambda s, a: s.webhooks.get(a.hook)),
        ("enable", "enable a hook (store.webhooks.enable)", lambda s, a: s.webhooks.enable(a.hook)),
        (
            "disable",
            "disable a hook (store.webhooks.disable)",
            lambda s, a: s.webhooks.disable(a.hook, a.reason),
        ),
    ):
        p = add(hooks, name, _hook_command(action), help_text)
        p.add_argument("hook", help="ABID or name")
        if name == "disable":
            p.add_argument("--reason", default="disabled by hand")
    p = add(hooks, "delete", cmd_webhooks_delete, "delete a hook (store.webhooks.delete)")
    p.add_argument("hook", help="ABID or name")
    p = add(
        hooks,
        "ping",
        _delivery_command(lambda s, a: s.webhooks.ping(a.hook)),
        "send a webhook.ping now (store.webhooks.ping); exit 1 unless delivered",
    )
    p.add_argument("hook", help="ABID or name")
    p = add(
        hooks,
        "deliveries",
        cmd_webhooks_deliveries,
        "show the delivery log (store.webhooks.deliveries)",
    )
    p.add_argument("hook", nargs="?", help="ABID or name")
    p.add_argument("--status", choices=("pending", "failed", "delivered", "dead"))
    p.add_argument("--limit", type=int, default=50)
    p = add(
        hooks,
        "redeliver",
        _delivery_command(lambda s, a: s.webhooks.redeliver(a.delivery)),
        "send a delivery again (store.webhooks.redeliver); exit 1 unless delivered",
    )
    p.add_argument("delivery", help="the delivery's webhook-id (msg_...)")
    add(hooks, "retry", cmd_webhooks_retry, "send due retries now (store.webhooks.deliver_due)")
    p = add(
        hooks,
        "rotate-secret",
        cmd_webhooks_rotate,
        "new signing secret; the old one keeps signing for --grace (store.webhooks.rotate_secret)",
    )
    p.add_argument("hook", help="ABID or name")
    p.add_argument("--grace", type=float, help="seconds the old secret keeps signing")

    p = add(
        commands,
        "listen",
        cmd_listen,
        "receive webhooks, verify their signatures and print them (tokenstore.verify_webhook)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8787)
    p.add_argument(
        "--secret",
        help="the hook's whsec_... signing secret (visible to ps: prefer "
        "$TOKENSTORE_LISTEN_SECRET or --secret-file)",
    )
    p.add_argument("--secret-file", metavar="PATH", help="read the secret from PATH (- for stdin)")

    p = add(commands, "demo", cmd_demo, "run the whole story on a throwaway file")
    p.add_argument("--dir", help="where to put the demo's file (default: a new temporary folder)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Output(args.json)
    try:
        code: int = args.handler(args, out)
    except TokenstoreError as exc:
        print(f"tokenstore: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
