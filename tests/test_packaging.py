"""The sdist carries what its own tests need, and its metadata says what it is.

Building and unpacking the sdist, then running its tests from the unpacked
tree, is what a packager does. The whole suite there would double the run, so
the unpacked tree collects every test (which imports every test module and its
helpers) and runs the schema, view and ABID tests, which read the files at its
top (schema.sql) and the package data.
"""

from __future__ import annotations

import email
import re
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN_THERE = ("tests/test_store.py", "tests/test_views.py", "tests/test_abid.py")


def _start(*args: str, cwd: Path) -> subprocess.Popen[str]:
    """A Python run started, not waited for: the suite runs on one core, the runs here on the
    other (collecting every test takes seconds, and it is done twice)."""
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _output(proc: subprocess.Popen[str]) -> str:
    """What a run started by ``_start`` printed, once it has ended well."""
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()  # only if the wait timed out: it has ended otherwise
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    return out


def _run(*args: str, cwd: Path) -> str:
    return _output(_start(*args, cwd=cwd))


def test_sdist_carries_its_tests_and_they_run_from_it(tmp_path: Path) -> None:
    build = (
        "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    )
    collect = ("-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider")
    here = _start(*collect, cwd=ROOT)
    name = _run("-c", build, str(tmp_path / "dist"), cwd=ROOT).split()[-1]
    with tarfile.open(tmp_path / "dist" / name) as archive:
        archive.extractall(tmp_path / "unpacked", filter="data")
    (tree,) = (tmp_path / "unpacked").iterdir()

    needed = ["LICENSE", "README.md", "schema.sql", "tokenstore/schema.sql", "tokenstore/py.typed"]
    needed += [str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("*.py")]
    if (ROOT / "docs").is_dir():
        needed += [str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*") if p.is_file()]
    assert [path for path in needed if not (tree / path).is_file()] == []

    meta = email.message_from_string((tree / "PKG-INFO").read_text())
    assert meta["License-File"] == "LICENSE" and meta["Author"]
    versions = {c for c in meta.get_all("Classifier") if c.startswith("Programming Language")}
    assert {f"Programming Language :: Python :: 3.{n}" for n in (11, 12, 13)} <= versions

    there = _start(*collect, cwd=tree)
    running = _start("-m", "pytest", "-q", "-p", "no:cacheprovider", *RUN_THERE, cwd=tree)
    where = _run("-c", "import tokenstore; print(tokenstore.__file__)", cwd=tree)
    assert Path(where.strip()).is_relative_to(tree)
    counts = [_output(proc).splitlines()[-1].split(" in ")[0] for proc in (there, here)]
    assert counts[0] == counts[1]  # "N tests collected"
    ran = _output(running)
    assert " passed" in ran and not re.search(r"\d+ failed", ran)  # xfailed is fine


def test_python_m_tokenstore_is_the_command(tmp_path: Path) -> None:
    shown = _run("-m", "tokenstore", "--version", cwd=tmp_path)
    assert shown.startswith("tokenstore ")
