"""Commands about the store itself: init, migrate, dispatch, abid and import."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import signal
import sys
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from .._abid import ABID, DEFAULT_ABID_URI_SALT, abid_from_values
from .._backend import FELL_BACK
from .._errors import (
    InvalidABID,
    StoreFull,
    StoreIOError,
    StoreLocked,
    StoreReadOnly,
    ValidationError,
)
from .._inputs import check_seconds
from .._migrate import migrate
from .._postgres_url import redacted_url
from .._store import SCHEMA_VERSION, Dispatched, Store
from .._times import format_time
from ._base import Commands, _command, _group, _open, _warn_waiting
from ._output import Output, abid_dict, held_lines, hook_dict, one_line
from ._values import _duration_type, _secret, _time_type

# -- store --------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace, out: Output) -> int:
    """``tokenstore.open``: create the file (or check it) and report its schema."""
    with _open(args, create=True) as store:
        path = store.path
        out.record(
            {
                "path": store.location if path is None else str(path.resolve()),
                "schema_version": SCHEMA_VERSION,
                # quoted for a shell; psql asks for the password, so the URL holds none
                "inspect_with": (
                    f"psql {shlex.quote(redacted_url(args.db.strip(), dropped=True))}"
                    if path is None
                    else f"sqlite3 {shlex.quote(str(path))}"
                ),
            }
        )
    return 0


def cmd_migrate(args: argparse.Namespace, out: Output) -> int:
    """``tokenstore.migrate``: copy everything to another store and verify the counts.

    The allowlist is copied as the source holds it, and the tables copied are
    tokenstore's own: an ``--allow`` or ``--app`` would be ignored, so it is refused.
    """
    for option, why in _NOT_FOR_MIGRATE.items():
        if option in args.given:
            raise ValidationError(f"migrate takes no {option}: {why}")
    with held_lines() as held:
        try:
            copied = migrate(args.source, args.dest, force=args.force)
        except StoreReadOnly:  # a destination that opened read-only: the error says why
            held[:] = [r for r in held if r.msg != FELL_BACK]
            raise
    out.record(dict(copied))
    return 0


#: The global options ``migrate`` refuses, and why; $TOKENSTORE_WEBHOOK_ALLOW and
#: $TOKENSTORE_APP, set for every command, are left unused.
_NOT_FOR_MIGRATE = {
    "--allow": "it copies the source's allowlist as it is; add an entry to the copy with "
    "`tokenstore --db DEST webhooks allow HOST_OR_CIDR`",
    "--app": "it copies tokenstore's own tables, which need no module's models",
}

#: How often ``dispatch --watch`` looks for work unless ``--interval`` says.
_WATCH_INTERVAL = timedelta(seconds=1)


def cmd_dispatch(args: argparse.Namespace, out: Output) -> int:
    """``store.dispatch()``, once or (``--watch``) whenever another connection commits."""
    if args.interval is not None and not args.watch:  # a lone dispatch never waits
        raise ValidationError("--interval applies only with --watch")
    given = _WATCH_INTERVAL if args.interval is None else args.interval
    interval = check_seconds(given.total_seconds(), "--interval")  # at most a day
    with _open(args) as store:
        if args.watch:
            watch(store, interval, out, args.deliver)
            return 0
        report = store.dispatch(deliver=args.deliver)
        out.record(_dispatched_dict(report))
    _warn_waiting(report.waiting)
    return 0


def _dispatched_dict(report: Dispatched) -> dict[str, Any]:
    """What one ``store.dispatch()`` did, as the command shows it."""
    return {
        "events_dispatched": report.events,
        "deliveries_attempted": report.delivered + report.failed,
        "deliveries_delivered": report.delivered,
        "deliveries_failed": report.failed,
        "events_waiting": report.waiting,
    }


def watch(store: Store, interval: float, out: Output, deliver: bool = True) -> None:
    """Dispatch whenever another connection commits, and send due retries, until Ctrl-C.

    Ctrl-C (or SIGTERM) is taken between rounds, never in the middle of one: a transaction
    or a delivery's bookkeeping is not cut short. A round can take a delivery_deadline per
    hook that is down, so a second one stops at once, as either stops other commands: the
    attempt on the wire stays held, and is sent again later. With ``--json`` each round
    that did something is one line of JSON (JSON Lines), stamped ``at``.
    """
    stopping = threading.Event()

    def on_stop(signum: int, frame: Any) -> None:
        if stopping.is_set():
            handler = previous[signal.Signals(signum)]
            if callable(handler):
                handler(signum, frame)  # main()'s: unwind, exit 130 or 143
            raise KeyboardInterrupt
        stopping.set()
        os.write(2, b"tokenstore: stopping after this round (Ctrl-C or SIGTERM again: stop now)\n")

    previous = {stop: signal.signal(stop, on_stop) for stop in _STOPS}
    print(f"watching {store.location} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    warned: dict[str, int] = {}
    try:
        report: Dispatched | None = store.dispatch(deliver=deliver)
        while report is not None:
            now = format_time(store.clock())
            if out.as_json and (report.events or report.delivered or report.failed):
                print(json.dumps({"at": now, **_dispatched_dict(report)}), flush=True)
            elif report.events:
                print(f"{now} dispatched {report.events} events", flush=True)
            if not out.as_json and (report.delivered or report.failed):
                print(
                    f"{now} deliveries: {report.delivered} delivered, {report.failed} failed",
                    flush=True,
                )
            if report.waiting != warned:
                warned = report.waiting
                _warn_waiting(warned)
            report = _next_round(store, interval, stopping, warned, deliver)
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, handler)
    print("stopped", file=sys.stderr)


#: What stops ``dispatch --watch`` between rounds: Ctrl-C, and a service manager's SIGTERM.
_STOPS = (signal.SIGINT, signal.SIGTERM)


def _next_round(
    store: Store,
    interval: float,
    stopping: threading.Event,
    waiting: dict[str, int],
    deliver: bool,
) -> Dispatched | None:
    """Wait for changes and dispatch them; None once stopping.

    A round that loses the database (a PostgreSQL server restarting), finds
    the disk full, or waits out its busy timeout behind another transaction's
    lock (or, on PostgreSQL, is chosen to end a deadlock), is said in a line
    and tried again after ``interval``: the watcher outlives the outage.
    """
    if stopping.is_set():
        return None
    try:
        store.wait_for_changes(interval)  # wakes early when another connection commits
        return None if stopping.is_set() else store.dispatch(deliver=deliver)
    except (StoreFull, StoreIOError, StoreLocked) as exc:
        print(
            f"tokenstore: {one_line(str(exc))} (trying again in {interval:g} s)",
            file=sys.stderr,
            flush=True,
        )
        stopping.wait(interval)
        return Dispatched(events=0, delivered=0, failed=0, waiting=waiting)


def add_store_commands(commands: Commands) -> None:
    """``tokenstore init``, ``dispatch`` and ``migrate``."""
    _command(
        commands,
        "init",
        cmd_init,
        "tokenstore.open",
        "create the store file, or check it",
        prints="Prints the file's full path (or the URL without its password), its schema "
        "version and the command to look inside it. Every other command refuses a missing "
        "store: only init creates one.",
    )
    p = _command(
        commands,
        "dispatch",
        cmd_dispatch,
        "store.dispatch",
        "fire pending change events and send due deliveries, and say what was done",
        prints="Prints how many events it fired and deliveries it attempted, delivered and "
        "failed, and the events waiting for a table this process has no model for (named "
        "on stderr too, with the --app that would fire them). With --watch: a line per "
        "round that did something, until Ctrl-C, which exits 0.",
    )
    p.add_argument("--watch", action="store_true", help="keep dispatching until Ctrl-C")
    p.add_argument(
        "--no-deliver",
        dest="deliver",
        action="store_false",
        help="fire the events only; their deliveries and due retries wait for the retry path",
    )
    p.add_argument(
        "--interval",
        type=_duration_type("--interval"),
        metavar="DURATION",
        help="with --watch, how often to look for work (default: 1s)",
    )
    p = _command(
        commands,
        "migrate",
        cmd_migrate,
        "tokenstore.migrate",
        "copy users, tokens, hooks and deliveries to another store; give PostgreSQL "
        "passwords by PGPASSWORD or ~/.pgpass, not on the command line",
        prints="Prints the rows copied per table, the allowlist's entries included. --db is "
        "not used: SOURCE and DEST name both stores; --allow and --app are refused. Nothing "
        "is written unless every row is copied.",
    )
    p.add_argument("source", help="the store file or postgresql:// URL to copy from")
    p.add_argument("dest", help="the store file or postgresql:// URL to copy to")
    p.add_argument("--force", action="store_true", help="replace what the destination holds")


# -- abid ---------------------------------------------------------------------------------


def cmd_abid_parse(args: argparse.Namespace, out: Output) -> int:
    """``tokenstore.ABID.parse``, showing every view."""
    try:
        abid = ABID.parse(args.abid, prefix=args.prefix)
    except InvalidABID as exc:  # its message says what is wrong with the text, not what it is
        raise ValidationError(f"not an ABID: {exc}") from None
    _show_abid(abid, out)
    return 0


def _show_abid(abid: ABID, out: Output) -> None:
    """An ABID's parts and views; a view it has not is None, and a line on stderr says why.

    Valid ABIDs can lack views: the original makes some with a U, and the
    largest times are past the year 9999.
    """
    record, missing = abid_dict(abid)
    out.record(record)
    for why, views in missing.items():
        print(f"tokenstore: no {' or '.join(views)} view: {one_line(why)}", file=sys.stderr)


def cmd_abid_new(args: argparse.Namespace, out: Output) -> int:
    """``tokenstore.abid_from_values`` with a fresh random part (a record's id, in Python)."""
    ts = datetime.now(UTC) if args.ts is None else args.ts
    _show_abid(abid_from_values(args.prefix, ts, args.uri, args.subtype, None, args.salt), out)
    return 0


def add_abid_commands(commands: Commands) -> None:
    """``tokenstore abid ...``."""
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
    p = _command(
        abid, "new", cmd_abid_new, "tokenstore.abid_from_values", "make an ABID, for now or --ts"
    )
    p.add_argument("--prefix", required=True, help="three letters, e.g. snp")
    p.add_argument("--uri", required=True, help="the uri source, e.g. a URL or an owner's id")
    p.add_argument("--subtype", default="00", help="two characters kept as they are, else hashed")
    p.add_argument(
        "--ts",
        type=_time_type("--ts"),
        metavar="TIME",
        help="the time part's source, ISO-8601, e.g. 2024-10-24T12:00:00Z (default: now)",
    )
    p.add_argument(
        "--salt", default=DEFAULT_ABID_URI_SALT, help="what the uri is hashed with, as ArchiveBox"
    )


# -- import -------------------------------------------------------------------------------


def cmd_import_archivebox(args: argparse.Namespace, out: Output) -> int:
    """Import an ArchiveBox database and show the counts, the refusals and the new secrets."""
    ref_map: dict[str, str] = {}
    for item in args.map or ():
        old, sep, new = item.partition("=")
        if not (sep and old.strip() and new.strip()):
            raise ValidationError(
                f"--map {item!r} must look like core.models.Snapshot=app.Snapshot"
            )
        if old.strip() in ref_map:  # not one of the two dropped unsaid
            raise ValidationError(f"--map {old.strip()!r} is given twice")
        ref_map[old.strip()] = new.strip()
    cipher_key = None if args.cipher_key is None else _secret(args.cipher_key)
    with _open(args, rehearse=args.dry_run) as store:
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


def add_import_commands(commands: Commands) -> None:
    """``tokenstore import ...``."""
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
        prints="Prints per table how many rows were imported, were already here or were "
        "refused; then each refused or disabled row with the reason, and the signing secret "
        "of each imported hook, shown this once.",
    )
    p.add_argument("path", help="ArchiveBox's index.sqlite3, or its data folder")
    p.add_argument(
        "--map",
        action="append",
        metavar="DJANGO_REF=REF",
        help="hooks on this ArchiveBox model watch this registered model (repeatable) "
        "(default: none: hooks on models but User and APIToken are imported disabled)",
    )
    p.add_argument(
        "--cipher-key",
        metavar="KEY",
        help="ArchiveBox's SIGNAL_WEBHOOKS CIPHER_KEY, to carry hooks' auth tokens over; "
        "- reads it from stdin (keeps it out of the process list) (default: none; hooks "
        "with an auth token are imported disabled)",
    )
    p.add_argument("--dry-run", action="store_true", help="report what would happen; write nothing")
