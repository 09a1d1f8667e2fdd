"""The code style and type checks, run as tests so CI enforces them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "command",
    [
        ("ruff", "check", "tokenstore", "tests", "bench"),
        ("ruff", "format", "--check", "tokenstore", "tests", "bench"),
        ("mypy",),
    ],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_clean(command: tuple[str, ...]) -> None:
    result = run(*command)
    assert result.returncode == 0, result.stdout + result.stderr


def test_requests_loads_only_when_something_is_sent(tmp_path: Path) -> None:
    """Opening a store, issuing and checking tokens, writing records: no requests yet."""
    code = (
        "import sys, tokenstore\n"
        "store = tokenstore.open(sys.argv[1])\n"
        "token, secret = store.tokens.create(store.users.create('alice'))\n"
        "store.tokens.authenticate(secret)\n"
        "store.dispatch()\n"
        "print('requests' in sys.modules, 'urllib3' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "store.sqlite3")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.split() == ["False", "False"]
