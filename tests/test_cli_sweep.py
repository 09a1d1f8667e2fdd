"""Every command, each option and argument in turn given every hostile value, in-process.

The commands and their arguments are read from the real parser (``build_parser()``, its
subparsers walked), so a new command or option is swept as soon as it exists: ``VALID``
must then say what a valid value is, or the sweep fails naming it. For each (command,
argument, value) the other arguments stay valid, and the contract is (README, ``--help``):

- the exit status is 0, 1 or 2, and nothing escapes ``main()``;
- a refusal (2) is one line on stderr, with nothing on stdout and no traceback, and leaves
  every table of the store as it was; a value the command itself parses (a number, a
  duration, a time, a choice) is refused naming its option;
- a command that only reads leaves the file as it was (its dump and its mtime);
- no secret given (a token, a signing secret, a URL's password, a value read from stdin) is
  echoed on stdout, stderr or to any logger.

Each case runs on a fresh copy of one store made once for the module: a user, a token, a
hook to a closed port on 127.0.0.1 (allowlisted) and a failed delivery of it, so what sends
reaches only 127.0.0.1. ``listen``, ``serve`` and ``dispatch --watch`` run until stopped: they
listen on a port already taken, or are stopped by a timer (see ``_bounded``). ``demo`` is
left out: it runs its whole story on servers of its own for many seconds, and reads only
--dir, whose empty value tests/test_cli_values.py refuses. The global options are swept on
a read and a write, as every command shares them.
"""

from __future__ import annotations

import argparse
import base64
import io
import logging
import os
import shutil
import signal
import sqlite3
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _http
import pytest
from test_archivebox import standard
from test_cli import _commands

import tokenstore
from tokenstore._cli import build_parser, main

WHSEC = "whsec_" + base64.b64encode(bytes(range(32))).decode()
STDIN_SECRET = "Stdin-Secret-7f3a9c"  # what "-" reads: a header value, an auth token, a secret
PASSWORD = "Pa55w0rdZq"
URL = f"postgresql://u:{PASSWORD}@127.0.0.1:1/x"

#: Commands that never write: the file stays as it was, whatever they are given.
READS = {
    "users get", "users list", "tokens get", "tokens list", "tokens authenticate",
    "webhooks list", "webhooks allowlist", "webhooks get", "webhooks deliveries",
    "webhooks delivery", "abid parse", "abid new", "listen",
}  # fmt: skip
#: Commands that write (or may), or create another store.
WRITES = {
    "init", "dispatch", "migrate", "users create", "tokens create", "tokens revoke",
    "webhooks create", "webhooks allow", "webhooks disallow", "webhooks update",
    "webhooks delete", "webhooks enable", "webhooks disable", "webhooks rotate-secret",
    "webhooks prune", "webhooks deliver-due", "webhooks ping", "webhooks redeliver",
    "import archivebox", "serve",
}  # fmt: skip
#: Left out, with the reason in the module's docstring.
SKIPPED = {"demo"}
#: Commands that run until stopped; stopped by the timer, they exit 130.
RUN_UNTIL_STOPPED = {"listen", "serve", "dispatch"}
#: The commands the global options are swept on: a read, a write, migrate, a server.
GLOBAL_SWEPT = ("tokens list", "webhooks create")


#: A name or reason is kept in clear and shown: one holding a token or signing secret is
#: refused, but a URL's password is no secret tokenstore can tell from a name.
STORED_AS_GIVEN = {
    ("stdout", "users create", "username"),
    ("stdout", "tokens create", "name"),
    ("stdout", "webhooks create", "name"),
    ("stdout", "webhooks update", "name"),
    ("stdout", "webhooks disable", "reason"),
}


@dataclass
class World:
    """The module's store and the values a valid command line is made of."""

    template: Path
    work: Path
    token_abid: str
    token_secret: str
    other_secret: str
    delivery: str
    archivebox: Path
    port: str
    dump: list[str]

    @property
    def db(self) -> Path:
        return self.work / "case.sqlite3"

    @property
    def copy(self) -> Path:
        return self.work / "copy.sqlite3"


@pytest.fixture(scope="module")
def taken_port() -> Iterator[str]:
    """A port taken on 127.0.0.1 and ::1: listen and serve fail there instead of serving."""
    with _http.taken_port() as port:
        yield str(port)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, taken_port: str) -> World:
    """The store every case copies, made once."""
    root = tmp_path_factory.mktemp("sweep")
    template = root / "store.sqlite3"
    with tokenstore.open(template, webhook_allow=["127.0.0.1/32"]) as store:
        store.users.create("alice")
        token, secret = store.tokens.create("alice", name="ci")
        _, other = store.tokens.create("alice", name="other")
        hook = store.webhooks.create("h", "tokenstore.User", "http://127.0.0.1:9/hook")
        delivery = store.webhooks.ping(hook)
    (root / "work").mkdir()
    (root / "a-folder").mkdir()
    (root / "secret").write_text(WHSEC)
    return World(
        template=template,
        work=root / "work",
        token_abid=token.abid,
        token_secret=secret,
        other_secret=other,
        delivery=delivery.abid,
        archivebox=standard(root),
        port=taken_port,
        dump=dump(template),
    )


# -- the arguments, from the parser ---------------------------------------------------------


def takes_value(action: argparse.Action) -> bool:
    """Whether the argument is given a value (not a flag)."""
    return action.nargs != 0 and not isinstance(action, argparse.BooleanOptionalAction)


def arguments(parser: argparse.ArgumentParser, *, globals_: bool) -> list[argparse.Action]:
    """The command's own arguments, or its copies of the global options."""
    return [
        a
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction) and a.dest.startswith("late_") == globals_
    ]


COMMANDS = {" ".join(words): sub for words, sub in _commands(build_parser())}

#: A valid value of each argument, by dest; "COMMAND dest" where commands differ.
VALID: dict[str, Any] = {
    "username": "bob",
    "users list before": "alice",
    "user": "alice",
    "abid": lambda w: w.token_abid,
    "before": lambda w: w.token_abid,
    "webhooks deliveries before": lambda w: w.delivery,
    "secret": lambda w: w.token_secret,
    "listen secret": WHSEC,
    "secret_file": lambda w: str(w.work.parent / "secret"),
    "hook": "h",
    "delivery": lambda w: w.delivery,
    "entry": "10.0.0.0/8",
    "webhooks disallow entry": "127.0.0.1/32",
    "name": "ci",
    "webhooks create name": "h2",
    "ref": "tokenstore.User",
    "endpoint": "http://127.0.0.1:9/other",
    "source": lambda w: str(w.db),
    "dest": lambda w: str(w.copy),
    "path": lambda w: str(w.archivebox),
    "expires": "1d",
    "scope": "read",
    "limit": "3",
    "signal": "CREATE",
    "header": "X-A=1",
    "auth_token": "tok",
    "owner": "alice",
    "reason": "by hand",
    "grace": "1h",
    "status": "failed",
    "older_than": "1d",
    "now": "2030-01-01T00:00:00Z",
    "interval": "1s",
    "prefix": "apt",
    "abid new prefix": "snp",
    "uri": "1",
    "subtype": "00",
    "ts": "2024-10-24T12:00:00Z",
    "salt": "s",
    "map": "core.models.Snapshot=tokenstore.User",
    "cipher_key": "k",
    "host": "127.0.0.1",
    "port": lambda w: w.port,
    "tolerance": "5m",
    "late_db": lambda w: str(w.db),
    "late_allow": "127.0.0.1/32",
    "late_app": "tokenstore",
}


def valid(world: World, command: str, action: argparse.Action) -> str:
    """The valid value of an argument, or a failure naming the one VALID lacks."""
    value = VALID.get(f"{command} {action.dest}", VALID.get(action.dest))
    assert value is not None, f"VALID says no valid value for {command} {action.dest}"
    return str(value(world) if callable(value) else value)


def twice(world: World, command: str, action: argparse.Action) -> list[str]:
    """Two valid values of an argument, for the case that gives it twice; none for a flag."""
    return [valid(world, command, action)] * 2 if takes_value(action) else []


def flag(action: argparse.Action) -> str:
    """The long spelling of an option."""
    return max(action.option_strings, key=len)


def command_line(
    world: World, command: str, swept: argparse.Action, value: str | None
) -> list[str]:
    """The command with every required argument valid and ``swept`` given ``value``;
    None gives it twice, with valid values."""
    parser = COMMANDS[command]
    argv = [*command.split()]
    if command not in ("migrate",):
        argv = ["--db", str(world.db), *argv]
    if swept.dest == "late_db":  # its own value, given after the command
        argv = argv[2:]
    for action in arguments(parser, globals_=False):
        if action is swept:
            given = twice(world, command, action) if value is None else [value]
            if action.option_strings and not takes_value(action):
                argv += [flag(action)] * 2
            elif action.option_strings:
                argv += [part for one in given for part in (flag(action), one)]
            else:
                argv += given
        elif (not action.option_strings and action.nargs != "?") or action.required:
            argv += ([flag(action)] if action.option_strings else []) + [
                valid(world, command, action)
            ]
    if swept in arguments(parser, globals_=True):
        if not takes_value(swept):
            argv += [flag(swept)] * 2
        else:
            given = twice(world, command, swept) if value is None else [value]
            argv += [part for one in given for part in (flag(swept), one)]
    if command in ("listen", "serve") and swept.dest != "port":
        argv += ["--port", world.port]
    if command == "listen" and swept.dest not in ("secret", "secret_file"):
        argv += ["--secret", WHSEC]
    if command == "dispatch" and swept.dest == "interval":
        argv += ["--watch"]
    return argv


# -- running one case -----------------------------------------------------------------------


@dataclass
class Ran:
    """What one command did."""

    code: int | str
    out: str
    err: str
    logged: str


def _bounded(signum: int, frame: Any) -> None:
    """A command that serves or watches is stopped as Ctrl-C stops it (exit 130 or 0)."""
    raise KeyboardInterrupt


def run(capsys: pytest.CaptureFixture[str], argv: list[str], stdin: str, bound: float = 3) -> Ran:
    """One command through ``main()``, stopped after ``bound`` seconds, with ``stdin`` to
    read, its logs kept."""
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    keep = Keep(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(keep)
    level = root.level
    root.setLevel(logging.DEBUG)
    before = signal.signal(signal.SIGALRM, _bounded)
    saved_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin)
    signal.setitimer(signal.ITIMER_REAL, bound)
    try:
        code: int | str = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 2
    except BaseException as exc:
        code = f"raised {type(exc).__name__}: {exc}"[:300]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)
        sys.stdin = saved_stdin
        root.removeHandler(keep)
        root.setLevel(level)
    out, err = capsys.readouterr()
    return Ran(code, out, err, "\n".join(records))


def fresh(world: World) -> None:
    """The case's store a copy of the module's (its journal files gone), and no copy made."""
    for path in world.work.iterdir():
        path.unlink()
    shutil.copyfile(world.template, world.db)
    world.db.chmod(0o600)  # as the store made it: a wider mode is tightened, with a warning


def dump(path: Path) -> list[str]:
    """Every table of the store, row by row."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(connection.iterdump())
    finally:
        connection.close()


def hostile(world: World) -> dict[str, str]:
    """The hostile values, by a name the failures are listed under."""
    return {
        "empty": "",
        "blank": " ",
        "escape": "\x1b[31m",
        "cr": "a\rb",
        "rtl": "\u202e",
        "surrogate": os.fsdecode(b"\xff"),
        # Long, and with a colon and an at sign after it: a user:password@ search must stay linear.
        "huge": "x" * 100_000 + "/:@",
        "minus-one": "-1",
        "zero": "0",
        "inf": "1e309",
        "nan": "nan",
        "2**64": str(2**64),
        "token": world.other_secret,
        "whsec": WHSEC,
        "stdin": "-",
        "header-secret": f"X-Key={world.other_secret}",
        "folder": str(world.work.parent / "a-folder"),
        "missing-folder": str(world.work.parent / "missing" / "x.sqlite3"),
        "url": URL,
    }


def secrets(world: World) -> list[str]:
    """What no output may hold: the secrets the cases give."""
    return [world.other_secret, WHSEC.removeprefix("whsec_"), STDIN_SECRET, PASSWORD]


def problems(
    world: World, command: str, swept: argparse.Action, ran: Ran, before: list[str], mtime: int
) -> list[str]:
    """How a case broke the contract; empty if it kept it."""
    found: list[str] = []
    stopped = command in RUN_UNTIL_STOPPED and ran.code == 130
    if ran.code not in (0, 1, 2) and not stopped:
        found.append(f"exit {ran.code}")
    if "Traceback" in ran.err:
        found.append("traceback")
    for secret in secrets(world):
        for where, text in (("stdout", ran.out), ("stderr", ran.err), ("log", ran.logged)):
            kept = secret == PASSWORD and (where, command, swept.dest) in STORED_AS_GIVEN
            if secret in text and not kept:
                found.append(f"a secret in {where}")
    if ran.code == 2:
        lines = ran.err.splitlines()
        if ran.out:
            found.append(f"stdout on a refusal: {ran.out[:80]!r}")
        if len(lines) != 1 or not lines[0].startswith("tokenstore") or "error:" not in ran.err:
            found.append(f"not one error line: {ran.err[:300]!r}")
        elif (swept.type or swept.choices) and not named(swept, ran.err):
            found.append(f"names no argument: {ran.err[:200]!r}")
    if (ran.code == 2 or command in READS) and dump(world.db) != before:
        found.append("the store changed")
    if command in READS and world.db.stat().st_mtime_ns != mtime:
        found.append("a read changed the file's mtime")
    return found


def named(swept: argparse.Action, err: str) -> bool:
    """Whether an error line names the argument swept: its flag, its name or its metavar."""
    names = [*swept.option_strings, swept.dest.removeprefix("late_"), str(swept.metavar)]
    names += [n.replace("_", "-") for n in names]
    return any(n in err for n in names if n and n != "None")


def sweep(
    world: World, capsys: pytest.CaptureFixture[str], command: str, swept: argparse.Action
) -> tuple[int, list[str]]:
    """Every hostile value (and the argument given twice) for one argument of one command,
    in text and in JSON; the number of cases and what failed."""
    values: dict[str, str | None] = {"twice": None}
    if takes_value(swept):
        values |= hostile(world)
    failures: list[str] = []
    cases = 0
    for index, (name, value) in enumerate(values.items()):
        for as_json in (False, True)[: 1 + index % 2]:  # JSON for every other value: time
            fresh(world)
            argv = command_line(world, command, swept, value)
            if as_json:
                argv.append("--json")
            before, mtime = world.dump, world.db.stat().st_mtime_ns
            # A server that took its values serves until stopped: a second shows it did.
            ran = run(capsys, argv, STDIN_SECRET + "\n", 1 if command in RUN_UNTIL_STOPPED else 3)
            cases += 1
            for problem in problems(world, command, swept, ran, before, mtime):
                mode = "json" if as_json else "text"
                failures.append(f"{command} {flag_or_name(swept)} {name} ({mode}): {problem}")
    return cases, failures


def flag_or_name(action: argparse.Action) -> str:
    """How a failure names the argument."""
    return flag(action) if action.option_strings else action.dest


# -- the sweep ------------------------------------------------------------------------------


def test_every_command_is_classified() -> None:
    """A new command must say whether it reads or writes, so the sweep checks the right thing."""
    assert set(COMMANDS) == READS | WRITES | SKIPPED


def _cases() -> list[Any]:
    """(command, argument dest, global?) of every argument swept."""
    cases = []
    for command, parser in COMMANDS.items():
        if command in SKIPPED:
            continue
        for action in arguments(parser, globals_=False):
            cases.append(pytest.param(command, action.dest, id=f"{command}-{action.dest}"))
        if command in GLOBAL_SWEPT:
            for action in arguments(parser, globals_=True):
                cases.append(pytest.param(command, action.dest, id=f"{command}-{action.dest}"))
    return cases


@pytest.mark.parametrize(("command", "dest"), _cases())
def test_a_hostile_value_is_refused_in_one_line_or_taken(
    world: World,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    dest: str,
) -> None:
    """Each argument of each command, given each hostile value: the contract holds."""
    for name in ("DB", "WEBHOOK_ALLOW", "APP", "LISTEN_SECRET"):
        monkeypatch.delenv(f"TOKENSTORE_{name}", raising=False)
    monkeypatch.chdir(world.work)
    parser = COMMANDS[command]
    swept = next(a for a in parser._actions if a.dest == dest)
    cases, failures = sweep(world, capsys, command, swept)
    assert cases
    assert not failures, "\n".join(failures)


def test_an_unknown_extra_argument_is_refused_by_every_command(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stray word at the end is refused, named, and nothing is written."""
    monkeypatch.chdir(world.work)
    failures = []
    for command in COMMANDS:
        if command in SKIPPED:
            continue
        fresh(world)
        before = dump(world.db)
        ran = run(capsys, [*command_line_valid(world, command), "stray-word"], "")
        if ran.code != 2 or "stray-word" not in ran.err or dump(world.db) != before:
            failures.append(f"{command}: exit {ran.code}: {ran.err[:200]!r}")
    assert not failures, "\n".join(failures)


def command_line_valid(world: World, command: str) -> list[str]:
    """The command with its required arguments, all valid."""
    parser = COMMANDS[command]
    argv = command.split() if command == "migrate" else ["--db", str(world.db), *command.split()]
    for action in arguments(parser, globals_=False):
        if not action.option_strings or action.required:
            argv += ([flag(action)] if action.option_strings else []) + [
                valid(world, command, action)
            ]
    if command in ("listen", "serve"):
        argv += ["--port", world.port]
    if command == "listen":
        argv += ["--secret", WHSEC]
    return argv
