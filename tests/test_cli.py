"""The tokenstore command, end to end, on real files and real sockets.

Most commands run in-process through ``main()`` (see ``run``); the tests whose
subject needs a process (signals, closed stdin, the interpreter's encodings,
$PYTHONPATH, the installed script, a full disk) run ``python -m tokenstore``,
and every command group is run so at least once.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import json
import os
import re
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import _db
import pytest
import requests
from _http import free_port, wait_listening
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tokenstore as tokenstore_package
from tokenstore._cli import CLI_ONLY, NOT_COMMANDS, PARAMETERS, build_parser, main
from tokenstore._credentials import generate_token
from tokenstore._inputs import MAX_SPAN
from tokenstore._postgres_url import redacted_url
from tokenstore._signing import sign
from tokenstore._sqlite_schema import SCHEMA_VERSION
from tokenstore._store import Store

# Only ``init`` creates a store; the commands under test work on one that exists.
pytestmark = pytest.mark.usefixtures("store_file")
#: On the tests that use no store of the test's own: the PostgreSQL half ran them again as they are.
ONCE = pytest.mark.sqlite_only

COMMAND = [sys.executable, "-m", "tokenstore"]


def run(
    argv: Sequence[str],
    env: Mapping[str, str],
    stdin: bytes | None = b"",
    *,
    process: bool = False,
) -> subprocess.CompletedProcess[str]:
    """One command with this environment and standard input (None: closed), as a process would.

    In-process by default, through ``main()``, with the environment, the three
    streams, sys.path, the signal handlers and the threads put back as they were: a
    process costs 0.3 s of interpreter start and imports. ``process=True``
    runs ``python -m tokenstore``, for what only a process shows.
    """
    if process:
        command = [*COMMAND, *argv]
        if stdin is None:
            command = ["sh", "-c", 'exec "$@" <&-', "sh", *command]
        done = subprocess.run(command, capture_output=True, timeout=60, input=stdin, env=env)
        return subprocess.CompletedProcess(
            command, done.returncode, done.stdout.decode(), done.stderr.decode(errors="replace")
        )
    streams = sys.stdin, sys.stdout, sys.stderr
    environ, path, threads = dict(os.environ), list(sys.path), _lasting_threads()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    # Held here until read: a wrapper dropped closes the buffer under it. Strict UTF-8, as
    # with PYTHONIOENCODING=utf-8; stderr escapes what it cannot encode, as a process's does.
    sys.stdout = stdout = _stream(b"")
    sys.stderr = stderr = _stream(b"", errors="backslashreplace")
    sys.stdin = None if stdin is None else _stream(stdin)
    os.environ.clear()
    os.environ.update(env)
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's refusals and --help
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        sys.stdin, sys.stdout, sys.stderr = streams
        os.environ.clear()
        os.environ.update(environ)
        sys.path[:] = path  # --app adds the current folder
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    assert _lasting_threads() <= threads, "the command left a thread that would hold a process"
    printed = stdout.buffer.getvalue().decode(), stderr.buffer.getvalue().decode()
    return subprocess.CompletedProcess(argv, code, *printed)


def _stream(given: bytes, errors: str = "strict") -> io.TextIOWrapper:
    return io.TextIOWrapper(io.BytesIO(given), "utf-8", errors, newline="\n", write_through=True)


def _lasting_threads() -> set[threading.Thread]:
    """The threads that keep a process from ending (daemon threads, as the reaper's, do not)."""
    return {thread for thread in threading.enumerate() if not thread.daemon}


def tokenstore(
    db: Path, *args: str, expect: int = 0, stdin: str | None = None, process: bool = False
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TOKENSTORE_DB": str(db)}
    env.pop("TOKENSTORE_WEBHOOK_ALLOW", None)
    given = b"" if stdin is None else stdin.encode()
    result = run(args, env, given, process=process)
    assert result.returncode == expect, (result.returncode, result.stdout, result.stderr)
    return result


def as_json(db: Path, *args: str, expect: int = 0) -> Any:
    return json.loads(tokenstore(db, "--json", *args, expect=expect).stdout)


class Recorder(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((dict(self.headers), body))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []
    handler = type("Handler", (Recorder,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # Polled every 0.05 s, not 0.5: shutdown() waits for the loop to look.
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()
    server.server_close()


def test_init_creates_the_file_and_reports_the_schema(db_path: Path) -> None:
    shown = as_json(db_path, "init")
    assert shown["schema_version"] == SCHEMA_VERSION
    assert _db.rows(db_path, "SELECT username FROM tokenstore_user") == [("system",)]


@ONCE
def test_db_option_wins_over_the_environment(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite3"
    tokenstore(tmp_path / "env.sqlite3", "--db", str(other), "init")
    assert other.exists() and not (tmp_path / "env.sqlite3").exists()


def test_abid_parse_shows_parts_and_views(db_path: Path) -> None:
    shown = as_json(db_path, "abid", "parse", "apt_01JAZ6BQG0D53BD22B01XRS78E")
    assert shown["ts"] == "01JAZ6BQG0" and shown["uri"] == "D53BD22B"
    assert shown["subtype"] == "01" and shown["rand"] == "XRS78E"
    assert shown["uuid"] == "0192be65-de00-6946-b688-4b007b8c9d0e"
    assert shown["typeid"] == "apt_01jaz6bqg0d53bd22b01xrs78e"
    assert shown["datetime"] == "2024-10-24T12:00:00.000Z"
    # The abid group's run in a process of its own.
    human = tokenstore(db_path, "abid", "parse", "apt_01JAZ6BQG0D53BD22B01XRS78E", process=True)
    assert "uuid" in human.stdout and "0192be65-de00-6946-b688-4b007b8c9d0e" in human.stdout


def test_abid_parse_takes_every_abid_the_original_makes_even_one_its_views_cannot_decode(
    db_path: Path,
) -> None:
    # A verbatim lowercase subtype, and a str rand holding I, O, L and U, as ArchiveBox makes.
    text = "apt_01JAZ6BQG0D53BD22BabIOLUZZ"
    shown = tokenstore(db_path, "--json", "abid", "parse", text)
    record = json.loads(shown.stdout)
    assert record["abid"] == text and (record["subtype"], record["rand"]) == ("ab", "IOLUZZ")
    assert record["datetime"] == "2024-10-24T12:00:00.000Z"  # the ts part decodes
    assert record["ulid"] is None and record["uuid"] is None
    (note,) = shown.stderr.splitlines()
    assert "'U' at position 23" in note and "Traceback" not in note
    decodable = as_json(db_path, "abid", "parse", "apt_01JAZ6BQG0D53BD22BabIOL1ZZ")
    assert decodable["abid"] == "apt_01JAZ6BQG0D53BD22BabIOL1ZZ"
    assert decodable["ulid"] == "01JAZ6BQG0D53BD22BAB1011ZZ" and decodable["uuid"]


def test_abid_parse_and_new_show_an_abid_whose_time_is_past_9999_without_its_views(
    db_path: Path,
) -> None:
    # The largest ts part parses (it fits 128 bits) but is past datetime's range.
    text = "apt_7ZZZZZZZZZD53BD22B01XRS78E"
    shown = tokenstore(db_path, "--json", "abid", "parse", text)
    record = json.loads(shown.stdout)
    assert record["abid"] == text and record["ts"] == "7ZZZZZZZZZ"
    assert record["datetime"] is None and record["ulid"] == text[4:]
    (note,) = shown.stderr.splitlines()
    assert "past the largest datetime" in note
    # 9999-12-31T23:59:59 five hours west of UTC is in the year 10000 in UTC.
    late = ("--prefix", "snp", "--uri", "x", "--ts", "9999-12-31T23:59:59-05:00")
    made = tokenstore(db_path, "--json", "abid", "new", *late)
    assert json.loads(made.stdout)["datetime"] is None
    assert "past the largest datetime" in made.stderr
    # A verbatim subtype the original copies, which no ULID view can decode.
    odd = tokenstore(
        db_path, "--json", "abid", "new", "--prefix", "snp", "--uri", "x", "--subtype", "_x"
    )
    assert json.loads(odd.stdout)["subtype"] == "_x" and "'_' at position 18" in odd.stderr


def test_abid_new_and_bad_input_exit_2(db_path: Path) -> None:
    shown = as_json(db_path, "abid", "new", "--prefix", "snp", "--uri", "https://example.com/x")
    assert shown["abid"].startswith("snp_") and shown["uri"] == "9063B8A6"
    bad = tokenstore(db_path, "abid", "parse", "apt_01JAZ6BQG0D53BD22B01XRS78", expect=2)
    assert "tokenstore: error: not an ABID:" in bad.stderr and "26" in bad.stderr
    assert bad.stdout == ""


@pytest.mark.sqlite_only
@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_a_token_whose_secret_cannot_be_printed_is_not_kept(
    db_path: Path, json_flag: list[str]
) -> None:
    """The secret is shown once: a token created, its secret lost on a full disk, and exit 2."""
    env = {**os.environ, "TOKENSTORE_DB": str(db_path)}
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [*COMMAND, *json_flag, "tokens", "create", "--name", "lost"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            env=env,
        )
    assert result.returncode == 2, result.stderr
    assert "not kept" in result.stderr and "Traceback" not in result.stderr
    assert as_json(db_path, "tokens", "list", "--all") == []


def test_users_and_tokens_round_trip(db_path: Path) -> None:
    as_json(db_path, "users", "add", "alice")
    assert [u["username"] for u in as_json(db_path, "users", "list")] == ["system", "alice"]
    dup = tokenstore(db_path, "users", "add", "alice", expect=2)
    assert "already taken" in dup.stderr

    created = tokenstore(db_path, "--json", "tokens", "create", "alice", "--name", "ci")
    assert "will not be shown again" in created.stderr
    token = json.loads(created.stdout)
    secret = token["secret"]
    assert token["token"] == "************" + secret[-4:]

    listed = as_json(db_path, "tokens", "list")
    assert [t["abid"] for t in listed] == [token["abid"]]
    assert secret not in json.dumps(listed)

    ok = as_json(db_path, "tokens", "verify", secret)
    assert ok["valid"] is True and ok["abid"] == token["abid"]
    via_stdin = tokenstore(db_path, "--json", "tokens", "verify", "-", stdin=secret + "\n")
    assert json.loads(via_stdin.stdout)["valid"] is True

    mistaken = tokenstore(db_path, "tokens", "revoke", secret, expect=2)
    assert "secret, not a token's ABID" in mistaken.stderr and secret not in mistaken.stderr
    as_json(db_path, "tokens", "revoke", token["abid"])
    refused = tokenstore(db_path, "--json", "tokens", "verify", secret, expect=1)
    assert json.loads(refused.stdout)["reason"] == "RevokedToken"
    assert secret not in refused.stdout + refused.stderr
    assert as_json(db_path, "tokens", "list") == []
    assert len(as_json(db_path, "tokens", "list", "--all")) == 1


def test_tokens_list_pages_back_from_the_newest(db_path: Path) -> None:
    """``--limit`` and ``--before`` page as ``store.tokens.list`` does."""
    made = [as_json(db_path, "tokens", "create", "--name", f"t{i}")["abid"] for i in range(5)]
    everyone = [t["abid"] for t in as_json(db_path, "tokens", "list")]
    assert sorted(everyone) == sorted(made)
    newest = as_json(db_path, "tokens", "list", "--limit", "2")
    assert [t["abid"] for t in newest] == everyone[3:]
    page = as_json(db_path, "tokens", "list", "--limit", "2", "--before", newest[0]["abid"])
    assert [t["abid"] for t in page] == everyone[1:3]
    secret = as_json(db_path, "tokens", "create")["secret"]
    mistaken = tokenstore(db_path, "tokens", "list", "--before", secret, expect=2)
    assert "not a token's ABID" in mistaken.stderr and secret not in mistaken.stderr
    zero = tokenstore(db_path, "tokens", "list", "--limit", "0", expect=2)
    assert "--limit" in zero.stderr and "Traceback" not in zero.stderr


def test_users_list_pages_back_from_the_newest(db_path: Path) -> None:
    """``--limit`` and ``--before`` page as ``store.users.list`` does."""
    for name in ("ann", "bob", "cy"):
        as_json(db_path, "users", "create", name)
    newest = as_json(db_path, "users", "list", "--limit", "2")
    assert [u["username"] for u in newest] == ["bob", "cy"]
    page = as_json(db_path, "users", "list", "--limit", "2", "--before", "bob")
    assert [u["username"] for u in page] == ["system", "ann"]
    unknown = tokenstore(db_path, "users", "list", "--before", "nobody", expect=2)
    assert "no user 'nobody'" in unknown.stderr and "Traceback" not in unknown.stderr


def test_json_shows_every_field_of_a_record_but_its_secrets(db_path: Path) -> None:
    as_json(db_path, "users", "add", "alice")
    token = as_json(db_path, "tokens", "create", "alice")
    as_json(db_path, "webhooks", "create", "h", "tokenstore.User", "https://example.com/")
    # Shown under another name: the token's hint as the redacted token, and when the
    # rotated-out secret stops signing.
    renamed = {"token_hint": "token", "previous_secret_expires": "secret_rotating_until"}
    for model, shown in (
        (tokenstore_package.User, as_json(db_path, "users", "get", "alice")),
        (tokenstore_package.APIToken, as_json(db_path, "tokens", "get", token["abid"])),
        (tokenstore_package.OutboundWebhook, as_json(db_path, "webhooks", "get", "h")),
    ):
        public = {
            renamed.get(name, field.column_name)
            for name, field in model._meta.fields.items()
            if name not in model.private_fields
        }
        assert public <= set(shown), (model.__name__, public - set(shown))


def test_token_expiry_option_and_its_errors(db_path: Path) -> None:
    as_json(db_path, "users", "add", "bob")
    token = as_json(db_path, "tokens", "create", "bob", "--expires", "2h")
    assert token["expires"] is not None
    bad = tokenstore(db_path, "tokens", "create", "bob", "--expires", "soon", expect=2)
    assert "--expires 'soon'" in bad.stderr
    naive = tokenstore(
        db_path, "tokens", "create", "bob", "--expires", "2030-01-01T00:00", expect=2
    )
    assert "timezone" in naive.stderr
    for spaced in (" 12h ", " 2099-01-01T00:00:00Z\n"):  # as pasted, or read with its line end
        assert as_json(db_path, "tokens", "create", "bob", "--expires", spaced)["expires"]
    missing = tokenstore(db_path, "tokens", "create", "nobody", expect=2)
    where = f"$TOKENSTORE_DB: {redacted_url(str(db_path))}"  # the usual cause: a wrong store
    assert f"error: {where}: no user 'nobody'" in missing.stderr
    # The longest span is the API's (100 years), not a shorter one of the command's own.
    longest = f"{MAX_SPAN.days}d"
    assert as_json(db_path, "tokens", "create", "bob", "--expires", longest)["expires"]
    too_long = tokenstore(db_path, "tokens", "create", "bob", "--expires", "36526d", expect=2)
    assert f"at most {longest}" in too_long.stderr


def test_webhooks_commands_end_to_end(
    db_path: Path, receiver: tuple[str, list[tuple[dict[str, str], bytes]]]
) -> None:
    url, received = receiver
    ref = "tokenstore.User"
    refused = tokenstore(db_path, "webhooks", "add", "users", ref, url, expect=2)
    assert "127.0.0.1 is a loopback address" in refused.stderr

    allow = ("--allow", "127.0.0.1/32")
    added = as_json(db_path, *allow, "webhooks", "add", "users", ref, url, "--header", "X-App=demo")
    secret = added["secret"]
    assert secret.startswith("whsec_")
    assert [h["name"] for h in as_json(db_path, "webhooks", "list")] == ["users"]
    shown = as_json(db_path, "webhooks", "show", "users")
    assert shown["abid"] == added["abid"] and "secret" not in shown

    pinged = as_json(db_path, *allow, "webhooks", "ping", added["abid"])
    assert pinged["status"] == "delivered" and pinged["event_type"] == "webhook.ping"
    headers, body = received[-1]
    assert json.loads(body)["type"] == "webhook.ping"
    assert headers["X-App"] == "demo"

    as_json(db_path, *allow, "users", "add", "carol")  # a change the hook reports
    assert json.loads(received[-1][1])["type"] == "user.created"
    log = as_json(db_path, "webhooks", "deliveries", "users")
    assert [d["event_type"] for d in log] == ["user.created", "webhook.ping"]

    again = as_json(db_path, *allow, "webhooks", "redeliver", log[0]["webhook_id"])
    assert again["attempts"] == 2
    assert received[-1][0]["webhook-id"] == log[0]["webhook_id"]

    disabled = as_json(db_path, "webhooks", "disable", "users", "--reason", "maintenance")
    assert disabled["enabled"] is False and disabled["disabled_reason"] == "maintenance"
    assert as_json(db_path, "webhooks", "enable", "users")["enabled"] is True

    rotated = as_json(db_path, *allow, "webhooks", "rotate-secret", "users")
    assert rotated["secret"] != secret and rotated["secret_rotating_until"] is not None
    assert as_json(db_path, *allow, "webhooks", "retry") == {"deliveries_attempted": 0}
    as_json(db_path, "webhooks", "delete", "users")
    assert as_json(db_path, "webhooks", "list") == []
    gone = tokenstore(db_path, "webhooks", "show", "users", expect=2)
    assert "no webhook" in gone.stderr


def test_dispatch_fires_events_written_by_the_sqlite3_module(
    db_path: Path, receiver: tuple[str, list[tuple[dict[str, str], bytes]]]
) -> None:
    url, received = receiver
    allow = ("--allow", "127.0.0.1/32")
    as_json(db_path, *allow, "webhooks", "add", "users", "tokenstore.User", url)
    _db.edit(
        db_path,
        "INSERT INTO tokenstore_user (username, is_superuser, created_at) "
        "VALUES ('shell', FALSE, '2024-01-01T00:00:00.000Z')",
    )
    assert received == []
    done = as_json(db_path, *allow, "dispatch")
    assert done["events_dispatched"] == 1 and done["deliveries_delivered"] == 1
    assert [json.loads(b)["data"]["fields"]["username"] for _, b in received] == ["shell"]


def test_the_options_that_mirror_the_last_parameters_of_their_calls(
    db_path: Path, receiver: tuple[str, list[tuple[dict[str, str], bytes]]]
) -> None:
    """dispatch --no-deliver, deliver-due --now, webhooks create --owner, abid new --ts/--salt."""
    url, received = receiver
    allow = ("--allow", "127.0.0.1/32")
    as_json(db_path, "users", "create", "alice")
    hook = as_json(
        db_path, *allow, "webhooks", "create", "u", "tokenstore.User", url, "--owner", "alice"
    )
    owner = as_json(db_path, "users", "get", "alice")
    assert hook["created_by_id"] == owner["id"]
    _db.edit(
        db_path,
        "INSERT INTO tokenstore_user (username, is_superuser, created_at) "
        "VALUES ('shell', FALSE, '2024-01-01T00:00:00.000Z')",
    )
    fired = as_json(db_path, *allow, "dispatch", "--no-deliver")
    assert fired["events_dispatched"] == 1 and fired["deliveries_attempted"] == 0
    assert received == []
    before = ("--now", "2020-01-01T00:00:00Z")  # the delivery was made later: not due then
    assert as_json(db_path, *allow, "webhooks", "deliver-due", *before)["deliveries_attempted"] == 0
    assert as_json(db_path, *allow, "webhooks", "deliver-due")["deliveries_attempted"] == 1
    assert [json.loads(b)["data"]["fields"]["username"] for _, b in received] == ["shell"]

    new = ("abid", "new", "--prefix", "snp", "--uri", "https://example.com/x")
    made = as_json(db_path, *new, "--ts", "2024-10-24T12:00:00Z")
    assert made["datetime"] == "2024-10-24T12:00:00.000Z" and made["uri"] == "9063B8A6"
    assert as_json(db_path, *new, "--salt", "another")["uri"] != "9063B8A6"
    naive = tokenstore(db_path, *new, "--ts", "2024-10-24T12:00:00", expect=2)
    assert "--ts" in naive.stderr and "timezone" in naive.stderr


@ONCE
def test_listen_verifies_prints_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    port = free_port()
    proc = subprocess.Popen(
        [*COMMAND, "listen", "--port", str(port), "--secret", secret],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_listening(port, proc)
        body = b'{"type":"note.created","timestamp":"2024-01-01T00:00:00.000Z","data":{}}'
        stamp = int(time.time())
        good = {
            "webhook-id": "msg_1",
            "webhook-timestamp": str(stamp),
            "webhook-signature": sign(secret, "msg_1", stamp, body),
        }
        url = f"http://127.0.0.1:{port}/"
        assert requests.post(url, data=body, headers=good, timeout=5).status_code == 204
        forged = {**good, "webhook-signature": sign(secret, "msg_1", stamp, body + b" ")}
        assert requests.post(url, data=body, headers=forged, timeout=5).status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert "msg_1 note.created verified" in out
    assert out.count("verified") == 1
    assert "stopped" in err


@ONCE
def test_demo_runs_to_completion(tmp_path: Path) -> None:
    folder = tmp_path / "the user's demo"  # the sqlite3 command it prints is quoted for a shell
    result = subprocess.run(
        [*COMMAND, "demo", "--dir", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the receiver got 7 verified messages" in result.stdout
    assert "anything from the rolled-back transaction? no" in result.stdout
    path = folder / "demo.sqlite3"
    conn = sqlite3.connect(path)
    log = conn.execute("SELECT event_type, status FROM tokenstore_delivery_log").fetchall()
    conn.close()
    assert {status for _, status in log} == {"delivered"}
    (inspect,) = [line for line in result.stdout.splitlines() if "sqlite3 " in line]
    assert shlex.split(inspect)[:2] == ["sqlite3", str(path)]
    assert shlex.split(inspect)[2].startswith("SELECT ")
    again = subprocess.run(
        [*COMMAND, "demo", "--dir", str(folder)], capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 2 and again.stderr.count("\n") == 1
    assert "holds a demo store already" in again.stderr
    # It said only to give a new folder: the user ran it again in the same one, to start over.
    assert f"delete {shlex.quote(str(path))}" in again.stderr, again.stderr
    # In the order the receiver got them: the delivery log view goes by created_at, which
    # two changes the demo makes within one millisecond share (those come in no set order).
    received = re.findall(r"receiver: msg_\w+ (\S+) \(signature verified\)", result.stdout)
    assert received == [
        "snapshot.created",
        "snapshot.updated",
        "snapshot.tags.added",
        "snapshot.tags.removed",
        "snapshot.created",
        "snapshot.created",
        "snapshot.deleted",
    ]
    assert sorted(event_type for event_type, _ in log) == sorted(received)


@ONCE
@pytest.mark.parametrize("folder", ["file:demo", "postgresql:/u:SEKRIT@127.0.0.1/db"])
def test_demo_refuses_a_folder_named_like_a_uri_and_makes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, folder: str
) -> None:
    """--dir file:demo made the folder, then the store under it was refused as a URI."""
    monkeypatch.chdir(tmp_path)
    stderr = refused(tmp_path / "store.sqlite3", "demo", "--dir", folder)
    assert "--dir" in stderr and "not a file path" in stderr and "KRIT" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.sqlite3"]


@pytest.mark.parametrize("where", ["my folder", "it's here", "a $HOME"])
def test_the_command_init_prints_to_look_inside_is_quoted_and_holds_no_password(
    db_path: Path, tmp_path: Path, where: str
) -> None:
    """`sqlite3 my folder/app.sqlite3` ran sqlite3 on 'my', and `psql URL` showed the URL
    as messages do, with '***' for its password: copied, psql took that for the password."""
    if isinstance(db_path, Path):
        db_path = tmp_path / where / "app.sqlite3"
        db_path.parent.mkdir()
    inspect = json.loads(tokenstore(db_path, "--json", "init").stdout)["inspect_with"]
    tool, location = shlex.split(inspect)
    if isinstance(db_path, Path):
        assert (tool, location) == ("sqlite3", str(db_path))
    else:
        password = urlsplit(str(db_path)).password
        assert password and password not in inspect and "***" not in inspect
        parts = urlsplit(str(db_path))
        assert (tool, location) == (
            "psql",
            urlunsplit(parts._replace(netloc=f"{parts.username}@{parts.hostname}:{parts.port}")),
        )


@ONCE
def test_demo_refuses_json_rather_than_print_its_story_as_text(tmp_path: Path) -> None:
    result = subprocess.run(
        [*COMMAND, "--json", "demo", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "--json" in result.stderr
    assert not (tmp_path / "demo").exists()  # nothing made


def test_app_models_are_registered_with_app_and_their_changes_delivered(
    db_path: Path, receiver: tuple[str, list[tuple[dict[str, str], bytes]]]
) -> None:
    url, received = receiver
    here = str(Path(__file__).parent)
    env_path = os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])
    app = ("--allow", "127.0.0.1/32", "--app", "_app_models")

    def run(*args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "TOKENSTORE_DB": str(db_path), "PYTHONPATH": env_path}
        result = subprocess.run(
            [*COMMAND, "--json", *args], capture_output=True, text=True, timeout=60, env=env
        )
        assert result.returncode == expect, result.stderr
        return result

    unknown = run("webhooks", "add", "b", "_app_models.Bookmark", url, expect=2)
    assert (
        "unknown model ref '_app_models.Bookmark'" in unknown.stderr and "--app" in unknown.stderr
    )
    run(*app, "webhooks", "add", "bookmarks", "_app_models.Bookmark", url)
    # Without --app the command cannot name the model, but can still manage the hook.
    assert json.loads(run("webhooks", "disable", "bookmarks").stdout)["enabled"] is False
    assert json.loads(run("webhooks", "enable", "bookmarks").stdout)["enabled"] is True
    run("webhooks", "rotate-secret", "bookmarks")
    _db.edit(
        db_path,
        "INSERT INTO bookmark (id, abid, created_by_id, created_at, modified_at, url) VALUES "
        "('0192c63e6a1b7d459c1e3f2a7b8c9d0e', 'bkm_01JAZ6BQG09063B8A6AEXRS78E', 1, "
        "'2024-10-24T12:00:00.000Z', '2024-10-24T12:00:00.000Z', 'https://example.com/')",
    )
    assert received == []
    run(*app, "dispatch")
    (payload,) = [json.loads(body) for _, body in received]
    assert payload["type"] == "bookmark.created"
    assert payload["data"]["pk"] == "0192c63e-6a1b-7d45-9c1e-3f2a7b8c9d0e"
    assert payload["data"]["fields"]["url"] == "https://example.com/"


@pytest.mark.parametrize(
    ("output", "sent"), [("text", signal.SIGINT), ("json", signal.SIGTERM)], ids=["text", "json"]
)
def test_dispatch_watch_delivers_shell_edits_and_stops_on_ctrl_c_or_sigterm(
    db_path: Path,
    receiver: tuple[str, list[tuple[dict[str, str], bytes]]],
    output: str,
    sent: signal.Signals,
) -> None:
    """SIGTERM, a service manager's stop, is taken between rounds as Ctrl-C is."""
    url, received = receiver
    allow = ("--allow", "127.0.0.1/32")
    as_json(db_path, *allow, "webhooks", "add", "users", "tokenstore.User", url)
    env = {**os.environ, "TOKENSTORE_DB": str(db_path)}
    json_flag = ("--json",) if output == "json" else ()
    proc = subprocess.Popen(
        [*COMMAND, *allow, "dispatch", "--watch", "--interval", "0.05s", *json_flag],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        _db.edit(
            db_path,
            "INSERT INTO tokenstore_user (username, is_superuser, created_at) "
            "VALUES ('watched', FALSE, '2024-01-01T00:00:00.000Z')",
        )
        deadline = time.monotonic() + 20
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(sent)
        out, err = proc.communicate(timeout=20)
    assert [json.loads(b)["data"]["fields"]["username"] for _, b in received] == ["watched"]
    assert proc.returncode == 0, err
    assert "stopped" in err
    if output == "text":
        assert "dispatched 1 events" in out
        return
    rounds = [json.loads(line) for line in out.splitlines()]  # one JSON object per line
    assert sum(r["events_dispatched"] for r in rounds) == 1
    assert sum(r["deliveries_delivered"] for r in rounds) == 1
    assert all(TIME.fullmatch(r["at"]) and r["events_waiting"] == {} for r in rounds)


# -- the parser against the API and the README -------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every runnable command as (its words, its parser); aliases are not repeated."""
    if parser.get_default("handler") is not None:
        yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    yield from _commands(sub, (*path, name))


def _resolve(call: str, store: Store) -> Any:
    root, *names = call.split(".")
    target: Any = {"store": store, "tokenstore": tokenstore_package}[root]
    for name in names:
        if root == "tokenstore" and not hasattr(target, name):  # a public subpackage
            target = importlib.import_module(f"{target.__name__}.{name}")
        else:
            target = getattr(target, name)
    return target


def _public_methods(store: Store) -> set[str]:
    found = set()
    for prefix, obj in (
        ("store", store),
        ("store.users", store.users),
        ("store.tokens", store.tokens),
        ("store.webhooks", store.webhooks),
    ):
        for name in dir(obj):
            if not name.startswith("_") and inspect.ismethod(getattr(obj, name)):
                found.add(f"{prefix}.{name}")
    return found


def test_every_command_names_a_public_call_and_the_readme_shows_it(store: Store) -> None:
    readme = (ROOT / "README.md").read_text()
    commands = list(_commands(build_parser()))
    assert len(commands) > 20
    for words, parser in commands:
        call = parser.get_default("call")
        if " ".join(words) in CLI_ONLY:
            assert call is None
        else:
            assert callable(_resolve(call, store)), words
        assert f"tokenstore {' '.join(words)}" in readme, words


def test_every_public_method_has_a_command_or_a_documented_reason(store: Store) -> None:
    readme = " ".join((ROOT / "README.md").read_text().split())
    calls = {parser.get_default("call") for _, parser in _commands(build_parser())}
    methods = _public_methods(store)
    assert methods - calls == set(NOT_COMMANDS)
    for left_out in NOT_COMMANDS:
        assert f"`{left_out}`" in readme, left_out


def test_every_parameter_of_a_commands_call_is_an_option_or_says_why_not(store: Store) -> None:
    """The command and the call mirror each other down to their parameters."""
    used = set()
    for words, parser in _commands(build_parser()):
        call = parser.get_default("call")
        if call is None:
            continue
        name = " ".join(words)
        dests = {action.dest.removeprefix("late_") for action in parser._actions}
        for parameter in inspect.signature(_resolve(call, store)).parameters.values():
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            if parameter.name in dests:
                continue
            spelt = PARAMETERS.get(name, {}).get(parameter.name)
            assert spelt is not None, f"{name}: {call}'s {parameter.name} has no option"
            assert spelt in dests or " " in spelt, (name, parameter.name, spelt)
            used.add((name, parameter.name))
    assert used == {(name, p) for name, ps in PARAMETERS.items() for p in ps}


@ONCE
def test_every_option_has_help_with_its_default_and_every_group_an_example() -> None:
    parser = build_parser()
    for words, command in _commands(parser):
        formatter = command._get_formatter()
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            text = formatter._get_help_string(action)
            assert text, (words, action.dest)
            required = action.required or (not action.option_strings and action.nargs is None)
            hidden = action.default is argparse.SUPPRESS  # a global option's copy
            assert required or hidden or "default" in text, (words, action.dest)
            assert "(default: None)" not in text % vars(action), (words, action.dest)
            if isinstance(action, argparse._StoreConstAction):  # a flag is off unless given
                assert "(default: True)" not in text % vars(action), (words, action.dest)
            assert not action.required or "default" not in text, (words, action.dest)
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, group in groups[0].choices.items():
        if group.get_default("handler") is None:
            assert group.epilog and "examples:" in group.epilog, name
            assert f"tokenstore {name} " in group.epilog, name


@ONCE
def test_help_says_what_commands_print_and_how_they_exit() -> None:
    parser = build_parser()
    assert "Exit status: 0" in parser.format_help()
    commands = {" ".join(words): command for words, command in _commands(parser)}
    for name in ("init", "dispatch", "migrate", "listen", "serve", "demo", "tokens create",
                 "tokens authenticate", "webhooks create", "webhooks rotate-secret",
                 "import archivebox"):  # fmt: skip
        description = commands[name].description or ""
        assert "Prints" in description or "Says" in description, name
    for name in ("tokens authenticate", "webhooks ping", "webhooks redeliver"):
        assert re.search(r"exit (0 [^,]*, )?1", commands[name].description or ""), name


# -- conventions -----------------------------------------------------------------------------


@ONCE
def test_global_options_work_after_the_command(tmp_path: Path) -> None:
    late = tmp_path / "late.sqlite3"
    tokenstore(tmp_path / "env.sqlite3", "init", "--db", str(late))
    tokenstore(tmp_path / "env.sqlite3", "users", "create", "dana", "--db", str(late))
    listed = json.loads(tokenstore(tmp_path / "env.sqlite3", "users", "list", "--json", "--db",
                                   str(late)).stdout)  # fmt: skip
    assert [u["username"] for u in listed] == ["system", "dana"]
    assert not (tmp_path / "env.sqlite3").exists()


@ONCE
def test_global_options_work_between_a_group_and_its_command(tmp_path: Path) -> None:
    late = tmp_path / "late.sqlite3"
    tokenstore(tmp_path / "env.sqlite3", "init", "--db", str(late))
    tokenstore(tmp_path / "env.sqlite3", "users", "--db", str(late), "create", "dana")
    listed = json.loads(
        tokenstore(tmp_path / "env.sqlite3", "users", "--json", "list", "--db", str(late)).stdout
    )
    assert [u["username"] for u in listed] == ["system", "dana"]
    shown = tokenstore(
        tmp_path / "env.sqlite3", "abid", "--json", "parse", "apt_01JAZ6BQG0D53BD22B01XRS78E"
    )
    assert json.loads(shown.stdout)["abid"] == "apt_01JAZ6BQG0D53BD22B01XRS78E"
    # --allow from every place adds up: before the group, after it, and after the command
    tokenstore(late, "--allow", "10.1.0.0/16", "webhooks", "--allow", "10.2.0.0/16", "allow",
               "10.3.0.0/16", "--allow", "10.4.0.0/16")  # fmt: skip
    entries = as_json(late, "webhooks", "allowlist")
    assert {e["entry"] for e in entries} == {f"10.{n}.0.0/16" for n in (1, 2, 3, 4)}
    assert not (tmp_path / "env.sqlite3").exists()


def test_a_refused_command_takes_back_only_the_entries_its_allow_added(db_path: Path) -> None:
    as_json(db_path, "webhooks", "allow", "10.1.0.0/16")
    tokenstore(db_path, "--allow", "10.1.0.0/16", "--allow", "10.2.0.0/16", "webhooks", "create",
               "h", "NoSuchModel", "http://10.2.0.1/", expect=2)  # fmt: skip
    entries = as_json(db_path, "webhooks", "allowlist")
    assert [e["entry"] for e in entries] == ["10.1.0.0/16"]


def test_old_command_names_still_work(db_path: Path) -> None:
    as_json(db_path, "users", "add", "erin")
    assert as_json(db_path, "users", "get", "erin")["username"] == "erin"
    secret = as_json(db_path, "tokens", "create", "erin")["secret"]
    assert as_json(db_path, "tokens", "verify", secret)["valid"] is True
    assert as_json(db_path, "webhooks", "retry") == {"deliveries_attempted": 0}


def test_show_is_get_for_users_and_tokens_as_for_webhooks(db_path: Path) -> None:
    as_json(db_path, "users", "add", "fay")
    assert as_json(db_path, "users", "show", "fay")["username"] == "fay"
    abid = as_json(db_path, "tokens", "create", "fay")["abid"]
    assert as_json(db_path, "tokens", "show", abid)["abid"] == abid


def test_times_print_in_the_one_stored_format(db_path: Path) -> None:
    as_json(db_path, "users", "create", "fay")
    token = as_json(db_path, "tokens", "create", "fay", "--expires", "2h")
    for key in ("created_at", "expires"):
        assert TIME.fullmatch(token[key]), (key, token[key])
    shown = as_json(db_path, "tokens", "get", token["abid"])
    assert shown["expires"] == token["expires"] and shown["created_at"] == token["created_at"]
    text = tokenstore(db_path, "tokens", "list").stdout
    assert token["expires"] in text
    assert TIME.fullmatch(as_json(db_path, "users", "get", "fay")["created_at"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("tokens", "create", "--expires=-5m"), "is negative"),
        (("tokens", "create", "--expires", "0s"), "longer than zero"),
        (("tokens", "create", "--expires", "nan"), "neither a duration"),
        (("tokens", "create", "--expires", "99999999999d"), "too long"),
        (("tokens", "create", "--expires", "1e3s"), "neither a duration"),
        (("dispatch", "--watch", "--interval", "0s"), "longer than zero"),
        (("dispatch", "--interval", "inf"), "is not a duration"),
        (("dispatch", "--watch", "--interval", "2d"), "--interval must be more than 0 and at most"),
        (("dispatch", "--interval", "5s"), "--interval applies only with --watch"),
        (("webhooks", "rotate-secret", "x", "--grace=-1h"), "is negative"),
        (("webhooks", "deliveries", "--limit", "0"), "at least 1"),
        (("tokens", "nope"), "invalid choice"),
        (("users", "list", "--bogus"), "--bogus (see tokenstore users list --help)"),
        # `--db "$DB"` with $DB unset: not a reason to use ./tokenstore.sqlite3
        (("--db", "", "init"), "argument --db: it is empty"),
        (("users", "list", "--db", ""), "argument --db: it is empty"),
    ],
)
def test_bad_values_exit_2_with_one_line(
    db_path: Path, args: tuple[str, ...], message: str
) -> None:
    result = tokenstore(db_path, *args, expect=2)
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.sqlite_only
@pytest.mark.parametrize("given", ["2030-01-01", "2030-01-01 12:30", "2030-01-01T12:30:00.5"])
def test_a_time_without_a_timezone_is_refused_with_advice_that_works(
    db_path: Path, given: str
) -> None:
    tokenstore(db_path, "init")
    stderr = tokenstore(db_path, "tokens", "create", "--expires", given, expect=2).stderr
    advice = stderr.rstrip("\n").rpartition("e.g. ")[2]
    tokenstore(db_path, "tokens", "create", "--expires", advice)  # what it says to write works
    assert as_json(db_path, "tokens", "list")[0]["expires"].startswith(given[:10])


def test_a_signing_secret_edited_by_hand_is_refused_saying_what_one_looks_like(
    db_path: Path,
) -> None:
    """The message names the form in words: a bare whsec_ would be left out of the line
    as a secret, and the line would tell the user nothing."""
    as_json(db_path, "--allow", "127.0.0.1/32", "webhooks", "create", "h", "tokenstore.User",
            "http://127.0.0.1:9/")  # fmt: skip
    _db.edit(db_path, "UPDATE tokenstore_outbound_webhook SET secret = 'whsec_!!notbase64'")
    result = tokenstore(db_path, "webhooks", "rotate-secret", "h", expect=2)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "whsec and an underscore, then a base64 key" in result.stderr, result.stderr
    assert "not shown" not in result.stderr and "notbase64" not in result.stderr


def test_a_zero_grace_ends_the_old_secret_at_once(db_path: Path) -> None:
    as_json(db_path, "--allow", "127.0.0.1/32", "webhooks", "create", "h", "tokenstore.User",
            "http://127.0.0.1:9/")  # fmt: skip
    rotated = as_json(db_path, "webhooks", "rotate-secret", "h", "--grace", "0s")
    assert TIME.fullmatch(rotated["secret_rotating_until"])
    later = as_json(db_path, "webhooks", "rotate-secret", "h", "--grace", "90s")
    assert later["secret_rotating_until"] > rotated["secret_rotating_until"]


def test_a_blocked_address_says_how_to_allow_it(
    db_path: Path, receiver: tuple[str, list[tuple[dict[str, str], bytes]]]
) -> None:
    url, received = receiver
    refused = tokenstore(db_path, "webhooks", "create", "h", "tokenstore.User",
                         "http://127.0.0.1:9/", expect=2)  # fmt: skip
    assert refused.stderr.count("\n") == 1
    assert "--allow" in refused.stderr and "TOKENSTORE_WEBHOOK_ALLOW" in refused.stderr
    # Allowed once, by the process that made the hook: every later process agrees.
    as_json(db_path, "--allow", "127.0.0.1/32", "webhooks", "create", "h", "tokenstore.User", url)
    tokenstore(db_path, "--json", "webhooks", "ping", "h")
    assert len(received) == 1
    assert as_json(db_path, "webhooks", "allowlist") == [{"entry": "127.0.0.1/32"}]
    assert as_json(db_path, "webhooks", "disallow", "127.0.0.1/32") == []
    blocked = tokenstore(db_path, "--json", "webhooks", "ping", "h", expect=1)
    assert json.loads(blocked.stdout)["last_error"].startswith("blocked:") and len(received) == 1
    assert "webhooks allow" in blocked.stderr and "TOKENSTORE_WEBHOOK_ALLOW" in blocked.stderr


@pytest.mark.sqlite_only
def test_a_bad_allow_entry_is_refused_by_a_command_that_only_reads(db_path: Path) -> None:
    """A reading command writes no entry, but a typo in one is still bad input, not ignored."""
    tokenstore(db_path, "init")
    for args in (("users", "list"), ("webhooks", "allowlist"), ("tokens", "list")):
        stderr = refused(db_path, "--allow", "not a host!", *args)
        assert "allowlist entry 'not a host!'" in stderr
        stderr = refused(db_path, *args, TOKENSTORE_WEBHOOK_ALLOW="10.0.0.0/33")
        assert "'10.0.0.0/33'" in stderr
    tokenstore(db_path, "--allow", "10.0.0.0/8", "users", "list")  # checked, not written
    assert as_json(db_path, "webhooks", "allowlist") == []


def test_a_refused_command_leaves_no_allow_entry_behind(db_path: Path) -> None:
    """``--allow`` is written for the command's sake: one refused takes its new entries back.

    An entry the file held already stays, and one given to a command that
    did its job stays too, as documented.
    """
    tokenstore(db_path, "webhooks", "allow", "10.1.0.0/16")
    refused(db_path, "--allow", "10.9.9.0/24", "--allow", "10.1.0.0/16", "users", "add", "a b")
    refused(db_path, "webhooks", "delete", "no-such-hook", TOKENSTORE_WEBHOOK_ALLOW="10.7.7.7")
    assert as_json(db_path, "webhooks", "allowlist") == [{"entry": "10.1.0.0/16"}]
    tokenstore(db_path, "--allow", "10.9.9.0/24", "users", "add", "alice")
    assert as_json(db_path, "webhooks", "allowlist") == [
        {"entry": "10.1.0.0/16"},
        {"entry": "10.9.9.0/24"},
    ]


def test_update_delivery_and_deliver_due(
    db_path: Path, receiver: tuple[str, list[tuple[dict[str, str], bytes]]]
) -> None:
    url, received = receiver
    allow = ("--allow", "127.0.0.1/32")
    as_json(db_path, *allow, "webhooks", "create", "h", "tokenstore.User", "http://127.0.0.1:9/")
    changes = ("--endpoint", url, "--signal", "create", "--header", "X-A=1", "--no-enabled")
    changed = as_json(db_path, *allow, "webhooks", "update", "h", *changes)
    assert changed["endpoint"] == url and changed["signal"] == "CREATE"
    assert changed["headers"] == ["X-A"] and changed["enabled"] is False
    assert [h["name"] for h in as_json(db_path, "webhooks", "list", "--disabled")] == ["h"]
    assert as_json(db_path, "webhooks", "update", "h", "--enabled")["enabled"] is True
    nothing = tokenstore(db_path, "webhooks", "update", "h", expect=2)
    assert "at least one field" in nothing.stderr
    as_json(db_path, *allow, "users", "create", "gus")
    (log,) = as_json(db_path, "webhooks", "deliveries")
    one = as_json(db_path, "webhooks", "delivery", log["webhook_id"])
    assert one["status"] == "delivered" and json.loads(one["payload"])["type"] == "user.created"
    assert received[-1][0]["X-A"] == "1"
    assert as_json(db_path, *allow, "webhooks", "deliver-due") == {"deliveries_attempted": 0}


@pytest.mark.sqlite_only  # PostgreSQL enforces the foreign key: no delivery outlives its hook
def test_a_delivery_whose_hook_is_gone_is_shown_without_a_traceback(db_path: Path) -> None:
    """Deleted in the sqlite3 shell (no foreign keys), or by another process between reads."""
    allow = ("--allow", "127.0.0.1/32")
    as_json(db_path, *allow, "webhooks", "create", "h", "tokenstore.User", "http://127.0.0.1:9/")
    as_json(db_path, *allow, "users", "create", "gus")
    _db.edit(db_path, "DELETE FROM tokenstore_outbound_webhook")
    (log,) = as_json(db_path, "webhooks", "deliveries")
    assert log["hook"] == "(deleted)" and log["event_type"] == "user.created"
    one = as_json(db_path, "webhooks", "delivery", log["webhook_id"])
    assert one["hook"] == "(deleted)" and json.loads(one["payload"])["type"] == "user.created"


def test_dispatch_names_events_waiting_for_a_model_it_lacks(
    db_path: Path, receiver: tuple[str, list[tuple[dict[str, str], bytes]]]
) -> None:
    url, _ = receiver
    here = str(Path(__file__).parent)
    env = {**os.environ, "TOKENSTORE_DB": str(db_path), "PYTHONPATH": here}
    app = ("--allow", "127.0.0.1/32", "--app", "_app_models")
    subprocess.run([*COMMAND, *app, "webhooks", "create", "b", "_app_models.Bookmark", url],
                   env=env, check=True, capture_output=True, timeout=60)  # fmt: skip
    _db.edit(
        db_path,
        "INSERT INTO bookmark (id, abid, created_by_id, created_at, modified_at, url) VALUES "
        "('0192c63e6a1b7d459c1e3f2a7b8c9d0e', 'bkm_01JAZ6BQG09063B8A6AEXRS78E', 1, "
        "'2024-10-24T12:00:00.000Z', '2024-10-24T12:00:00.000Z', 'https://example.com/')",
    )
    waiting = subprocess.run([*COMMAND, "dispatch", "--json"], env=env, capture_output=True,
                             text=True, timeout=60)  # fmt: skip
    assert json.loads(waiting.stdout)["events_waiting"] == {"bookmark": 1}
    assert "--app" in waiting.stderr and "bookmark: 1" in waiting.stderr
    done = subprocess.run([*COMMAND, *app, "dispatch", "--json"], env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    report = json.loads(done.stdout)
    assert report["events_dispatched"] == 1 and report["deliveries_delivered"] == 1
    assert report["events_waiting"] == {} and done.stderr == ""


@ONCE
def test_a_store_the_environment_named_that_cannot_be_opened_is_said_to_come_from_it(
    tmp_path: Path,
) -> None:
    """The path came from $TOKENSTORE_DB, set long ago in a shell profile: the error named
    only the path, and the user looked for it in the command they had just typed."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    missing = folder / "missing.sqlite3"
    cases = [
        (str(missing), f"$TOKENSTORE_DB: no store at {missing}"),
        (str(folder), f"$TOKENSTORE_DB: {folder} is a directory"),
        ("postgres:/u:SEKRIT@127.0.0.1:1/db", "$TOKENSTORE_DB: the store path is a mistyped"),
        ("postgresql://u:SEKRIT@127.0.0.1:1/db", "$TOKENSTORE_DB: cannot connect to"),
    ]
    for location, said in cases:
        env = {**os.environ, "TOKENSTORE_DB": location}
        for argv in (["users", "list"], ["--db", location, "users", "list"]):
            done = run(argv, env)
            assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
            assert "KRIT" not in done.stderr
            # A --db given on the command line is what the error is about.
            assert (said in done.stderr) == (argv[0] != "--db"), done.stderr
            assert said.partition("$TOKENSTORE_DB: ")[2] in done.stderr
    assert list(folder.iterdir()) == []


def test_a_record_not_found_in_the_store_the_environment_named_says_it_came_from_it(
    db_path: Path,
) -> None:
    """'no user ...' names the store searched, a wrong one being the usual cause: named by
    $TOKENSTORE_DB, it was not said where that store had come from."""
    env = {**os.environ, "TOKENSTORE_DB": str(db_path)}
    where = redacted_url(str(db_path)) if "://" in str(db_path) else str(db_path)
    done = run(["users", "get", "nobody"], env)
    assert done.returncode == 2
    assert done.stderr == f"tokenstore: error: $TOKENSTORE_DB: {where}: no user 'nobody'\n"
    given = run(["--db", str(db_path), "users", "get", "nobody"], env)
    assert given.stderr == f"tokenstore: error: {where}: no user 'nobody'\n"


@ONCE
def test_a_missing_store_is_an_error_and_only_init_creates_one(tmp_path: Path) -> None:
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    missing = folder / "typo.sqlite3"
    for command in (("tokens", "list"), ("users", "create", "x"), ("webhooks", "deliveries")):
        failed = tokenstore(missing, *command, expect=2)
        assert failed.stderr.strip() == (
            f"tokenstore: error: $TOKENSTORE_DB: no store at {missing} (run `tokenstore init`)"
        )
        assert list(folder.iterdir()) == []  # no file, no -wal, no -shm
    # Nor is another program's SQLite file made into a store by a mistyped --db.
    other = folder / "other.sqlite3"
    with contextlib.closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.commit()
    other.chmod(0o600)
    before = other.read_bytes()
    refused = tokenstore(other, "users", "create", "x", expect=2)
    assert "holds no tokenstore" in refused.stderr and other.read_bytes() == before
    tokenstore(missing, "init")
    assert missing.exists()
    # With no --db and no $TOKENSTORE_DB, the message says it looked at the default.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSTORE_")}
    default = subprocess.run([*COMMAND, "users", "list"], cwd=folder, env=env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert default.returncode == 2 and default.stderr.count("\n") == 1
    assert "no store at ./tokenstore.sqlite3, the default" in default.stderr
    assert "--db PATH" in default.stderr and "TOKENSTORE_DB" in default.stderr
    assert "tokenstore init" in default.stderr
    assert not (folder / "tokenstore.sqlite3").exists()


def test_read_commands_send_nothing_take_no_lock_and_are_fast(db_path: Path) -> None:
    """A due delivery to an endpoint that never answers: reading the store must not try it."""
    hanging = socket.create_server(("127.0.0.1", 0))  # accepts into its backlog, never answers
    try:
        url = f"http://127.0.0.1:{hanging.getsockname()[1]}/hook"
        as_json(db_path, "--allow", "127.0.0.1/32", "webhooks", "create", "h",
                "tokenstore.User", url, "--signal", "CREATE")  # fmt: skip
        with tokenstore_package.open(db_path, delivery_deadline=0.2, sync_budget=0.0) as store:
            store.users.create("due")  # its delivery waits, due now, for the retry path
        made = as_json(db_path, "tokens", "create", "due")
        (due,) = as_json(db_path, "webhooks", "deliveries")
        writer = _db.Raw(db_path)  # the write lock is taken: a writer would wait
        if writer.postgres:
            tables = "user, api_token, outbound_webhook, webhook_delivery, listener, change_event"
            names = ", ".join(f"tokenstore_{t}" for t in tables.split(", "))
            writer.execute(f"LOCK TABLE {names} IN EXCLUSIVE MODE")
        else:
            writer.execute("BEGIN IMMEDIATE")
        try:
            start = time.monotonic()
            for command in (
                ("tokens", "list"),
                ("tokens", "get", made["abid"]),
                ("users", "list"),
                ("users", "get", "due"),
                ("webhooks", "list"),
                ("webhooks", "get", "h"),
                ("webhooks", "deliveries"),
                ("webhooks", "delivery", due["webhook_id"]),
                ("webhooks", "allowlist"),
            ):
                tokenstore(db_path, *command)
            tokenstore(db_path, "tokens", "authenticate", "-", stdin=made["secret"])
            elapsed = time.monotonic() - start
        finally:
            writer.rollback()
            writer.close()
        # In-process, in well under a second: any one waiting on the lock (a busy_timeout of
        # 5 s at least) or on the receiver would pass the bound alone.
        assert elapsed < 5
        (delivery,) = as_json(db_path, "webhooks", "deliveries")
        assert delivery["status"] == "pending" and delivery["attempts"] == 0
        assert as_json(db_path, "tokens", "get", made["abid"])["last_used_at"] is None
    finally:
        hanging.close()


def refused(
    db: Path, *args: str, stdin: bytes | None = b"", process: bool = False, **env: str
) -> str:
    """Run a command that must fail on its input: exit 2, one line on stderr, no traceback.

    ``stdin=None`` runs it with its standard input closed.
    """
    done = run(args, {**os.environ, "TOKENSTORE_DB": str(db), **env}, stdin, process=process)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("tokenstore"), done.stderr
    assert "error:" in done.stderr
    return done.stderr


@pytest.mark.sqlite_only
def test_a_usage_error_does_not_repeat_a_secret_or_a_urls_password(db_path: Path) -> None:
    """argparse quotes what it could not place: a token given where none belongs, or a
    PostgreSQL URL without its --db, went to stderr whole (a CI log keeps it)."""
    tokenstore(db_path, "init")
    token = generate_token()
    signing = "whsec_hqRiqLyjxhXJ5jxfH9FsA/P9+LcRKNBf"
    url = "postgresql://app:SEKRIT@127.0.0.1:1/db"
    for args in (
        ("tokens", "list", token),  # unrecognized arguments
        ("users", "list", f"{signing}\n"),
        ("users", "list", url),
        ("webhooks", "deliveries", "--status", token),  # an invalid choice, quoted
        ("--db", url, "webhooks", "deliveries", "--limit", "x"),
    ):
        stderr = refused(db_path, *args)
        for secret in (token[4:30], signing[6:30], "SEKRIT"):
            assert secret not in stderr, stderr
    assert "unrecognized arguments: postgresql://app:***@127.0.0.1:1/db" in refused(
        db_path, "users", "list", url
    )


@pytest.mark.sqlite_only
def test_a_usage_error_hides_the_password_of_an_argument_that_is_no_well_formed_url(
    db_path: Path,
) -> None:
    """Only a word holding '://' was redacted: a mistyped URL, a key=value string, or a
    password holding a blank (argparse's message splits it into words) was shown."""
    tokenstore(db_path, "init")
    for typed in (
        "postgres:/app:SEKRIT@127.0.0.1:1/db",
        "postgresql:app:SEKRIT@127.0.0.1/db",
        "app:SEKRIT@127.0.0.1",
        "host=127.0.0.1 password=SEKRIT",
        "postgresql://app:SE KRIT@127.0.0.1:1/db",
        "postgresql://app@127.0.0.1:1/db?password=SE%20KRIT",
        # Longer than any location: not searched (which took minutes), cut coarsely instead.
        "x" * 3000 + " app:SEKRIT@127.0.0.1",
        "postgres:/app:SEKRIT@127.0.0.1 " + "y" * 3000,
    ):
        for args in (("users", "list", typed), ("webhooks", "deliveries", "--status", typed)):
            stderr = refused(db_path, *args)
            assert "KRIT" not in stderr and "SE " not in stderr, stderr
            assert "127.0.0.1" in stderr  # the rest is shown: the user sees which argument


@pytest.mark.sqlite_only
def test_a_header_option_without_a_value_is_refused_without_repeating_it(db_path: Path) -> None:
    stderr = refused(db_path, "--allow", "127.0.0.1/32", "webhooks", "create", "h",
                     "tokenstore.User", "http://127.0.0.1:9/",
                     "--header", "Authorization: Bearer SEKRIT")  # fmt: skip
    assert "Name=value" in stderr and "SEKRIT" not in stderr


@pytest.mark.sqlite_only
@pytest.mark.parametrize(
    "args",
    [
        ("listen", "--secret-file", "no\nsuch\rfile"),
        ("import", "archivebox", "no\nsuch"),
        ("users", "get", "a\u2028b"),
        ("users", "list", "--no\nsuch-option"),
    ],
)
def test_line_breaks_in_a_value_do_not_break_the_error_line(
    db_path: Path, args: tuple[str, ...]
) -> None:
    assert "\\n" in refused(db_path, *args).replace("\\r", "\\n").replace("\\u2028", "\\n")


@pytest.mark.sqlite_only
@pytest.mark.parametrize(
    "args",
    [
        ("tokens", "authenticate", "-"),
        ("webhooks", "create", "h", "tokenstore.User", "http://127.0.0.1:9/", "--auth-token", "-"),
        ("webhooks", "create", "h", "tokenstore.User", "http://127.0.0.1:9/", "--header", "K=-"),
        ("listen", "--secret", "-"),
        ("listen", "--secret-file", "-"),
        ("import", "archivebox", ".", "--cipher-key", "-"),
    ],
)
def test_secrets_read_from_a_closed_or_undecodable_stdin_are_refused(
    db_path: Path, args: tuple[str, ...]
) -> None:
    # The first runs in a process: its fd 0 closed, a pipe, the interpreter's own decoding.
    # The rest run in-process, on the same code, with sys.stdin as the process would have it.
    process = args == ("tokens", "authenticate", "-")

    def said(stdin: bytes | None, **env: str) -> str:
        return refused(db_path, *args, stdin=stdin, process=process, **env)

    assert "stdin is closed" in said(None)
    assert "stdin ended before" in said(b"")  # not an empty secret
    # `echo "$SECRET" | ...` with $SECRET unset: a blank line is no secret either.
    assert "stdin is blank" in said(b"\n")
    assert "stdin is blank" in said(b" \t\r\n")
    assert "over 65536 characters" in said(b"x" * 70000)
    undecodable = said(b"\xff\xfe\n", PYTHONIOENCODING="utf-8")
    assert "not UTF-8" in undecodable


@pytest.mark.sqlite_only
@pytest.mark.parametrize(
    "args",
    [("users", "list", "--limit"), ("tokens", "list", "--limit"), ("serve", "--port")],
)
def test_a_number_of_thousands_of_digits_is_refused_in_a_short_line(
    db_path: Path, args: tuple[str, ...]
) -> None:
    """Past Python's 4,300 digits int() refuses the text, and argparse quoted all of it."""
    stderr = tokenstore(db_path, *args, "9" * 5000, expect=2).stderr
    assert stderr.count("\n") == 1 and len(stderr) < 1200, stderr[:300]
    assert "characters left out" in stderr and "_positive_int" not in stderr


@pytest.mark.sqlite_only
@pytest.mark.parametrize(
    ("sent", "code", "said"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
    ids=["ctrl-c", "sigterm"],
)
def test_ctrl_c_or_sigterm_while_a_secret_is_awaited_on_stdin_ends_in_one_line(
    db_path: Path, sent: signal.Signals, code: int, said: str
) -> None:
    """SIGTERM (a service manager's stop) killed the command outright: no rollback, no close
    (token uses unwritten), a migrate's copy left beside its destination."""
    env = {**os.environ, "TOKENSTORE_DB": str(db_path)}
    proc = subprocess.Popen(
        [*COMMAND, "tokens", "authenticate", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        # Interrupted only once it waits on the pipe, not while Python is still starting.
        deadline = time.monotonic() + 30
        while "pipe" not in Path(f"/proc/{proc.pid}/wchan").read_text():
            assert time.monotonic() < deadline and proc.poll() is None, "never read stdin"
            time.sleep(0.05)
        proc.send_signal(sent)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    assert err == f"tokenstore: {said}\n" and out == ""


@pytest.mark.sqlite_only
@pytest.mark.parametrize("second", ["X-Key=2", "x-key=2", "X-KEY=-"])
def test_a_header_named_twice_is_refused_rather_than_one_value_dropped(
    db_path: Path, second: str
) -> None:
    tokenstore(db_path, "init")
    create = ("--allow", "127.0.0.1/32", "webhooks", "create", "h", "tokenstore.User",
              "http://127.0.0.1:9/", "--header", "X-Key=SEKRIT1", "--header", second)  # fmt: skip
    stderr = refused(db_path, *create, stdin=b"SEKRIT2\n")
    assert "-key' is given twice" in stderr.lower() or "-key' is named twice" in stderr.lower()
    assert "SEKRIT" not in stderr
    with tokenstore_package.open(db_path) as store:
        assert store.webhooks.list() == []


def test_a_header_value_is_read_from_stdin_and_kept_out_of_argv(db_path: Path) -> None:
    tokenstore(db_path, "init")
    args = ("--allow", "127.0.0.1/32", "webhooks", "create", "h", "tokenstore.User")
    hook = "http://127.0.0.1:9/", "--header", "X-Key=-", "--header", "X-Team=ops"
    tokenstore(db_path, *args, *hook, "--auth-token", "-", stdin="k3y-value\nBearer t0ken\n")
    with tokenstore_package.open(db_path) as store:
        (made,) = store.webhooks.list()
        assert made.headers == {"X-Key": "k3y-value", "X-Team": "ops"}
        assert made.auth_token == "Bearer t0ken"
    tokenstore(db_path, "webhooks", "update", "h", "--header", "X-Key=-", stdin="n3w\n")
    with tokenstore_package.open(db_path) as store:
        assert store.webhooks.get("h").headers == {"X-Key": "n3w"}


@pytest.mark.sqlite_only
@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def (\n", "SyntaxError"),
        ("raise RuntimeError('boom')\n", "RuntimeError: boom"),
        ("import sys\nsys.exit(3)\n", "SystemExit: 3"),
    ],
)
def test_an_app_module_that_fails_as_it_is_imported_is_named(
    db_path: Path, tmp_path: Path, source: str, message: str
) -> None:
    (tmp_path / "broken_app.py").write_text(source)
    where = {"PYTHONPATH": str(tmp_path)}  # read as the interpreter starts
    stderr = refused(db_path, "--app", "broken_app", "users", "list", process=True, **where)
    assert "--app 'broken_app' failed as it was imported" in stderr and message in stderr
    assert "--app '.'" in refused(db_path, "--app", ".", "users", "list")


@pytest.mark.sqlite_only
def test_an_app_given_as_a_file_path_names_the_module_meant(
    db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--app app/models.py: 'No module named 'app/models'', and ./app/models.py a
    TypeError about relative imports; the user had to know what a module name is."""
    project = tmp_path / "project"
    (project / "app").mkdir(parents=True)
    (project / "app" / "__init__.py").write_text("")
    (project / "app" / "models.py").write_text("")
    (project / "loose").mkdir()
    (project / "loose" / "tasks.py").write_text("")
    monkeypatch.chdir(project)
    for typed, meant in [
        ("app/models.py", "did you mean --app app.models? (run here)"),
        ("./app/models.py", "did you mean --app app.models? (run here)"),
        (str(project / "app" / "models.py"), "did you mean --app app.models? (run here)"),
        ("app/", "did you mean --app app? (run here)"),
        ("loose/tasks.py", "did you mean --app loose.tasks? (run here)"),
        ("models.py", "did you mean --app models? (run here)"),
    ]:
        stderr = refused(db_path, "--app", typed, "users", "list")
        assert "--app takes a module's name, not a file's path" in stderr, stderr
        assert meant in stderr, stderr
    monkeypatch.chdir(project / "loose")
    stderr = refused(db_path, "--app", "../app/models.py", "users", "list")
    assert f"did you mean --app app.models? (run in {project})" in stderr, stderr


@pytest.mark.sqlite_only
def test_a_scope_list_in_one_scope_option_is_told_to_give_one_per_option(db_path: Path) -> None:
    """--scope read,write was 'not valid: use 1-100 characters from ...', as if ',' were
    only an unlucky character."""
    tokenstore(db_path, "users", "create", "alice")
    for typed in ("read,write", "read, write", "read write"):
        stderr = refused(db_path, "tokens", "create", "alice", "--scope", typed)
        assert "scopes are given one each" in stderr, stderr
        assert "--scope read --scope write" in stderr, stderr
    assert "one each" not in refused(db_path, "tokens", "create", "alice", "--scope", "a b!")


@pytest.mark.sqlite_only
def test_a_username_given_for_a_tokens_abid_is_told_what_an_abid_is(db_path: Path) -> None:
    """`tokens get alice` said 'expected 26 chars for the suffix, got 5'."""
    tokenstore(db_path, "users", "create", "alice")
    for command in ("get", "revoke"):
        stderr = refused(db_path, "tokens", command, "alice")
        assert "not an API token ABID" in stderr
        assert "apt_ and 26 letters and digits" in stderr, stderr
        assert "tokenstore tokens list --user NAME" in stderr, stderr


@pytest.mark.sqlite_only
def test_the_installed_script_finds_an_app_module_in_the_current_folder(
    db_path: Path, tmp_path: Path
) -> None:
    """``tokenstore --app myapp`` beside myapp.py, as ``python -m tokenstore`` does.

    The installed script starts with its own folder first on sys.path, not the
    current one, so only ``python -m tokenstore`` found such a module; the README
    calls the two the same command and shows ``--app myapp``.
    """
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "myapp.py").write_text(
        "import peewee\nfrom tokenstore import ABIDModel\n\n\n"
        "class Note(ABIDModel):\n"
        "    abid_prefix = 'not_'\n"
        "    abid_uri_src = 'body'\n"
        "    body = peewee.TextField()\n"
    )
    env = {**os.environ, "TOKENSTORE_DB": str(db_path)}
    env.pop("PYTHONPATH", None)
    script = str(Path(sys.executable).parent / "tokenstore")
    for name, command in (("script", [script]), ("module", COMMAND)):
        result = subprocess.run(
            [*command, "--app", "myapp", "webhooks", "create", name, "myapp.Note",
             f"https://example.com/{name}"],
            cwd=folder, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, (name, result.stderr)
    # The folder comes after the installed modules: a file there named like one imported
    # later (requests, at the first webhook sent) does not stand in for it.
    (folder / "requests.py").write_text("raise SystemExit('the folder shadowed requests')\n")
    allow = ("--allow", "127.0.0.1/32")
    subprocess.run(
        [script, *allow, "--app", "myapp", "webhooks", "create", "dead", "myapp.Note",
         "http://127.0.0.1:9/"],
        cwd=folder, env=env, capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    ping = subprocess.run(
        [script, *allow, "--app", "myapp", "webhooks", "ping", "dead"],
        cwd=folder, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ping.returncode == 1 and "shadowed" not in ping.stderr, ping.stderr
    # Python's -P (PYTHONSAFEPATH) asks for no current folder on sys.path: kept.
    safe = subprocess.run(
        [script, "--app", "myapp", "users", "list"], cwd=folder, capture_output=True,
        text=True, timeout=60, env={**env, "PYTHONSAFEPATH": "1"},
    )  # fmt: skip
    assert safe.returncode == 2 and "No module named 'myapp'" in safe.stderr


@pytest.mark.sqlite_only
def test_an_app_module_that_opens_a_store_as_it_is_imported_is_refused(
    db_path: Path, tmp_path: Path
) -> None:
    """A module-level ``store = tokenstore.open(...)`` rebinds every model to that store.

    The command then read and wrote the module's file, not the one --db names:
    ``users create`` added the user there and exited 0, ``users list`` listed it.
    """
    folder = tmp_path / "project"
    folder.mkdir()
    theirs = folder / "app.sqlite3"
    (folder / "opening_app.py").write_text(
        f"import tokenstore\n\nstore = tokenstore.open({str(theirs)!r})\n"
    )
    for command in (("users", "create", "zz"), ("users", "list")):
        # In a process: the module's store rebinds the models of the process that imports it.
        where = {"PYTHONPATH": str(folder)}
        stderr = refused(db_path, "--app", "opening_app", *command, process=True, **where)
        assert "--app 'opening_app' opened a store as it was imported" in stderr, stderr
    for path in (db_path, theirs):
        with tokenstore_package.open(path, read_only=True) as store:
            assert [u.username for u in store.users.list()] == ["system"]


@pytest.mark.sqlite_only
def test_a_secret_given_as_the_app_module_is_not_repeated(db_path: Path) -> None:
    """Pasted into --app (or $TOKENSTORE_APP) by mistake, it was quoted twice in the
    message, once by the import's own error: stderr goes to CI logs."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    for stderr in (
        refused(db_path, "--app", secret, "dispatch"),
        refused(db_path, "webhooks", "list", TOKENSTORE_APP=secret),
    ):
        assert "MfKQ9r8" not in stderr
        assert "app" in stderr.lower() and "not shown" in stderr


@pytest.mark.sqlite_only
def test_an_argument_that_is_not_utf8_is_said_to_be_so(db_path: Path) -> None:
    """Python holds an argument's byte that is no UTF-8 as a lone surrogate (U+DC85 for
    0x85): the message says what the shell was given, not Python's name for it."""
    stderr = refused(db_path, "tokens", "create", "--name", "a\udc85", process=True)
    assert "token name is not UTF-8 (byte 0x85 at position 1)" in stderr
    stderr = refused(db_path, "tokens", "create", "--name", "a\ud800")  # from Python only
    assert "token name is not valid Unicode (a lone surrogate at position 1)" in stderr


@pytest.mark.sqlite_only
def test_a_module_named_by_the_environment_is_said_to_come_from_it(db_path: Path) -> None:
    """$TOKENSTORE_APP may have been set long ago: the message names it, not an --app the
    command line does not hold, as for $TOKENSTORE_DB."""
    stderr = refused(db_path, "webhooks", "list", TOKENSTORE_APP="no_such_module_here")
    assert "error: $TOKENSTORE_APP 'no_such_module_here' cannot be imported" in stderr
    stderr = refused(db_path, "--app", "no_such_module_here", "webhooks", "list")
    assert "error: --app 'no_such_module_here' cannot be imported" in stderr
    stderr = refused(db_path, "webhooks", "list", TOKENSTORE_APP="whsec_MfKQ9r8GKYqrTwjUPD8ILP")
    assert "$TOKENSTORE_APP names no module" in stderr


@pytest.mark.sqlite_only
def test_odd_paths_and_addresses_for_the_tools_are_refused(db_path: Path, tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert str(a_file) in refused(db_path, "demo", "--dir", str(a_file))
    assert "File name too long" in refused(db_path, "import", "archivebox", "x" * 5000)
    assert "File name too long" in refused(db_path, "migrate", "x" * 5000, str(tmp_path / "d"))
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    assert "host name" in refused(db_path, "listen", "--host", "\u200b", "--secret", secret)
    assert "port" in refused(db_path, "serve", "--port", "99999")
    assert "host name" in refused(db_path, "serve", "--host", "\u200b", "--public")
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        port = str(taken.getsockname()[1])
        assert "cannot listen on 127.0.0.1 port" in refused(db_path, "serve", "--port", port)
    finally:
        taken.close()


@pytest.mark.sqlite_only
def test_names_stdout_cannot_encode_are_shown_escaped(db_path: Path) -> None:
    """A file name that is not UTF-8 (or a terminal that is not) must not end a command."""
    store = os.fsencode(db_path.parent) + b"/\xff.sqlite3"
    done = subprocess.run(
        [*COMMAND, "--db", os.fsdecode(store), "init"],
        capture_output=True,
        timeout=60,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    assert done.returncode == 0, done.stderr
    assert b"\\udcff.sqlite3" in done.stdout and os.path.exists(store)
    done = subprocess.run(
        [*COMMAND, "--db", str(db_path), "tokens", "create", "--name", "ren\u00e9e"],
        capture_output=True,
        timeout=60,
        env={**os.environ, "PYTHONIOENCODING": "ascii"},
    )
    assert done.returncode == 0, done.stderr
    assert b"ren\\xe9e" in done.stdout


@pytest.mark.sqlite_only
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_output_to_a_full_disk_is_one_line_of_error(db_path: Path) -> None:
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [*COMMAND, "--db", str(db_path), "users", "list"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "No space left on device" in done.stderr


@pytest.mark.sqlite_only
def test_text_output_shows_control_characters_escaped(db_path: Path) -> None:
    """A name may hold a line break or a terminal escape; a table row stays one plain line."""
    tokenstore(db_path, "tokens", "create", "--name", "a\nb\x1b[31mc")
    lines = tokenstore(db_path, "tokens", "list").stdout.splitlines()
    assert len(lines) == 2 and "\x1b" not in lines[1]
    assert "a\\nb\\x1b[31mc" in lines[1]
    assert as_json(db_path, "tokens", "list")[0]["name"] == "a\nb\x1b[31mc"


@pytest.mark.sqlite_only
def test_text_output_shows_c1_controls_and_bidi_overrides_escaped(db_path: Path) -> None:
    """An 8-bit CSI (U+009B) is an escape to some terminals, and a bidi override or isolate
    reorders what follows it on the line: a name could make a listing read otherwise."""
    name = "ci\x9b31m \u202eevil\u202c \u2066x\u2069 \u200fy"
    tokenstore(db_path, "tokens", "create", "--name", name)
    row = tokenstore(db_path, "tokens", "list").stdout.splitlines()[1]
    assert not set(row) & set("\x9b\u202e\u202c\u2066\u2069\u200f")
    assert "ci\\x9b31m \\u202eevil\\u202c \\u2066x\\u2069 \\u200fy" in row
    assert as_json(db_path, "tokens", "list")[0]["name"] == name


@pytest.mark.sqlite_only
def test_text_output_shows_tabs_and_invisible_characters_escaped(db_path: Path) -> None:
    """A tab in a name moves the columns after it, which could read as a column of its own;
    a zero-width space, word joiner or byte-order mark makes two names look the same."""
    name = "ci\tFAKE \u200bx\u2060y\ufeffz"
    tokenstore(db_path, "tokens", "create", "--name", name)
    header, row = tokenstore(db_path, "tokens", "list").stdout.splitlines()
    assert not set(row) & set("\t\u200b\u2060\ufeff")
    assert "ci\\tFAKE \\u200bx\\u2060y\\ufeffz" in row
    assert row.index("ci\\t") == header.index("name")  # the next columns as aligned
    assert row.index("*") == header.index("token")
    assert as_json(db_path, "tokens", "list")[0]["name"] == name


@pytest.mark.sqlite_only
def test_text_tables_align_wide_and_combining_characters_as_a_terminal_shows_them(
    db_path: Path,
) -> None:
    """A CJK character takes two columns on a terminal, a combining accent none: padding by
    characters shifted every later column of such a row."""
    import unicodedata

    def width(text: str) -> int:
        return sum(
            0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
            for c in text
        )

    tokenstore(db_path, "users", "create", "李雷")
    for user, name in (("李雷", "ci"), ("system", "李雷的"), ("system", "jose\u0301")):
        tokenstore(db_path, "tokens", "create", user, "--name", name)
    lines = tokenstore(db_path, "tokens", "list").stdout.splitlines()
    header, rows = lines[0], lines[1:]
    column = header.index("token")
    assert len(rows) == 3
    for row in rows:  # the token starts where its heading does, as the terminal shows the row
        assert width(row[: row.index("*")]) == column, row


# -- odd arguments anywhere ------------------------------------------------------------------

#: Commands with one slot (None) for an odd value: every group, the options that take
#: numbers, durations, names, URLs and ABIDs. The long-running ones (watch, listen, serve,
#: demo) are left out: they would wait for Ctrl-C.
SLOTTED = [
    ("users", "add", None),
    ("users", "show", None),
    ("tokens", "create", "alice", "--name", None),
    ("tokens", "create", "alice", "--expires", None),
    ("tokens", "create", "alice", "--scope", None),
    ("tokens", "show", None),
    ("tokens", "revoke", None),
    ("tokens", "list", "--user", None),
    ("tokens", "verify", None),
    ("webhooks", "create", None, "tokenstore.User", "http://127.0.0.1:9/"),
    ("webhooks", "create", "x", None, "http://127.0.0.1:9/"),
    ("webhooks", "create", "x", "tokenstore.User", None),
    ("webhooks", "create", "x", "tokenstore.User", "https://example.com/", "--header", None),
    ("webhooks", "update", "h", "--endpoint", None),
    ("webhooks", "rotate-secret", "h", "--grace", None),
    ("webhooks", "deliveries", "--limit", None),
    ("webhooks", "deliveries", "--before", None),
    ("webhooks", "delivery", None),
    ("webhooks", "allow", None),
    ("webhooks", "prune", "--older-than", None),
    ("webhooks", "redeliver", None),
    ("dispatch", "--interval", None),
    ("abid", "parse", None),
    ("abid", "new", "--prefix", None, "--uri", "x"),
    ("import", "archivebox", None),
    ("--db", None, "users", "list"),
]

ODD = st.one_of(
    st.binary(max_size=12).map(os.fsdecode),  # what argv holds for bytes that are no UTF-8
    st.text(max_size=12),
    st.integers().map(str),
    st.integers(min_value=10**18).map(lambda n: f"-{n}"),
    st.floats().map(str),
    st.sampled_from(["nan", "-inf", "1e400", "99999999999d", "-5m", "0", "-0", "٣", "1_0"]),
).filter(lambda text: "\x00" not in text and text != "-")  # argv holds no NUL; - reads stdin


@pytest.mark.sqlite_only
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(slotted=st.sampled_from(SLOTTED), value=ODD)
def test_no_command_ends_in_a_traceback_whatever_its_arguments(
    db_path: Path, slotted: tuple[str | None, ...], value: str
) -> None:
    """0 done, 1 a negative answer, 2 bad input in one line: never a traceback.

    In-process, in the store's folder (relative paths land there): an exception out
    of main() fails the example as a traceback would. The next test runs odd values
    through a process, where the interpreter decodes argv and flushes what is printed.
    """
    with tokenstore_package.open(db_path, webhook_allow=["127.0.0.1/32"]) as store:
        if not store.webhooks.list():  # the user and hook the commands name
            store.users.create("alice")
            store.webhooks.create("h", "tokenstore.User", "http://127.0.0.1:9/")
    args = [value if part is None else part for part in slotted]
    if args[0] != "--db":
        args = ["--db", str(db_path), *args]
    with contextlib.chdir(db_path.parent):
        done = run(args, {**os.environ, "PYTHONIOENCODING": "utf-8"})
    _ends_without_a_traceback(args, done)


@pytest.mark.sqlite_only
def test_a_process_given_odd_arguments_ends_without_a_traceback(db_path: Path) -> None:
    """An odd value as the property test's, in a process: bytes in argv that are no UTF-8,
    decoded by the interpreter, then quoted in the one line that refuses them."""
    args = ["--db", str(db_path), "users", "add", os.fsdecode(b"\xff\n\xfe")]
    done = run(args, {**os.environ, "PYTHONIOENCODING": "utf-8"}, process=True)
    _ends_without_a_traceback(args, done)
    assert done.returncode == 2 and "'\\udcff\\n\\udcfe'" in done.stderr, done.stderr


def _ends_without_a_traceback(args: list[str], done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode in (0, 1, 2), (args, done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, (args, done.stderr)
    if done.returncode == 2:
        assert done.stderr.count("\n") == 1, (args, done.stderr)
        assert done.stderr.startswith("tokenstore"), (args, done.stderr)
