"""``tokenstore listen`` takes its secret from the environment, a file or stdin, not only argv.

Each test runs the command in a subprocess on a free 127.0.0.1 port.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from _http import free_port, wait_listening

from tokenstore._signing import sign

COMMAND = [sys.executable, "-m", "tokenstore", "listen"]
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TOKENSTORE_LISTEN_SECRET"}
    return {**env, **extra}


def run(*args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args],
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
        env=environment(**env),
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tokenstore: error:")
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0]


@pytest.mark.parametrize("source", ["env", "file", "stdin"])
def test_listen_takes_the_secret_from_env_file_or_stdin(tmp_path: Path, source: str) -> None:
    port = free_port()
    args = ["--port", str(port)]
    env = environment()
    if source == "env":
        env["TOKENSTORE_LISTEN_SECRET"] = SECRET
    elif source == "file":
        secret_file = tmp_path / "secret"
        secret_file.write_text(SECRET + "\n")
        args += ["--secret-file", str(secret_file)]
    else:
        args += ["--secret-file", "-"]
    proc = started(args, env)
    assert proc.stdin is not None
    if source == "stdin":
        proc.stdin.write(SECRET + "\n")
        proc.stdin.flush()
    try:
        assert SECRET not in args  # nothing that ps shows carries it
        wait_listening(port, proc)
        assert signed_post(port, int(time.time())) == 204
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "msg_1 note.created verified" in out


def test_tolerance_bounds_how_old_a_webhook_timestamp_may_be() -> None:
    port = free_port()
    env = environment(TOKENSTORE_LISTEN_SECRET=SECRET)
    proc = started(["--port", str(port), "--tolerance", "10s"], env)
    try:
        wait_listening(port, proc)
        assert signed_post(port, int(time.time()) - 5) == 204
        assert signed_post(port, int(time.time()) - 60) == 401  # within the default 5 minutes
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)


def started(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """``tokenstore listen ARGS`` in a subprocess, its stdin a pipe."""
    return subprocess.Popen(
        [*COMMAND, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def signed_post(port: int, stamp: int) -> int:
    """The status a webhook signed with SECRET at ``stamp`` gets from the listener."""
    body = b'{"type":"note.created","timestamp":"2024-01-01T00:00:00.000Z","data":{}}'
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(SECRET, "msg_1", stamp, body),
    }
    reply = requests.post(f"http://127.0.0.1:{port}/", data=body, headers=headers, timeout=5)
    return reply.status_code


def test_a_secret_that_is_not_whsec_exits_2_with_one_line() -> None:
    result = run("--port", str(free_port()), "--secret", "nope")
    assert_one_line_error(result, "whsec and an underscore")
    assert "nope" not in result.stderr


def test_a_port_out_of_range_exits_2_with_one_line() -> None:
    assert_one_line_error(run("--port", "99999", "--secret", SECRET), "port", "65535")


def test_no_secret_at_all_exits_2_naming_where_to_put_it() -> None:
    assert_one_line_error(run("--port", str(free_port())), "TOKENSTORE_LISTEN_SECRET")


def test_a_missing_secret_file_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    result = run("--port", str(free_port()), "--secret-file", str(missing))
    assert_one_line_error(result, str(missing), "No such file")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_a_secret_file_that_never_ends_exits_2() -> None:
    """A secret is one short line: reading stops well before /dev/zero would fill memory."""
    result = run("--port", str(free_port()), "--secret-file", "/dev/zero")
    assert_one_line_error(result, "/dev/zero", "bytes")


def test_secret_and_secret_file_together_exit_2(tmp_path: Path) -> None:
    result = run("--secret", SECRET, "--secret-file", "-", stdin=SECRET)
    assert_one_line_error(result, "not both")


def test_a_port_in_use_exits_2_with_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("--port", str(port), TOKENSTORE_LISTEN_SECRET=SECRET)
    assert_one_line_error(result, f"port {port}")


def _announced(host: str) -> str:
    """The first line ``listen --host HOST`` writes (what it listens on), then stopped."""
    proc = subprocess.Popen(
        [*COMMAND, "--host", host, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(TOKENSTORE_LISTEN_SECRET=SECRET),
    )
    try:
        assert proc.stderr is not None
        return proc.stderr.readline()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)


@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_an_ipv6_host_is_listened_on_and_shown_in_brackets(host: str) -> None:
    """The line "listening on URL" is what scripts read the port from: it must be a URL."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("::1 cannot be bound here")
    line = _announced(host)
    assert re.match(r"listening on http://\[::1\]:\d+/ ", line), line


def test_an_ipv4_host_in_brackets_is_shown_as_a_url_takes_it() -> None:
    """Brackets hold an IPv6 address in a URL: http://[127.0.0.1]:PORT/ is no URL at all
    (urllib refuses it), though the socket listens on 127.0.0.1 once they are dropped."""
    line = _announced("[127.0.0.1]")
    assert re.match(r"listening on http://127\.0\.0\.1:\d+/ ", line), line


def start_listening(*options: str) -> tuple[subprocess.Popen[str], str]:
    """``tokenstore [options] listen`` on an OS-chosen port, its stdout a pipe as in a
    script (no PYTHONUNBUFFERED), and the URL it announced."""
    env = environment(TOKENSTORE_LISTEN_SECRET=SECRET)
    env.pop("PYTHONUNBUFFERED", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokenstore", *options, "listen", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    match = re.match(r"listening on (\S+) ", proc.stderr.readline())
    assert match, proc.communicate(timeout=20)
    return proc, match[1]


def post_signed(url: str, msg_id: str, body: bytes) -> int:
    stamp = int(time.time())
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(SECRET, msg_id, stamp, body),
    }
    return requests.post(url, data=body, headers=headers, timeout=20).status_code


def start_reading(proc: subprocess.Popen[str], count: int) -> tuple[threading.Thread, list[str]]:
    """Read ``count`` lines of stdout in a thread, while the command runs: a pipe nobody
    reads would fill and stall the command."""
    lines: list[str] = []

    def reader() -> None:
        assert proc.stdout is not None
        while len(lines) < count and (line := proc.stdout.readline()):
            lines.append(line)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    return thread, lines


def test_json_lines_arrive_whole_and_at_once_from_concurrent_events() -> None:
    """Each event is one JSON line, written in one piece and flushed: events handled at
    the same time do not interleave, and a script reading the pipe sees each at once."""
    proc, url = start_listening("--json")
    try:
        ids = [f"msg_{n}" for n in range(24)]
        bodies = {i: json.dumps({"type": "t", "data": i * 2000}).encode() for i in ids}
        reading, lines = start_reading(proc, len(ids))
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda i: post_signed(url, i, bodies[i]), ids))
        assert codes == [204] * len(ids)
        reading.join(10)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
    assert len(lines) == len(ids)
    shown = [json.loads(line) for line in lines]
    assert sorted(event["webhook_id"] for event in shown) == sorted(ids)
    assert all(event["payload"] == json.loads(bodies[event["webhook_id"]]) for event in shown)


@pytest.mark.parametrize("options", [("--json",), ()], ids=["json", "text"])
def test_a_small_event_reaches_a_pipe_while_listen_runs(options: tuple[str, ...]) -> None:
    """Written to a pipe, stdout is block-buffered: unflushed, a short line would wait
    there until listen exits, and be lost if it is killed (the README's `kill`)."""
    proc, url = start_listening(*options)
    try:
        reading, lines = start_reading(proc, 1)
        assert post_signed(url, "msg_small", b'{"type":"note.created"}') == 204
        reading.join(10)
        assert lines and "msg_small" in lines[0]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)


def test_text_output_cannot_be_forged_by_the_id_or_the_type() -> None:
    """The first line of an event names its id and type, both from the sender: a line
    break or an escape sequence in them is shown escaped, not obeyed."""
    proc, url = start_listening()
    try:
        reading, lines = start_reading(proc, 3)
        body = json.dumps({"type": "a\nmsg_forged b verified\x1b[2J"}).encode()
        assert post_signed(url, "msg_1\x1b]0;title\x07", body) == 204
        reading.join(10)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
    assert lines[0] == "msg_1\\x1b]0;title\\x07 a\\nmsg_forged b verified\\x1b[2J verified\n"
    assert lines[1:] == ["{\n", '  "type": "a\\nmsg_forged b verified\\u001b[2J"\n']
