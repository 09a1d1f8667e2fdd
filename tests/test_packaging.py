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


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_sdist_carries_its_tests_and_they_run_from_it(tmp_path: Path) -> None:
    build = (
        "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    )
    name = _run("-c", build, str(tmp_path / "dist"), cwd=ROOT).stdout.split()[-1]
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

    where = _run("-c", "import tokenstore; print(tokenstore.__file__)", cwd=tree).stdout
    assert Path(where.strip()).is_relative_to(tree)
    collect = ("-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider")
    there, here = (_run(*collect, cwd=d).stdout.splitlines()[-1] for d in (tree, ROOT))
    assert there.split(" in ")[0] == here.split(" in ")[0]  # "N tests collected"
    ran = _run("-m", "pytest", "-q", "-p", "no:cacheprovider", *RUN_THERE, cwd=tree)
    assert " passed" in ran.stdout and not re.search(r"\d+ failed", ran.stdout)  # xfailed is fine


def test_python_m_tokenstore_is_the_command(tmp_path: Path) -> None:
    shown = _run("-m", "tokenstore", "--version", cwd=tmp_path).stdout
    assert shown.startswith("tokenstore ")
