"""The README runs: its Python and shell blocks, as written, offline, and again.

And the docs name every public name: docs/api.md lists each, the errors with
when they are raised, and every call with its real signature. The examples of
docs/*.md run as written too.

A newcomer copies the blocks in order into one terminal, so the shell blocks
run as one script, in a temporary folder, with this virtualenv's ``bin`` on
PATH. The Python blocks run twice in a row; the shell script runs once and must
leave nothing where a second run would find it (about 15 s a run, of its
commands' process starts). The two set-up lines at the top are not run here (they build the very
virtualenv running this test); they must be what CI runs, word for word.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import inspect
import json
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
import requests

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


DOCS = sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", flags=re.MULTILINE | re.DOTALL)


def _doc_blocks(lang: str) -> list[tuple[str, str]]:
    return [
        (page.name, body)
        for page in DOCS
        for kind, body in FENCE.findall(page.read_text(encoding="utf-8"))
        if kind == lang
    ]


def test_every_block_of_the_docs_is_one_the_tests_run_or_read() -> None:
    """A block in docs/*.md is Python or shell that runs below, JSON that parses, or plain
    text (messages as printed): a new example of another kind would go unchecked."""
    kinds = {kind for page in DOCS for kind, _ in FENCE.findall(page.read_text("utf-8"))}
    assert kinds <= {"python", "sh", "json", ""}, kinds
    assert _doc_blocks("python") and _doc_blocks("sh") and _doc_blocks("json")
    for _page, body in _doc_blocks("json"):
        json.loads(body)  # an example payload, "…" standing for the rest of a value


def test_the_python_blocks_of_the_docs_run_twice_in_a_row(
    db_path: Path | str, tmp_path: Path
) -> None:
    """As written, in a folder of their own; one that reads $TOKENSTORE_DB runs on each
    backend (docs/postgresql.md's example is about PostgreSQL), the others on a file."""
    env = _env()
    env["TOKENSTORE_DB"] = str(db_path)
    for n, (page, body) in enumerate(_doc_blocks("python")):
        if "TOKENSTORE_DB" not in body and not isinstance(db_path, Path):
            continue
        folder = tmp_path / f"example{n}"
        folder.mkdir()
        (folder / "example.py").write_text(body)
        for _ in range(2):
            done = subprocess.run(
                [sys.executable, "example.py"],
                cwd=folder,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, (page, done.stdout + done.stderr)


def _serving(line: str, folder: Path) -> None:
    """Start a line that serves until Ctrl-C, fetch its page, and stop it as the docs say."""
    server = subprocess.Popen(
        ["bash", "-c", f"exec {line}"],
        cwd=folder,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        said = server.stderr.readline()  # "admin page on URL", once it listens
        url = re.search(r"http://\S+", said)
        assert url, said
        assert requests.get(url[0], timeout=10, allow_redirects=False).status_code in (200, 303)
    finally:
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=30)
    assert server.returncode == 0, said + err


def test_the_shell_blocks_of_the_docs_run_in_order(tmp_path: Path) -> None:
    """Each page's blocks, line by line in one new folder, as a reader types them: a `pip
    install` of an extra is checked to be installed here, a server is started, asked for its
    page and stopped with Ctrl-C, every other line must succeed."""
    pages = sorted({page for page, _ in _doc_blocks("sh")})
    for page in pages:
        folder = tmp_path / page
        folder.mkdir()
        lines = [
            line
            for name, body in _doc_blocks("sh")
            if name == page
            for line in body.splitlines()
            if line.strip() and not line.startswith("#")
        ]
        for line in lines:
            extra = re.fullmatch(r"pip install 'tokenstore\[(\w+)\]'(\s+#.*)?", line)
            if extra:
                assert importlib.metadata.requires("tokenstore"), line
                for requirement in importlib.metadata.requires("tokenstore") or []:
                    if f'extra == "{extra[1]}"' in requirement:
                        importlib.import_module(re.split(r"[^\w]", requirement)[0].lower())
                continue
            assert not line.startswith("pip "), line
            if re.search(r"\btokenstore\b.* (serve|listen)\b", line):
                _serving(line, folder)
                continue
            done = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-c", line],
                cwd=folder,
                env=_env(),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, (page, line, done.stdout + done.stderr)


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


def test_the_admin_page_s_doc_gives_every_name_of_tokenstore_admin() -> None:
    """tokenstore.admin is public too: docs/admin.md names each export, a call with its
    real signature."""
    admin = importlib.import_module("tokenstore.admin")
    page = " ".join((ROOT / "docs" / "admin.md").read_text(encoding="utf-8").split())
    missing = [
        _signature(name, getattr(admin, name)) if inspect.isfunction(getattr(admin, name)) else name
        for name in admin.__all__
    ]
    assert [text for text in missing if f"`{text}" not in page] == []


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
