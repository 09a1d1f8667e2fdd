"""The ``tokenstore`` command: a thin layer over the Python API.

Each command calls one public method and says which (``tokenstore tokens
create`` is ``store.tokens.create``, recorded as the ``call`` default of its
parser, which a test checks against the API), prints the result for people,
or as JSON with ``--json``, and exits 2 with one line on stderr on bad input.
The global options work before or after the command, so a command line can be
edited at its end. Times print as the file stores them; durations are written
one way for every option.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import importlib
import json
import os
import re
import signal
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import peewee

from ._abid import ABID, abid_from_values
from ._errors import AuthenticationError, BlockedAddress, TokenstoreError, ValidationError
from ._models import APIToken, OutboundWebhook, User, WebhookDelivery
from ._signing import SECRET_PREFIX
from ._store import SCHEMA_VERSION, Store
from ._store import open as open_store
from ._times import format_time
from ._version import __version__
from ._webhooks import DELIVERIES_PAGE, DELIVERY_STATUSES

DEFAULT_DB = "tokenstore.sqlite3"

#: Public calls the command leaves out on purpose, with the reason (the README repeats it).
NOT_COMMANDS = {
    "store.close": "every command closes its store when done",
    "store.atomic": "a transaction cannot span separate command runs",
    "store.register": "--app MODULE registers a module's models",
    "store.ref": "it takes a model class; hooks name models as module.ClassName",
    "store.model_for_ref": "it returns a model class; --app makes models known",
    "store.tokens.token_from_request": "it reads an HTTP request's headers",
    "store.wait_for_changes": "dispatch --watch waits with it between rounds",
    "store.tokens.flush_uses": "every command writes the uses it noted as it closes",
    "store.webhooks.close": "every command closes its store when done",
    "store.webhooks.erase_expired_secrets": "every command does it as it closes its store",
    "store.webhooks.start_retry_thread": "dispatch --watch sends due retries in the foreground",
}

#: Commands that stand for no single call: tools built from several.
CLI_ONLY = {"demo"}

# -- durations and other values -----------------------------------------------------------

_DURATION = re.compile(r"(-?)(\d+(?:\.\d+)?)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: Longer spans are a typo: nothing in tokenstore needs to wait a century.
MAX_DURATION = timedelta(days=36500)
DURATION_SYNTAX = "a number and a unit: 90s, 15m, 12h, 30d"


def parse_duration(text: str, option: str, allow_zero: bool = False) -> timedelta:
    """The one duration syntax of every option: ``90s``, ``15m``, ``12h``, ``30d``.

    Written out in full so a negative, zero, not-a-number or absurd value
    stops the command with a message naming the option, not a traceback.
    """
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValidationError(f"{option} {text!r} is not a duration: use {DURATION_SYNTAX}")
    if match[1]:
        raise ValidationError(f"{option} {text!r} is negative: durations count forward")
    seconds = float(match[2]) * _UNIT_SECONDS[match[3]]
    if seconds > MAX_DURATION.total_seconds():
        raise ValidationError(f"{option} {text!r} is too long: at most {MAX_DURATION.days}d")
    if seconds == 0 and not allow_zero:
        raise ValidationError(f"{option} {text!r} must be longer than zero")
    return timedelta(seconds=seconds)


def parse_expiry(text: str) -> datetime | timedelta:
    """A duration from now (``30d``) or an ISO-8601 time with a timezone."""
    if _DURATION.fullmatch(text.strip()):
        return parse_duration(text, "--expires")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError(
            f"--expires {text!r} is neither a duration ({DURATION_SYNTAX}) "
            "nor an ISO-8601 time like 2030-01-01T00:00:00Z"
        ) from None
    if when.tzinfo is None:
        raise ValidationError(f"--expires {text!r} needs a timezone, e.g. {text}Z")
    return when


def _duration_type(option: str, allow_zero: bool = False) -> Callable[[str], timedelta]:
    def convert(text: str) -> timedelta:
        try:
            return parse_duration(text, option, allow_zero)
        except ValidationError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _positive_int(text: str) -> int:
    if not text.isdecimal() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ValidationError(f"--header {text!r} must look like Name=value")
    return name.strip(), value


def _secret(value: str) -> str:
    """``-`` reads the value from stdin, which keeps a secret out of argv and shell history.

    At a terminal it is asked for without echo, so it stays off the screen too.
    """
    if value != "-":
        return value
    if sys.stdin.isatty():
        return getpass.getpass("secret (not shown): ").strip()
    return sys.stdin.readline().strip()


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
        "abid": token.abid,
        "id": str(token.id),
        "created_by_id": token.created_by_id,
        "name": token.name,
        "token": token.token_redacted,
        "scopes": list(token.scopes or []),
        "created_at": _time(token.created_at),
        "expires": _time(token.expires),
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
        "created_at": _time(hook.created_at),
        "modified_at": _time(hook.modified_at),
        "last_success": _time(hook.last_success),
        "last_failure": _time(hook.last_failure),
        "failure_count": hook.failure_count,
        "failing_since": _time(hook.failing_since),
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
        "last_attempt_at": _time(delivery.last_attempt_at),
        "next_attempt_at": _time(delivery.next_attempt_at),
        "delivered_at": _time(delivery.delivered_at),
    }


def abid_dict(abid: ABID) -> dict[str, Any]:
    return {
        "abid": str(abid),
        "prefix": abid.prefix,
        "ts": abid.ts,
        "uri": abid.uri,
        "subtype": abid.subtype,
        "rand": abid.rand,
        "ulid": abid.ulid,
        "typeid": abid.typeid,
        "datetime": format_time(abid.datetime),
        "uuid": str(abid.uuid),
    }


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


class Output:
    """Prints records as aligned ``key  value`` blocks, rows, or JSON."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def record(self, data: dict[str, Any]) -> None:
        if self.as_json:
            print(json.dumps(data, indent=2))
            return
        width = max(len(k) for k in data)
        for key, value in data.items():
            print(f"{key:<{width}}  {_text(value)}".rstrip())

    def rows(self, items: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
        if self.as_json:
            print(json.dumps(list(items), indent=2))
            return
        if not items:
            print("(none)")
            return
        table = [list(columns), *([_text(item.get(c)) for c in columns] for item in items)]
        widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
        for row in table:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _allow_hint() -> str:
    return (
        "to allow an address, pass --allow HOST_OR_CIDR (e.g. --allow 127.0.0.1/32) "
        "or set TOKENSTORE_WEBHOOK_ALLOW"
    )


def _warn_if_blocked(delivery: WebhookDelivery) -> None:
    if delivery.last_error.startswith("blocked:"):
        print(f"tokenstore: the delivery was blocked; {_allow_hint()}", file=sys.stderr)


# -- opening the store ----------------------------------------------------------------------

Handler = Callable[[argparse.Namespace, Output], int]


@contextmanager
def _open(args: argparse.Namespace, dispatch: bool = True) -> Iterator[Store]:
    """The store as the options describe it; by default after firing what is pending."""
    store = open_store(args.db, webhook_allow=args.allow, dispatch_on_open=False)
    try:
        for name in args.app:
            register_module(store, name)
        if dispatch:
            store.dispatch()
        yield store
    finally:
        store.close()


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


def _warn_waiting(waiting: dict[str, int]) -> None:
    if waiting:
        tables = ", ".join(f"{table}: {count}" for table, count in waiting.items())
        print(
            f"tokenstore: {sum(waiting.values())} events wait for tables this process has no "
            f"model for ({tables}); pass --app MODULE (or set TOKENSTORE_APP) naming the "
            "module that defines them",
            file=sys.stderr,
        )


# -- the parser's building blocks -----------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, unless the help already names it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        positional_required = not action.option_strings and action.nargs not in ("?", "*")
        if "(default" in text or action.default is argparse.SUPPRESS or positional_required:
            return text
        return f"{text} (default: %(default)s)"


#: (flags, dest, argparse keywords, help) of the options every command takes.
_GLOBAL_OPTIONS: tuple[tuple[str, str, dict[str, Any], str], ...] = (
    (
        "--db",
        "db",
        {"metavar": "PATH"},
        f"the store file (default: $TOKENSTORE_DB, else ./{DEFAULT_DB})",
    ),
    ("--json", "json", {"action": "store_true"}, "print JSON (default: text for people)"),
    (
        "--allow",
        "allow",
        {"action": "append", "metavar": "HOST_OR_CIDR"},
        "let webhooks reach this host or network, which the address guard refuses by "
        "default, e.g. 127.0.0.1/32 (repeatable; added to $TOKENSTORE_WEBHOOK_ALLOW, "
        "comma-separated) (default: none)",
    ),
    (
        "--app",
        "app",
        {"action": "append", "metavar": "MODULE"},
        "import MODULE and register the peewee models it defines (repeatable; added to "
        "$TOKENSTORE_APP, comma-separated) (default: none)",
    ),
)


def _add_global_options(parser: argparse.ArgumentParser, late: bool) -> None:
    """The global options; a command's own copies (``late``) land apart and are merged after."""
    if not late:
        for flag, dest, keywords, help_text in _GLOBAL_OPTIONS:
            parser.add_argument(flag, dest=dest, help=help_text, **keywords)
        return
    group = parser.add_argument_group("global options (also accepted before the command)")
    for flag, dest, keywords, help_text in _GLOBAL_OPTIONS:
        group.add_argument(
            flag, dest=f"late_{dest}", default=argparse.SUPPRESS, help=help_text, **keywords
        )


def _env_list(name: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


def _settle_global_options(args: argparse.Namespace) -> None:
    """One value per global option: after the command wins, then before it, then $VARIABLES."""
    args.db = getattr(args, "late_db", None) or args.db or os.environ.get("TOKENSTORE_DB")
    args.db = args.db or DEFAULT_DB
    args.json = args.json or getattr(args, "late_json", False)
    for dest, variable in (("allow", "TOKENSTORE_WEBHOOK_ALLOW"), ("app", "TOKENSTORE_APP")):
        given = (getattr(args, dest) or []) + getattr(args, f"late_{dest}", [])
        setattr(args, dest, _env_list(variable) + [item for item in given if item])


Commands = Any  # argparse's private _SubParsersAction


def _group(commands: Commands, name: str, help_text: str, examples: str) -> Commands:
    """A command group (``tokens``, ``webhooks`` ...) with its examples under its help."""
    parser = commands.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=f"examples:\n{examples}",
        formatter_class=_Formatter,
    )
    return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")


def _command(
    group: Commands,
    name: str,
    handler: Handler,
    call: str | None,
    help_text: str,
    aliases: Sequence[str] = (),
) -> argparse.ArgumentParser:
    """A command that runs ``call``; ``aliases`` are the names earlier versions used."""
    description = help_text if call is None else f"{help_text} ({call})"
    sub: argparse.ArgumentParser = group.add_parser(
        name,
        aliases=list(aliases),
        help=help_text,
        description=description,
        formatter_class=_Formatter,
    )
    sub.set_defaults(handler=handler, call=call)
    _add_global_options(sub, late=True)
    return sub


# -- store --------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace, out: Output) -> int:
    with _open(args) as store:
        out.record(
            {
                "path": str(store.path.resolve()),
                "schema_version": SCHEMA_VERSION,
                "inspect_with": f"sqlite3 {store.path}",
            }
        )
    return 0


def cmd_dispatch(args: argparse.Namespace, out: Output) -> int:
    """``store.dispatch()``, once or (``--watch``) whenever another connection commits."""
    with _open(args, dispatch=False) as store:
        if args.watch:
            watch(store, args.interval.total_seconds())
            return 0
        report = store.dispatch()
        out.record(
            {
                "events_dispatched": report.events,
                "deliveries_attempted": report.delivered + report.failed,
                "deliveries_delivered": report.delivered,
                "deliveries_failed": report.failed,
                "events_waiting": report.waiting,
            }
        )
    _warn_waiting(report.waiting)
    return 0


def watch(store: Store, interval: float) -> None:
    """Dispatch whenever another connection commits, and send due retries, until Ctrl-C.

    Ctrl-C is taken between rounds, never in the middle of one: a transaction
    or a delivery's bookkeeping is not cut short.
    """
    stopping = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stopping.set())
    print(f"watching {store.path} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    warned: dict[str, int] = {}
    try:
        report = store.dispatch()
        while True:
            now = format_time(store.clock())
            if report.events:
                print(f"{now} dispatched {report.events} events", flush=True)
            if report.delivered or report.failed:
                print(
                    f"{now} deliveries: {report.delivered} delivered, {report.failed} failed",
                    flush=True,
                )
            if report.waiting != warned:
                warned = report.waiting
                _warn_waiting(warned)
            if stopping.is_set():
                break
            store.wait_for_changes(interval)  # wakes early when another connection commits
            if stopping.is_set():
                break
            report = store.dispatch()
    finally:
        signal.signal(signal.SIGINT, previous)
    print("stopped", file=sys.stderr)


def add_store_commands(commands: Commands) -> None:
    _command(commands, "init", cmd_init, "tokenstore.open", "create the store file, or check it")
    p = _command(
        commands,
        "dispatch",
        cmd_dispatch,
        "store.dispatch",
        "fire pending change events and send due deliveries, and say what was done",
    )
    p.add_argument("--watch", action="store_true", help="keep dispatching until Ctrl-C")
    p.add_argument(
        "--interval",
        type=_duration_type("--interval"),
        default=timedelta(seconds=1),
        metavar="DURATION",
        help="with --watch, how often to look for work (default: 1s)",
    )


# -- abid ---------------------------------------------------------------------------------


def cmd_abid_parse(args: argparse.Namespace, out: Output) -> int:
    out.record(abid_dict(ABID.parse(args.abid, prefix=args.prefix)))
    return 0


def cmd_abid_new(args: argparse.Namespace, out: Output) -> int:
    abid = abid_from_values(args.prefix, datetime.now(UTC), args.uri, args.subtype, None)
    out.record(abid_dict(abid))
    return 0


def add_abid_commands(commands: Commands) -> None:
    abid = _group(
        commands,
        "abid",
        "make and read ABIDs",
        "  tokenstore abid parse apt_01JAZ6BQG0D53BD22B01XRS78E\n"
        "  tokenstore abid new --prefix snp --uri https://example.com/",
    )
    p = _command(abid, "parse", cmd_abid_parse, "tokenstore.ABID.parse", "show an ABID's parts")
    p.add_argument("abid", help="the ABID, e.g. apt_01JAZ6BQG0D53BD22B01XRS78E")
    p.add_argument(
        "--prefix", help="the prefix to expect, or to add to a bare suffix (default: any)"
    )
    p = _command(abid, "new", cmd_abid_new, "tokenstore.abid_from_values", "make an ABID for now")
    p.add_argument("--prefix", required=True, help="three letters, e.g. snp")
    p.add_argument("--uri", required=True, help="the uri source, e.g. a URL or an owner's id")
    p.add_argument("--subtype", default="00", help="two characters kept as they are, else hashed")


# -- users --------------------------------------------------------------------------------


def cmd_users_create(args: argparse.Namespace, out: Output) -> int:
    with _open(args) as store:
        out.record(user_dict(store.users.create(args.username, superuser=args.superuser)))
    return 0


def cmd_users_get(args: argparse.Namespace, out: Output) -> int:
    with _open(args) as store:
        out.record(user_dict(store.users.get(args.username)))
    return 0


def cmd_users_list(args: argparse.Namespace, out: Output) -> int:
    with _open(args) as store:
        users = [user_dict(u) for u in store.users.list()]
    out.rows(users, ["id", "username", "is_superuser", "created_at"])
    return 0


def add_users_commands(commands: Commands) -> None:
    users = _group(
        commands,
        "users",
        "manage users, the owners of tokens",
        "  tokenstore users create alice\n  tokenstore users get alice\n  tokenstore users list",
    )
    p = _command(
        users, "create", cmd_users_create, "store.users.create", "add a user", aliases=["add"]
    )
    p.add_argument("username", help="1-150 letters, digits or _.@+-")
    p.add_argument("--superuser", action="store_true", help="mark the user as a superuser")
    p = _command(users, "get", cmd_users_get, "store.users.get", "show a user")
    p.add_argument("username", help="the user's name")
    _command(users, "list", cmd_users_list, "store.users.list", "list users, oldest first")


# -- tokens -------------------------------------------------------------------------------


def cmd_tokens_create(args: argparse.Namespace, out: Output) -> int:
    expires = None if args.expires is None else parse_expiry(args.expires)
    with _open(args) as store:
        token, secret = store.tokens.create(
            args.user, name=args.name, expires=expires, scopes=args.scope
        )
        out.record({**token_dict(token), "secret": secret})
    print("Store this secret now: it is not kept and will not be shown again.", file=sys.stderr)
    return 0


def cmd_tokens_get(args: argparse.Namespace, out: Output) -> int:
    with _open(args) as store:
        out.record(token_dict(store.tokens.get(args.abid)))
    return 0


def cmd_tokens_list(args: argparse.Namespace, out: Output) -> int:
    with _open(args) as store:
        names = {u.id: u.username for u in store.users.list()}
        found = store.tokens.list(args.user, include_revoked=args.include_revoked)
        tokens = [{**token_dict(t), "user": names.get(t.created_by_id)} for t in found]
    out.rows(tokens, ["abid", "user", "name", "token", "expires", "revoked_at", "valid"])
    return 0


def cmd_tokens_revoke(args: argparse.Namespace, out: Output) -> int:
    with _open(args) as store:
        out.record(token_dict(store.tokens.revoke(args.abid)))
    return 0


def cmd_tokens_authenticate(args: argparse.Namespace, out: Output) -> int:
    secret = _secret(args.secret)
    with _open(args) as store:
        try:
            token = store.tokens.authenticate(secret, scope=args.scope)
        except AuthenticationError as exc:
            out.record({"valid": False, "reason": type(exc).__name__, "message": str(exc)})
            return 1
        out.record({**token_dict(token), "valid": True})
    return 0


def add_tokens_commands(commands: Commands) -> None:
    tokens = _group(
        commands,
        "tokens",
        "issue, check and revoke API tokens",
        "  tokenstore tokens create alice --name ci --expires 30d --scope snapshots:read\n"
        '  echo "$SECRET" | tokenstore tokens authenticate --scope snapshots:read\n'
        "  tokenstore tokens list --user alice\n"
        "  tokenstore tokens revoke apt_01JAZ6BQG0D53BD22B01XRS78E",
    )
    p = _command(
        tokens, "create", cmd_tokens_create, "store.tokens.create", "issue a token, shown once"
    )
    p.add_argument("user", nargs="?", help="the owner's username (default: the system user)")
    p.add_argument("--name", help="what the token is for (default: no name)")
    p.add_argument(
        "--expires",
        metavar="DURATION_OR_TIME",
        help="a duration from now (30d) or an ISO-8601 time with a timezone "
        "(default: never expires)",
    )
    p.add_argument(
        "--scope",
        action="append",
        default=[],
        help="a scope the token grants, e.g. snapshots:read (repeatable) "
        "(default: none, which means unrestricted)",
    )
    p = _command(tokens, "get", cmd_tokens_get, "store.tokens.get", "show a token by its ABID")
    p.add_argument("abid", help="the token's ABID (apt_...)")
    p = _command(tokens, "list", cmd_tokens_list, "store.tokens.list", "list tokens, oldest first")
    p.add_argument("--user", help="only this user's tokens (default: everyone's)")
    p.add_argument("--include-revoked", "--all", action="store_true", help="include revoked tokens")
    p = _command(tokens, "revoke", cmd_tokens_revoke, "store.tokens.revoke", "revoke for good")
    p.add_argument("abid", help="the token's ABID (apt_...)")
    p = _command(
        tokens,
        "authenticate",
        cmd_tokens_authenticate,
        "store.tokens.authenticate",
        "check a secret: exit 0 if it grants access, 1 (with the reason) if not",
        aliases=["verify"],
    )
    p.add_argument(
        "secret",
        nargs="?",
        default="-",
        help="the secret, or - to read it from stdin, which keeps it out of the process "
        "list and shell history",
    )
    p.add_argument("--scope", help="the scope it must grant (default: any)")


# -- webhooks -----------------------------------------------------------------------------


def _headers(given: Sequence[str] | None) -> dict[str, str]:
    return dict(_header(h) for h in given or ())


def cmd_webhooks_create(args: argparse.Namespace, out: Output) -> int:
    with _open(args) as store:
        hook = store.webhooks.create(
            args.name,
            args.ref,
            args.endpoint,
            signal=args.signal,
            headers=_headers(args.header),
            auth_token=_secret(args.auth_token),
            keep_last_response=args.keep_last_response,
        )
        out.record({**hook_dict(hook), "secret": hook.secret})
    print("Give the secret to the receiver so it can verify signatures.", file=sys.stderr)
    return 0


def cmd_webhooks_list(args: argparse.Namespace, out: Output) -> int:
    with _open(args) as store:
        hooks = [hook_dict(h) for h in store.webhooks.list(enabled=args.enabled)]
    out.rows(hooks, ["abid", "name", "signal", "ref", "endpoint", "enabled", "failure_count"])
    return 0


def cmd_webhooks_get(args: argparse.Namespace, out: Output) -> int:
    with _open(args) as store:
        out.record(hook_dict(store.webhooks.get(args.hook)))
    return 0


def cmd_webhooks_update(args: argparse.Namespace, out: Output) -> int:
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
    with _open(args) as store:
        hook = store.webhooks.get(args.hook)
        store.webhooks.delete(hook)
    out.record({"deleted": hook.abid, "name": hook.name})
    return 0


def cmd_webhooks_enable(args: argparse.Namespace, out: Output) -> int:
    with _open(args) as store:
        out.record(hook_dict(store.webhooks.enable(args.hook)))
    return 0


def cmd_webhooks_disable(args: argparse.Namespace, out: Output) -> int:
    with _open(args) as store:
        out.record(hook_dict(store.webhooks.disable(args.hook, args.reason)))
    return 0


def cmd_webhooks_rotate_secret(args: argparse.Namespace, out: Output) -> int:
    with _open(args) as store:
        hook = store.webhooks.rotate_secret(args.hook, grace=args.grace)
        out.record({**hook_dict(hook), "secret": hook.secret})
    return 0


def cmd_webhooks_deliveries(args: argparse.Namespace, out: Output) -> int:
    with _open(args) as store:
        found = store.webhooks.deliveries(
            args.hook, status=args.status, limit=args.limit, before=args.before
        )
        names = {hook.id: hook.name for hook in store.webhooks.list()}
    out.rows(
        [delivery_dict(d, names[d.hook_id]) for d in found],
        ["webhook_id", "hook", "event_type", "status", "attempts", "last_status_code",
         "last_error", "created_at"],
    )  # fmt: skip
    return 0


def cmd_webhooks_prune(args: argparse.Namespace, out: Output) -> int:
    """``store.webhooks.prune``, reporting how many deliveries went."""
    with _open(args, dispatch=False) as store:
        out.record({"deliveries_deleted": store.webhooks.prune(args.older_than)})
    return 0


def cmd_webhooks_delivery(args: argparse.Namespace, out: Output) -> int:
    with _open(args) as store:
        delivery = store.webhooks.delivery(args.delivery)
        out.record({**delivery_dict(delivery, delivery.hook.name), "payload": delivery.payload})
    return 0


def cmd_webhooks_deliver_due(args: argparse.Namespace, out: Output) -> int:
    with _open(args, dispatch=False) as store:
        out.record({"deliveries_attempted": store.webhooks.deliver_due(limit=args.limit)})
    return 0


def _sent(out: Output, delivery: WebhookDelivery, hook: str) -> int:
    out.record(delivery_dict(delivery, hook))
    _warn_if_blocked(delivery)
    return 0 if delivery.status == "delivered" else 1


def cmd_webhooks_ping(args: argparse.Namespace, out: Output) -> int:
    with _open(args) as store:
        hook = store.webhooks.get(args.hook)
        return _sent(out, store.webhooks.ping(hook), hook.name)


def cmd_webhooks_redeliver(args: argparse.Namespace, out: Output) -> int:
    with _open(args) as store:
        delivery = store.webhooks.redeliver(args.delivery)
        return _sent(out, delivery, delivery.hook.name)


def _hook_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("hook", help="the hook's ABID (whk_...) or name")


def add_webhooks_commands(commands: Commands) -> None:
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
    )
    p.add_argument("name", help="a unique name for the hook")
    p.add_argument("ref", help="the model, as module.ClassName, e.g. tokenstore.User")
    p.add_argument("endpoint", help="the http(s) URL to POST to")
    p.add_argument(
        "--signal",
        default="CREATE_UPDATE_OR_DELETE",
        help="which changes to send: CREATE, UPDATE, DELETE or a combination like CREATE_OR_UPDATE",
    )
    p.add_argument(
        "--header",
        action="append",
        metavar="NAME=VALUE",
        help="a header sent with every request (repeatable) (default: none)",
    )
    p.add_argument(
        "--auth-token",
        default="",
        help="sent as the Authorization header; - reads it from stdin (default: none)",
    )
    p.add_argument(
        "--keep-last-response", action="store_true", help="keep the receiver's last answer"
    )

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
        help=f"replace the headers with these (repeatable) {unchanged}",
    )
    headers.add_argument("--no-headers", action="store_true", help="remove every header")
    p.add_argument(
        "--auth-token", help=f"a new Authorization header; - reads it from stdin {unchanged}"
    )
    p.add_argument(
        "--enabled",
        action=argparse.BooleanOptionalAction,
        help=f"turn the hook on or off (enable/disable also reset its failures) {unchanged}",
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
    p.add_argument("hook", nargs="?", help="the hook's ABID or name (default: every hook)")
    p.add_argument(
        "--status",
        choices=DELIVERY_STATUSES,
        help="only deliveries in this state (default: all)",
    )
    p.add_argument("--limit", type=_positive_int, default=DELIVERIES_PAGE, help="at most this many")
    p.add_argument(
        "--before",
        metavar="WEBHOOK_ID",
        help="only deliveries older than this one (msg_...): the next page after it",
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


# -- tools --------------------------------------------------------------------------------


def cmd_import_archivebox(args: argparse.Namespace, out: Output) -> int:
    """Import an ArchiveBox database and show the counts, the refusals and the new secrets."""
    ref_map: dict[str, str] = {}
    for item in args.map or ():
        old, sep, new = item.partition("=")
        if not (sep and old.strip() and new.strip()):
            raise ValidationError(
                f"--map {item!r} must look like core.models.Snapshot=app.Snapshot"
            )
        ref_map[old.strip()] = new.strip()
    cipher_key = sys.stdin.readline().strip() if args.cipher_key == "-" else args.cipher_key
    with _open(args) as store:
        report = store.import_archivebox(
            args.path, ref_map=ref_map, cipher_key=cipher_key, dry_run=args.dry_run
        )
        counts = [{"table": t, **dataclasses.asdict(c)} for t, c in report.counts.items()]
        notes = {
            "refused": [dataclasses.asdict(note) for note in report.refused],
            "disabled": [dataclasses.asdict(note) for note in report.disabled],
        }
        hooks = [{**hook_dict(hook), "secret": hook.secret} for hook in report.hooks]
    if out.as_json:
        out.record(
            {"source": str(report.source), "dry_run": report.dry_run, "counts": counts}
            | notes
            | {"hooks": hooks}
        )
    else:
        out.rows(counts, ["table", "imported", "present", "refused"])
        for kind, listed in notes.items():
            for note in listed:
                print(f"{kind}: {note['table']} {note['row']}: {note['reason']}")
        if hooks:
            print("signing secrets of the imported hooks:")
            out.rows(hooks, ["abid", "name", "enabled", "secret"])
    if report.dry_run:
        print("dry run: nothing was written", file=sys.stderr)
    elif hooks:
        print(
            "Give each hook's secret to its receiver so it can verify signatures.", file=sys.stderr
        )
    return 0


def listen_secret(args: argparse.Namespace) -> str:
    """The signing secret ``listen`` verifies with, kept out of argv where it can be.

    A secret given with ``--secret`` is visible to anyone running ``ps``; the
    environment and a file (or stdin) are not.
    """
    if args.secret is not None and args.secret_file is not None:
        raise ValidationError("give the signing secret with --secret or --secret-file, not both")
    if args.secret_file == "-":
        secret = _secret("-")
    elif args.secret_file is not None:
        try:
            secret = Path(args.secret_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValidationError(f"--secret-file {args.secret_file}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ValidationError(f"--secret-file {args.secret_file} is not UTF-8 text") from None
    elif args.secret is not None:
        secret = _secret(args.secret)
    else:
        secret = os.environ.get("TOKENSTORE_LISTEN_SECRET", "")
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


def cmd_serve(args: argparse.Namespace, out: Output) -> int:
    """Serve the admin page until Ctrl-C."""
    from .admin import make_admin_server, public_warning

    with _open(args) as store:
        server = make_admin_server(store, args.host, args.port, public=args.public)
        port = server.server_address[1]
        warning = public_warning(args.host)
        if warning:
            print(warning, file=sys.stderr)
        shown = f"[{args.host.strip('[]')}]" if ":" in args.host else args.host
        print(f"admin page on http://{shown}:{port}/ (Ctrl-C to stop)", file=sys.stderr)
        sys.stderr.flush()
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


def add_import_commands(commands: Commands) -> None:
    imports = _group(
        commands,
        "import",
        "import users, tokens and hooks from other systems",
        "  tokenstore import archivebox ~/archivebox/data --dry-run\n"
        "  tokenstore --app myapp.models import archivebox index.sqlite3 "
        "--map core.models.Snapshot=myapp.models.Snapshot",
    )
    p = _command(
        imports,
        "archivebox",
        cmd_import_archivebox,
        "store.import_archivebox",
        "copy users, API tokens and webhooks from an ArchiveBox 0.8 index.sqlite3, "
        "which is only read",
    )
    p.add_argument("path", help="ArchiveBox's index.sqlite3, or its data folder")
    p.add_argument(
        "--map",
        action="append",
        metavar="DJANGO_REF=REF",
        help="hooks on this ArchiveBox model watch this registered model (repeatable)",
    )
    p.add_argument(
        "--cipher-key",
        metavar="KEY",
        help="ArchiveBox's SIGNAL_WEBHOOKS CIPHER_KEY, to carry hooks' auth tokens over; "
        "- reads it from stdin (keeps it out of the process list)",
    )
    p.add_argument("--dry-run", action="store_true", help="report what would happen; write nothing")


def add_tool_commands(commands: Commands) -> None:
    p = _command(
        commands,
        "listen",
        cmd_listen,
        "tokenstore.make_receiver",
        "receive webhooks, verify their signatures and print them",
    )
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    p.add_argument("--port", type=int, default=8787, help="the port; 0 picks a free one")
    p.add_argument(
        "--secret",
        help="the hook's whsec_... signing secret, or - to read it from stdin "
        "(in argv, a secret shows in ps: prefer $TOKENSTORE_LISTEN_SECRET or --secret-file)",
    )
    p.add_argument("--secret-file", metavar="PATH", help="read the secret from PATH (- for stdin)")
    p = _command(
        commands,
        "serve",
        cmd_serve,
        "tokenstore.admin.make_app",
        "serve the admin page; needs tokenstore[admin]",
    )
    p.add_argument("--host", default="127.0.0.1", help="the address; loopback unless --public")
    p.add_argument("--port", type=int, default=8787, help="the port; 0 picks a free one")
    p.add_argument(
        "--public", action="store_true", help="allow a non-loopback --host (put TLS in front)"
    )
    p = _command(commands, "demo", cmd_demo, None, "run the whole story on a throwaway file")
    p.add_argument("--dir", help="where to put the demo's file (default: a new temporary folder)")


# -- the parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tokenstore",
        description="API tokens and outbound webhooks in one SQLite file.",
        epilog="examples:\n"
        "  tokenstore init\n"
        "  tokenstore users create alice\n"
        "  tokenstore tokens list --json\n"
        "  tokenstore --app myapp.models dispatch --watch\n"
        "Global options work before or after the command.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"tokenstore {__version__}")
    _add_global_options(parser, late=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_store_commands(commands)
    add_abid_commands(commands)
    add_users_commands(commands)
    add_tokens_commands(commands)
    add_webhooks_commands(commands)
    add_import_commands(commands)
    add_tool_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _settle_global_options(args)
    out = Output(args.json)
    try:
        code: int = args.handler(args, out)
    except BlockedAddress as exc:
        print(f"tokenstore: error: {exc}; {_allow_hint()}", file=sys.stderr)
        return 2
    except TokenstoreError as exc:
        print(f"tokenstore: error: {exc}", file=sys.stderr)
        return 2
    except (sqlite3.Error, peewee.DatabaseError) as exc:  # a read on the raw connection
        print(f"tokenstore: error: {args.db}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
