"""Hostile values on the command line, run in-process through ``main()`` (fast).

Each refusal is exit 2 and one line on stderr that names the option, with no
traceback and nothing on stdout. tests/test_cli.py runs the command end to end.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import _http
import pytest

import tokenstore
from tokenstore._cli import main

Capsys = pytest.CaptureFixture[str]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the module: the commands here refuse their input, and write nothing."""
    path = tmp_path_factory.mktemp("cli") / "store.sqlite3"
    tokenstore.open(path).close()
    return str(path)


@pytest.fixture
def db(store_path: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The module's store, and an environment that gives none of the options."""
    for name in ("DB", "WEBHOOK_ALLOW", "APP", "LISTEN_SECRET"):
        monkeypatch.delenv(f"TOKENSTORE_{name}", raising=False)
    return store_path


def run(capsys: Capsys, *argv: str) -> tuple[int, str, str]:
    """The exit status, stdout and stderr of one command run by ``main()``."""
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's refusals and --help
        code = exc.code if isinstance(exc.code, int) else 2
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys: Capsys, *argv: str) -> str:
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
    db: str, capsys: Capsys, option: str, where: str
) -> None:
    """`--allow "$HOST"` with $HOST unset: the entry meant is missing, not to be ignored."""
    given = (option, "")
    command = ("webhooks", "allowlist")
    argv = (*given, *command) if where == "before" else (*command, *given)
    err = refused(capsys, "--db", db, *argv)
    assert f"argument {option}: it is empty" in err


# -- listen and serve ---------------------------------------------------------------------------

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def taken_port() -> Iterator[str]:
    """A port taken on 127.0.0.1 and ::1: a command that got as far as listening fails
    there at once, instead of serving until Ctrl-C, so a test of its refusals cannot hang."""
    with _http.taken_port() as port:
        yield str(port)


@pytest.mark.parametrize("host", ["[::1", "::1]", "[[::1]]", "[::1]]", "[127.0.0.1", "a[b]"])
@pytest.mark.parametrize("command", [("listen", "--secret", SECRET), ("serve",)])
def test_a_host_with_a_stray_bracket_is_refused_not_read_without_it(
    db: str, capsys: Capsys, taken_port: str, command: tuple[str, ...], host: str
) -> None:
    """`[::1` listened on ::1: a typo was taken for an address the user did not write."""
    err = refused(capsys, "--db", db, *command, "--port", taken_port, "--host", host)
    assert "--host" in err and repr(host) in err and "bracket" in err


# -- numbers and durations ----------------------------------------------------------------------


# Three of the scripts with digits of their own: Arabic-Indic, fullwidth, Bengali.
@pytest.mark.parametrize("digit", ["\u0663", "\uff13", "\u09e9"])
@pytest.mark.parametrize(
    "argv",
    [
        ("tokens", "create", "--expires", "{}d"),
        ("webhooks", "rotate-secret", "h", "--grace", "{}s"),
        ("webhooks", "prune", "--older-than", "{}d"),
        ("dispatch", "--interval", "{}s"),
        ("listen", "--secret", SECRET, "--tolerance", "{}m"),
    ],
)
def test_a_duration_takes_ascii_digits_only(
    db: str, capsys: Capsys, taken_port: str, argv: tuple[str, ...], digit: str
) -> None:
    """int() and \\d read other scripts' digits: a duration is written in ASCII digits."""
    given = [part.format(digit) for part in argv]
    if given[0] == "listen":
        given += ["--port", taken_port]
    option = argv[-2]
    err = refused(capsys, "--db", db, *given)
    assert option in err and repr(given[len(argv) - 1]) in err and "a duration" in err


@pytest.mark.parametrize("key", [b"\x00\x01", b"k" * 23])
@pytest.mark.parametrize("source", ["--secret", "--secret-file", "$TOKENSTORE_LISTEN_SECRET"])
def test_listen_refuses_a_key_shorter_than_standard_webhooks_allows_and_hides_it(
    db: str,
    capsys: Capsys,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    taken_port: str,
    source: str,
    key: bytes,
) -> None:
    """A 2-byte key was taken, and then no webhook verified: the spec's keys have 24-64 bytes."""
    secret = "whsec_" + base64.b64encode(key).decode()
    options = ["--port", taken_port]
    if source == "--secret":
        options += ["--secret", secret]
    elif source == "--secret-file":
        (tmp_path / "secret").write_text(secret)
        options += ["--secret-file", str(tmp_path / "secret")]
    else:
        monkeypatch.setenv("TOKENSTORE_LISTEN_SECRET", secret)
    err = refused(capsys, "--db", db, "listen", *options)
    assert source in err and f"{len(key)} bytes" in err and "at least 24" in err
    assert secret.removeprefix("whsec_") not in err


# -- migrate ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("option", "value"), [("--allow", "10.0.0.1"), ("--app", "tokenstore")])
def test_migrate_refuses_the_options_it_would_ignore(
    db: str, capsys: Capsys, tmp_path: Path, option: str, value: str
) -> None:
    """migrate copies the source's allowlist as it is: an --allow it took was dropped unsaid."""
    copy = tmp_path / "copy.sqlite3"
    err = refused(capsys, option, value, "migrate", db, str(copy))
    assert f"migrate takes no {option}" in err
    assert not copy.exists()


# -- Ctrl-C -------------------------------------------------------------------------------------

INTERRUPTED_IN_ARGPARSE = """
import argparse, os, signal, sys
from tokenstore._cli import main
parse = argparse.ArgumentParser.parse_known_args
def interrupted(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, landing as the command line is read
    return parse(*args, **kwargs)
argparse.ArgumentParser.parse_known_args = interrupted
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_while_the_command_line_is_read_exits_130_in_one_line(db: str) -> None:
    """The interrupt was handled only around the command's own work: argparse's got a traceback."""
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_IN_ARGPARSE, "--db", db, "users", "list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stderr, done.stdout) == (130, "tokenstore: interrupted\n", "")


@pytest.mark.parametrize(
    ("argv", "what"),
    [
        (("migrate", "", "{copy}"), "source"),
        (("migrate", "{db}", ""), "destination"),
        (("import", "archivebox", ""), "path"),
    ],
)
def test_an_empty_path_argument_is_refused_not_read_as_the_current_folder(
    db: str, capsys: Capsys, tmp_path: Path, argv: tuple[str, ...], what: str
) -> None:
    """`migrate "$OLD" new` with $OLD unset said '. is a directory'; import looked in ./."""
    given = [part.format(db=db, copy=tmp_path / "copy.sqlite3") for part in argv]
    err = refused(capsys, "--db", db, *given)
    assert f"{what} is empty" in err
    assert not (tmp_path / "copy.sqlite3").exists()


def _digits(number: str, zero: str) -> str:
    """``number`` written in the script whose digit zero is ``zero``."""
    return "".join(chr(ord(zero) + int(digit)) for digit in number)


@pytest.mark.parametrize("zero", ["\u0660", "\uff10"])  # Arabic-Indic, fullwidth
@pytest.mark.parametrize(
    "argv",
    [
        ("webhooks", "deliveries", "--limit", "3"),
        ("webhooks", "deliver-due", "--limit", "3"),
        ("users", "list", "--limit", "3"),
        ("tokens", "list", "--limit", "3"),
        ("listen", "--secret", SECRET, "--port", "{port}"),
        ("serve", "--port", "{port}"),
    ],
)
def test_a_number_takes_ascii_digits_only(
    db: str, capsys: Capsys, taken_port: str, argv: tuple[str, ...], zero: str
) -> None:
    """`serve --port` with fullwidth 8 and 0 listened on port 80: int() reads any digits."""
    given = [*argv[:-1], _digits(argv[-1].format(port=taken_port), zero)]
    err = refused(capsys, "--db", db, *given)
    assert f"argument {argv[-2]}: {given[-1]!r} is not" in err


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (("--secret", ""), "--secret is empty"),
        (("--secret-file", "/dev/null"), "--secret-file /dev/null is empty"),
        (("--secret-file", ""), "--secret-file is empty"),
    ],
)
def test_listen_says_which_secret_it_was_given_is_empty(
    db: str, capsys: Capsys, options: tuple[str, ...], said: str
) -> None:
    """It asked for --secret-file PATH when one was given, and empty: `--secret-file "$F"`."""
    assert said in refused(capsys, "--db", db, "listen", *options)


def test_demo_refuses_an_empty_dir_rather_than_make_a_folder_of_its_own(
    db: str, capsys: Capsys
) -> None:
    """`demo --dir "$DIR"` with $DIR unset ran in a new temporary folder, as without --dir."""
    assert "--dir is empty" in refused(capsys, "demo", "--dir", "")


def test_a_map_given_twice_for_one_model_is_refused_rather_than_one_dropped(
    db: str, capsys: Capsys, tmp_path: Path
) -> None:
    """The second --map for a model replaced the first unsaid, as --header twice no longer does."""
    maps = ("--map", "core.models.Tag=app.Tag", "--map", " core.models.Tag = app.Label")
    err = refused(capsys, "--db", db, "import", "archivebox", str(tmp_path), *maps)
    assert "--map 'core.models.Tag' is given twice" in err


@pytest.mark.parametrize(
    ("option", "argv"),
    [
        ("--scope", ("tokens", "authenticate", "x", "--scope", "admin", "--scope", "read")),
        ("--name", ("tokens", "create", "--name", "ci", "--name", "deploy")),
        ("--expires", ("tokens", "create", "--expires", "1d", "--expires", "30d")),
        ("--user", ("tokens", "list", "--user", "alice", "--user", "system")),
        ("--prefix", ("abid", "new", "--prefix", "apt", "--uri", "1", "--prefix", "tag")),
        ("--db", ("--db", "a.sqlite3", "--db", "b.sqlite3", "tokens", "list")),
    ],
)
def test_an_option_of_one_value_given_twice_is_refused_rather_than_the_first_dropped(
    db: str, capsys: Capsys, option: str, argv: tuple[str, ...]
) -> None:
    """`tokens authenticate --scope admin --scope read` checked read alone and exited 0."""
    err = refused(capsys, *(argv if option == "--db" else ("--db", db, *argv)))
    assert f"argument {option}: given twice" in err


@pytest.mark.parametrize("path", ["a\x00b", "\ud800"])
def test_a_secret_file_name_the_system_cannot_take_is_refused(
    db: str, capsys: Capsys, path: str
) -> None:
    """main(argv) from Python may hold what argv cannot: open() raised ValueError on them."""
    assert "--secret-file" in refused(capsys, "--db", db, "listen", "--secret-file", path)
