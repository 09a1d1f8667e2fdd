"""The README runs: its Python and shell blocks, as written, offline, and again.

And the docs name every public name: docs/api.md lists each, the errors with
when they are raised.

A newcomer copies the blocks in order into one terminal, so the shell blocks
run as one script, in a temporary folder, with this virtualenv's ``bin`` on
PATH. The Python blocks run twice in a row; the shell script runs once and must
leave nothing where a second run would find it (about 15 s a run, of its
commands' process starts). The two set-up lines at the top are not run here (they build the very
virtualenv running this test); they must be what CI runs, word for word.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tokenstore
from tokenstore import DEFAULT_ABID_URI_SALT

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = [
    (lang, body)
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```$", README, flags=re.MULTILINE | re.DOTALL)
]
SETUP = [body for lang, body in BLOCKS[:2]]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSTORE_")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def test_readme_opens_with_its_name_a_line_and_the_two_commands() -> None:
    lines = README.splitlines()
    assert lines[0] == "# tokenstore" and lines[1] == ""
    assert lines[2] and not lines[2].startswith(("#", "`")) and lines[3] == ""
    assert [lang for lang, _ in BLOCKS[:2]] == ["sh", "sh"]
    demo, tests = (body.strip() for body in SETUP)
    assert "\n" not in demo and demo.endswith("tokenstore demo")
    assert "\n" not in tests and tests.endswith("python -m pytest -q")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci[-1] == tests  # CI runs exactly the README's test command


def test_python_blocks_run_twice_in_a_row(tmp_path: Path) -> None:
    python = [body for lang, body in BLOCKS if lang == "python"]
    assert python
    outputs = []
    for n, body in enumerate(python):
        (tmp_path / f"example{n}.py").write_text(body)
        for _ in range(2):
            result = subprocess.run(
                [sys.executable, f"example{n}.py"],
                cwd=tmp_path,
                env=_env(),
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert result.returncode == 0, result.stdout + result.stderr
        outputs.append(result.stdout)
    assert "['snapshot.created']" in outputs[0]
    assert "[('snapshot.tags.added', 2), ('snapshot.tags.removed', 1)]" in outputs[1]


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="the README uses the sqlite3 shell")
def test_shell_blocks_run_and_leave_nothing_a_second_run_would_find(tmp_path: Path) -> None:
    """Run twice in a row, the second run started where the first one had: in a new
    shell (the exports gone), the folder empty, a new folder from mktemp. So one run is
    checked, and that it wrote nowhere but in its own new folder: not in the current
    folder, nor $HOME, nor beside that folder in $TMPDIR."""
    script = "\n".join(body for lang, body in BLOCKS[2:] if lang == "sh")
    assert "tokenstore" in script and script.startswith("dir=$(mktemp -d)")
    here, home, temp = (tmp_path / name for name in ("here", "home", "temp"))
    for folder in (here, home, temp):
        folder.mkdir()
    # Its own process group, so a failed run leaves no background receiver behind.
    shell = subprocess.Popen(
        ["bash", "-e", "-u", "-o", "pipefail", "-c", script],
        cwd=here,
        env={**_env(), "HOME": str(home), "TMPDIR": str(temp)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = shell.communicate(timeout=240)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGTERM)
        shell.wait(timeout=30)
    assert shell.returncode == 0, out[-4000:] + err[-4000:]
    assert "webhook.ping verified" in out
    assert "user.created verified" in out
    assert "Traceback" not in err
    (made,) = temp.iterdir()  # the script's own folder, from mktemp -d
    assert (made / "app.sqlite3").is_file()
    assert list(here.iterdir()) == [] and list(home.iterdir()) == []


def test_the_api_page_names_every_public_name_and_error() -> None:
    api = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert "(docs/api.md)" in README
    for name in tokenstore.__all__:
        assert f"`{name}" in api, name
    errors = [
        obj
        for obj in vars(tokenstore).values()
        if isinstance(obj, type) and issubclass(obj, tokenstore.TokenstoreError)
    ]
    assert len(errors) > 10
    for error in errors:  # each one in the list of errors, with when it is raised
        assert re.search(rf"^ *- `{error.__name__}`", api, flags=re.MULTILINE), error


def _signature(name: str, call: Any) -> str:
    """``name(a, b=1, *, c=None)``: a call as docs/api.md writes it, without annotations."""
    parameters = []
    for parameter in inspect.signature(call).parameters.values():
        if parameter.name == "self":
            continue
        default = parameter.default
        if default is not parameter.empty:  # the salt by its public name, as help() cannot
            shown = "DEFAULT_ABID_URI_SALT" if default is DEFAULT_ABID_URI_SALT else repr(default)
            default = type("Shown", (), {"__repr__": lambda self, text=shown: text})()
        parameters.append(parameter.replace(annotation=parameter.empty, default=default))
    bare = inspect.Signature(parameters)
    return f"{name}{bare}"


def _documented_calls() -> Iterator[tuple[str, Any]]:
    """Every public call a caller makes, under the name docs/api.md gives it."""
    for name in tokenstore.__all__:
        obj = getattr(tokenstore, name)
        if inspect.isfunction(obj) or obj is tokenstore.TokenAuthMiddleware:
            yield name, obj
    yield "ABID.parse", tokenstore.ABID.parse
    yield "stop", tokenstore.RetryThread.stop
    for owner, prefix in (
        (tokenstore.Store, "store."),
        (tokenstore.Users, ""),
        (tokenstore.Tokens, ""),
        (tokenstore.Webhooks, ""),
    ):
        for name, value in vars(owner).items():
            if not name.startswith("_") and inspect.isfunction(value):
                yield f"{prefix}{name}", value


def test_the_api_page_gives_every_call_its_real_signature() -> None:
    """docs/api.md is taken at its word: each call with its parameters, defaults and their
    order as the code has them, so a parameter added, renamed or given another default
    shows up here until the page says so."""
    api = " ".join((ROOT / "docs" / "api.md").read_text(encoding="utf-8").split())
    calls = list(_documented_calls())
    assert len(calls) > 40
    missing = [_signature(name, call) for name, call in calls]
    missing = [text for text in missing if f"`{text}`" not in api]
    assert missing == []


def test_every_public_name_and_its_methods_say_what_they_are_for() -> None:
    undocumented = []
    for name in tokenstore.__all__:
        obj = getattr(tokenstore, name)
        if isinstance(obj, str):  # a constant: docs/api.md says what it is
            continue
        if not inspect.getdoc(obj):
            undocumented.append(name)
        if inspect.isclass(obj):
            for attribute, value in vars(obj).items():
                function = getattr(value, "__func__", value)
                if (
                    attribute.startswith("_")
                    or inspect.isclass(value)
                    or not (callable(function) or isinstance(value, property))
                ):
                    continue
                if not (function.__doc__ or "").strip():
                    undocumented.append(f"{name}.{attribute}")
    assert undocumented == []
