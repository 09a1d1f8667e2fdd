"""Hostile values on the command line, run in-process through ``main()`` (fast).

Each refusal is exit 2 and one line on stderr that names the option, with no
traceback and nothing on stdout. tests/test_cli.py runs the command end to end.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import tokenstore
from tokenstore._cli import main


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An existing SQLite store, and an environment that names none of the options."""
    for name in ("TOKENSTORE_DB", "TOKENSTORE_WEBHOOK_ALLOW", "TOKENSTORE_APP"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("TOKENSTORE_LISTEN_SECRET", raising=False)
    path = tmp_path / "store.sqlite3"
    tokenstore.open(path).close()
    return str(path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The exit status, stdout and stderr of one command run by ``main()``."""
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's refusals and --help
        code = exc.code if isinstance(exc.code, int) else 2
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The one line a command refusing its input says: exit 2, nothing on stdout."""
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, ""), (code, out, err)
    assert err.count("\n") == 1 and err.startswith("tokenstore") and "error:" in err, err
    assert "Traceback" not in err
    return err


# -- the global options -----------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--allow", "--app"])
@pytest.mark.parametrize("where", ["before", "after"])
def test_an_empty_allow_or_app_is_refused_not_dropped(
    db: str, capsys: pytest.CaptureFixture[str], option: str, where: str
) -> None:
    """`--allow "$HOST"` with $HOST unset: the entry meant is missing, not to be ignored."""
    given = (option, "")
    command = ("webhooks", "allowlist")
    argv = (*given, *command) if where == "before" else (*command, *given)
    err = refused(capsys, "--db", db, *argv)
    assert f"argument {option}: it is empty" in err
