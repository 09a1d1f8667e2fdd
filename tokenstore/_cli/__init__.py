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
import io
import os
import signal
import sqlite3
import sys
import threading
from collections.abc import Sequence
from typing import Any

import peewee

from .._errors import BlockedAddress, NotFound, TokenstoreError
from .._netguard import HOW_TO_ALLOW
from .._postgres_driver import driver_errors
from .._postgres_url import is_url, redacted_url
from .._version import __version__
from ._accounts import add_tokens_commands, add_users_commands
from ._base import (
    GIVEN,
    _add_global_options,
    _Formatter,
    _Parser,
    _settle_global_options,
    hide_given,
)
from ._output import Output, _allow_hint, log_lines, one_line
from ._store_commands import add_abid_commands, add_import_commands, add_store_commands
from ._tools import add_tool_commands
from ._webhooks import add_webhooks_commands

__all__ = ["CLI_ONLY", "NOT_COMMANDS", "build_parser", "main"]

#: Public calls the command leaves out on purpose, with the reason (the README repeats it).
NOT_COMMANDS = {
    "store.close": "every command closes its store when done",
    "store.atomic": "a transaction cannot span separate command runs",
    "store.register": "--app MODULE registers a module's models",
    "store.ref": "it takes a model class; hooks name models as module.ClassName",
    "store.model_for_ref": "it returns a model class; --app makes models known",
    "store.tokens.token_from_request": "it reads an HTTP request's headers",
    "store.wait_for_changes": "dispatch --watch waits with it between rounds",
    "store.tokens.flush_uses": "no command notes a use: tokens authenticate only reads",
    "store.webhooks.close": "every command closes its store when done",
    "store.webhooks.erase_expired_secrets": "every command that writes does it as it closes",
    "store.webhooks.start_retry_thread": "dispatch --watch sends due retries in the foreground",
    "store.webhooks.stop_retry_threads": "no command starts a retry thread",
}

#: Commands that stand for no single call: tools built from several.
CLI_ONLY = {"demo"}

#: Parameters of a command's call that its options spell otherwise (the option's dest), or
#: leave out (why). Every other parameter is an option or argument of the same name.
PARAMETERS: dict[str, dict[str, str]] = {
    "init": {"path": "db"},
    "abid parse": {"text": "abid"},
    "abid new": {"rand": "a fresh random part: a record's ABID comes from its own id"},
    "tokens create": {"scopes": "scope"},
    "tokens revoke": {"token": "abid"},
    "webhooks create": {"headers": "header", "created_by": "owner"},
    "webhooks update": {
        "unchanged_since": "an editor's guard against saving over a newer change: a run reads none"
    },
    "webhooks rotate-secret": {
        "expected": "a form's guard against being sent twice: one run rotates once"
    },
    "webhooks get": {"key": "hook"},
    "webhooks delivery": {"abid": "delivery"},
    "import archivebox": {"ref_map": "map"},
    "listen": {"on_event": "each webhook that verifies is printed"},
    "serve": {"store": "the store is the one --db names"},
}

# -- the parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The whole parser: global options, then one subcommand per public call."""
    parser = _Parser(
        prog="tokenstore",
        description="API tokens and outbound webhooks in one SQLite file.",
        epilog="examples:\n"
        "  tokenstore init\n"
        "  tokenstore users create alice\n"
        "  tokenstore tokens list --json\n"
        "  tokenstore --app myapp.models dispatch --watch\n"
        "Global options work before or after the command.\n"
        "Exit status: 0 done; 1 a negative answer (tokens authenticate, webhooks ping and\n"
        "redeliver); 2 bad input or a fault, said in one line on stderr.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"tokenstore {__version__}")
    _add_global_options(parser, "")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_store_commands(commands)
    add_abid_commands(commands)
    add_users_commands(commands)
    add_tokens_commands(commands)
    add_webhooks_commands(commands)
    add_import_commands(commands)
    add_tool_commands(commands)
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where it lands so the command unwinds as it does for Ctrl-C."""


def _terminate(signum: int, frame: Any) -> None:
    raise _Terminated


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; 0 done, 1 a negative answer, 2 bad input or a fault (one line).

    Ctrl-C exits 130 in one line wherever it lands: reading the command line
    too, not only the command's work (which it rolls back). SIGTERM, what a
    service manager stops ``serve`` or ``dispatch --watch`` with, unwinds the
    same way (those two stop, exit 0, as on Ctrl-C; others exit 143): the
    store is closed (token uses written) and a half-made copy removed, where
    the default action ended the process on the spot.
    """
    in_main_thread = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        return _run(argv)
    except _Terminated:
        print("tokenstore: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("tokenstore: interrupted", file=sys.stderr)
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, before)


def _run(argv: Sequence[str] | None) -> int:
    """The command ``argv`` names, run; its faults said in one line."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            # A file name that is not UTF-8, or a name the terminal's encoding lacks, is
            # shown escaped rather than ending the command half-printed (stderr does it
            # unless the process was started with another error handler, or is a test's).
            stream.reconfigure(errors="backslashreplace")
    GIVEN.set(sys.argv[1:] if argv is None else argv)
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:  # refused by the command they were given to, whose --help lists its options
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    _settle_global_options(args)
    out = Output(args.json)
    raw_errors: tuple[type[Exception], ...] = (
        sqlite3.Error,
        peewee.DatabaseError,
        *(driver_errors() if is_url(args.db) else ()),
    )
    try:
        with log_lines():
            code: int = args.handler(args, out)
    except BlockedAddress as exc:
        # The command's own ways to allow an address replace the message's general ones.
        message = str(exc).removesuffix(f"; {HOW_TO_ALLOW}")
        _error(f"{message}; {_allow_hint()}")
        return 2
    except NotFound as exc:  # named with the store searched: a wrong --db is the usual cause
        where = redacted_url(args.db) if is_url(args.db) else os.path.abspath(args.db)
        if args.db_from_environment:
            where = f"$TOKENSTORE_DB: {where}"
        _error(f"{where}: {exc}")
        return 2
    except TokenstoreError as exc:
        _error(str(exc))
        return 2
    except raw_errors as exc:  # a statement on the raw connection
        _error(f"{redacted_url(args.db)}: {exc}")
        return 2
    except BrokenPipeError:
        return 0
    except OSError as exc:  # the machine failed the command: stdout on a full disk, say
        _error(str(exc))
        return 2
    return code


def _error(message: str) -> None:
    """A command's fault in one line on stderr, no secret of its command line quoted."""
    print(f"tokenstore: error: {one_line(hide_given(message))}", file=sys.stderr)
