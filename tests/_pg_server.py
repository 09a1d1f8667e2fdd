"""A throwaway PostgreSQL cluster for the tests, made from the machine's own binaries.

initdb refuses to run as root, so when the tests run as root the cluster
belongs to the unprivileged ``postgres`` user. It listens on 127.0.0.1 at a
free port and on a socket in its own folder. ``pg_ctl`` puts the server in a
session of its own, so it would outlive a killed test run: a watchdog
process stops it and removes the folder once the process that started it is
gone, however that process ended.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
#: What a command of the server's programs starts with: initdb, and PgBouncer too, refuse
#: to run as root, so under root they run as ``postgres``.
AS_POSTGRES = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

_WATCHDOG = """
while kill -0 "$1" 2>/dev/null; do sleep 1; done
$2 -D "$3/data" -m immediate -w stop >/dev/null 2>&1
rm -rf "$3"
"""


@dataclass
class Server:
    url: str
    folder: Path
    pg_ctl: list[str]

    def stop(self) -> None:
        subprocess.run(
            [*self.pg_ctl, "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(self.folder, ignore_errors=True)


def binaries() -> Path | None:
    """The folder of the newest installed PostgreSQL's initdb and pg_ctl, if any."""
    for folder in _BIN_DIRS:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start() -> Server:
    """Start a fresh cluster with a database ``app`` owned by the role ``app``, which may
    create databases and roles (tests of a store reached by two roles)."""
    bindir = binaries()
    if bindir is None:
        raise RuntimeError("no PostgreSQL binaries under /usr/lib/postgresql/*/bin")
    folder = Path(tempfile.mkdtemp(prefix="tokenstore-pg-"))
    (folder / "sock").mkdir()
    (folder / ".pw").write_text("postgres-password\n")
    if AS_POSTGRES:
        shutil.chown(folder, "postgres")
        shutil.chown(folder / "sock", "postgres")
        shutil.chown(folder / ".pw", "postgres")
    folder.chmod(0o700)
    pg_ctl = [*AS_POSTGRES, str(bindir / "pg_ctl")]
    port = _free_port()

    def run(*command: str) -> None:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{command[len(AS_POSTGRES)]} failed: {done.stderr.strip()[-500:]}")

    run(
        *AS_POSTGRES,
        str(bindir / "initdb"),
        "-D",
        str(folder / "data"),
        "-U",
        "postgres",
        f"--pwfile={folder / '.pw'}",
        "--auth-local=trust",
        "--auth-host=scram-sha-256",
        "-E",
        "UTF8",
        "--locale=C.UTF-8",
        "--no-sync",
    )
    subprocess.Popen(
        ["sh", "-c", _WATCHDOG, "watchdog", str(os.getpid()), " ".join(pg_ctl), str(folder)],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    options = (
        f"-c listen_addresses=127.0.0.1 -p {port} -k {folder / 'sock'} -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    run(
        *pg_ctl, "-D", str(folder / "data"), "-l", str(folder / "server.log"), "-w", "-t", "60",
        "-o", options, "start",
    )  # fmt: skip
    psql = [*AS_POSTGRES, str(bindir / "psql"), "-h", str(folder / "sock"), "-p", str(port)]
    run(
        *psql, "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1",
        "-c", "CREATE ROLE app LOGIN CREATEDB CREATEROLE PASSWORD 'app-password'",
        "-c", "CREATE DATABASE app OWNER app",
    )  # fmt: skip
    return Server(f"postgresql://app:app-password@127.0.0.1:{port}/app", folder, pg_ctl)


if __name__ == "__main__":  # a server for trying things by hand: prints its URL, Ctrl-C stops it
    server = start()
    print(server.url, flush=True)
    try:
        sys.stdin.read()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
