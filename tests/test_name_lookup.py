"""A hook's host name is looked up within the attempt's deadline, however slow the resolver.

The system resolver cannot be stopped once asked, and the one a hook's name
sends it to is a third party. The tests run a process in namespaces of its
own (user, mount, network) where /etc/resolv.conf names a server on
127.0.0.1 that reads every query and never answers: the real resolver, the
real getaddrinfo, a name server that has gone quiet.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from _http import Receiver

import tokenstore
from tokenstore import Store, _lookup

_NAMESPACES = ["unshare", "--user", "--map-root-user", "--mount", "--net"]


def _namespaces_usable() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    try:
        probe = subprocess.run(
            [*_NAMESPACES, "ip", "link", "set", "lo", "up"], capture_output=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


# Each query is asked twice, 5 s apart: unbounded, one lookup holds its caller 10 s or more.
_RESOLV_CONF = "nameserver 127.0.0.1\noptions timeout:5 attempts:2\n"
_HOSTS = "127.0.0.1 localhost\n127.0.0.1 ok.hook.example\n"

_APP = textwrap.dedent(
    """
    import http.server, json, socket, sys, threading, time
    import peewee, tokenstore
    from tokenstore import ABIDModel

    quiet = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    quiet.bind(("127.0.0.1", 53))  # the name server resolv.conf names: it never answers
    swallow = lambda: [quiet.recvfrom(512) for _ in iter(int, 1)]
    threading.Thread(target=swallow, daemon=True).start()

    received = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    # ok.hook.example is in /etc/hosts: the resolver answers it without asking the name server.
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()

    class Item(ABIDModel):
        abid_prefix = "itm_"

    s = tokenstore.open(
        sys.argv[1],
        webhook_allow=["hook.example", "ok.hook.example"],
        delivery_deadline=1.0,
        sync_budget=1.5,
    )
    s.register(Item)
    hooks = [s.webhooks.create(f"h{i}", Item, f"http://{i}.hook.example/") for i in range(3)]
    start = time.monotonic()
    Item.create()
    save = time.monotonic() - start
    start = time.monotonic()
    pings = [s.webhooks.ping(hooks[0]) for _ in range(3)]
    ping = (time.monotonic() - start) / 3
    errors = [d.last_error for d in s.webhooks.deliveries() if d.event_type == "item.created"]
    lookups = sum(t.name == "tokenstore-name-lookup" for t in threading.enumerate())
    from tokenstore import _lookup
    crowd = []
    for i in range(_lookup.MAX_WAITING + 2):  # as many names again, each given up at once
        try:
            _lookup.getaddrinfo(f"{i}.crowd.example", 80, 0.01)
        except (socket.gaierror, _lookup.ResolverBusy) as exc:
            crowd.append(str(exc))
    crowded = sum(t.name == "tokenstore-name-lookup" for t in threading.enumerate())
    # A hook whose name the resolver knows at once, while the names above still wait.
    ok = s.webhooks.create("ok", Item, f"http://ok.hook.example:{receiver.server_port}/")
    Item.create()
    ok_ping = s.webhooks.ping(ok)
    ok = s.webhooks.get("ok")
    held = [d for d in s.webhooks.deliveries(hook=ok)]
    print(json.dumps({
        "save": save,
        "ping": ping,
        "lookups": lookups,
        "errors": errors,
        "ping_errors": sorted({d.last_error for d in pings}),
        "crowd": crowd,
        "crowded": crowded,
        "held": sorted(
            [d.event_type, d.status, d.attempts, d.last_error, d.next_attempt_at is not None]
            for d in held
        ),
        "ping_status": ok_ping.status,
        "ok_hook": [ok.enabled, ok.failure_count, ok.failing_since is None],
        "received": len(received),
    }))
    """
)


@pytest.fixture(scope="module")
def quiet_resolver_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not _namespaces_usable():
        pytest.skip("needs unshare and ip, and user namespaces this user may create")
    folder = tmp_path_factory.mktemp("dns")
    (folder / "resolv.conf").write_text(_RESOLV_CONF)
    (folder / "hosts").write_text(_HOSTS)
    (folder / "app.py").write_text(_APP)
    script = (
        'ip link set lo up && mount --bind "$1/resolv.conf" /etc/resolv.conf && '
        'mount --bind "$1/hosts" /etc/hosts && '
        'exec "$2" "$1/app.py" "$1/store.sqlite3"'
    )
    result = subprocess.run(
        [*_NAMESPACES, "sh", "-c", script, "sh", str(folder), sys.executable],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 0, result.stderr
    outcome: dict[str, Any] = json.loads(result.stdout)
    return outcome


def test_a_save_waits_one_deadline_for_a_resolver_that_never_answers(
    quiet_resolver_run: dict[str, Any],
) -> None:
    """Three hooks, three names: the commit's budget, not three resolver timeouts."""
    assert quiet_resolver_run["save"] < 1.5 + 0.5
    errors = sorted(quiet_resolver_run["errors"])
    assert errors[:2] == ["", "timed out: the attempt ran past its deadline of 1 s"]  # third: later
    assert re.fullmatch(
        r"timed out: the attempt ran past the 0\.\d+ s left of the writing thread's "
        r"sync_budget, short of its deadline of 1 s",
        errors[2],
    )


def test_each_attempt_at_a_quiet_name_costs_at_most_its_deadline(
    quiet_resolver_run: dict[str, Any],
) -> None:
    assert quiet_resolver_run["ping"] < 1.0 + 0.5
    assert quiet_resolver_run["ping_errors"] == [
        "timed out: the attempt ran past its deadline of 1 s"
    ]


def test_lookups_left_waiting_on_the_resolver_are_few(quiet_resolver_run: dict[str, Any]) -> None:
    """Attempts at one name share its lookup; one lookup per name is still waiting, no more."""
    assert 1 <= quiet_resolver_run["lookups"] <= 3


def test_names_waiting_on_the_resolver_are_bounded(quiet_resolver_run: dict[str, Any]) -> None:
    """Past eight names the resolver has yet to answer, a lookup fails at once, starting none."""
    assert quiet_resolver_run["crowded"] == 8
    crowd = quiet_resolver_run["crowd"]
    assert len(crowd) == 10
    assert set(crowd[-4:]) == {"the name resolver has yet to answer 8 earlier lookups"}
    assert "[Errno -3] the name resolver did not answer within 0.01 s" in crowd


def test_a_send_this_process_holds_back_is_no_failure_of_its_receiver(
    quiet_resolver_run: dict[str, Any],
) -> None:
    """Too many names waiting on the resolver is this process's limit, not the hook's fault.

    A hook whose name resolves at once, refused only because eight other names
    are still waiting, is not sent to; the delivery counts no attempt and no
    failure of its hook (which would end in disabling a healthy receiver), and
    is due again shortly.
    """
    refusal = "not sent: the name resolver has yet to answer 8 earlier lookups"
    assert quiet_resolver_run["received"] == 0
    assert quiet_resolver_run["held"] == [
        ["item.created", "pending", 0, refusal, True],
        ["webhook.ping", "pending", 0, refusal, True],
    ]
    assert quiet_resolver_run["ping_status"] == "pending"
    assert quiet_resolver_run["ok_hook"] == [True, 0, True]


def test_a_name_the_resolver_cannot_even_encode_raises_as_getaddrinfo_does() -> None:
    """Not every refusal is an OSError: a label past 63 characters fails IDNA encoding.

    The lookup thread must hand that to the caller too, not die with it (a
    traceback on stderr, and an empty answer taken for "no addresses").
    """
    name = "a" * 70 + ".example"
    with pytest.raises(UnicodeError) as direct:
        socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
    unraised: list[threading.ExceptHookArgs] = []
    previous, threading.excepthook = threading.excepthook, unraised.append
    try:
        with pytest.raises(UnicodeError) as bounded:
            _lookup.getaddrinfo(name, 80, 5.0)
    finally:
        threading.excepthook = previous
    assert str(bounded.value) == str(direct.value)
    assert unraised == []


def test_a_send_held_back_keeps_its_delivery_and_its_hooks_record(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both backends: a held-back send counts no attempt and no failure, and goes out later.

    Eight names stand in as still waiting on the resolver (lookups set up, never
    started); the hook's own name, localhost, would resolve at once.
    """
    receiver = Receiver()
    try:
        hook = store.webhooks.create(
            "local", tokenstore.User, f"http://localhost:{receiver.port}/hook"
        )
        for i in range(_lookup.MAX_WAITING):
            key = (f"{i}.waiting.example", 80)
            monkeypatch.setitem(_lookup._waiting, key, _lookup._Lookup(key))
        held = store.webhooks.ping(hook)
        assert (held.status, held.attempts, receiver.hits) == ("pending", 0, [])
        assert held.last_error == "not sent: the name resolver has yet to answer 8 earlier lookups"
        assert held.next_attempt_at is not None
        assert 4 <= (held.next_attempt_at - held.created_at).total_seconds() <= 6
        again = store.webhooks.get("local")
        assert (again.failure_count, again.failing_since, again.last_failure) == (0, None, None)
        assert again.enabled
        monkeypatch.undo()  # the names are answered
        assert store.webhooks.deliver_due(now=held.next_attempt_at) == 1
        sent = store.webhooks.delivery(held.abid)
        assert (sent.status, sent.attempts, len(receiver.hits)) == ("delivered", 1, 1)
    finally:
        receiver.close()
