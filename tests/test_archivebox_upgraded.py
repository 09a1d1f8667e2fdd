"""Importing a database ArchiveBox 0.7.4 made and 0.8.5rc51 upgraded, as most users' are.

How tests/data/archivebox-0.7.4-upgraded.sql was made (Linux, Python 3.11, TZ=UTC,
offline but for the package registry; as a user other than root, which ArchiveBox
refuses):

    python3 -m venv /tmp/abx-0.7 && /tmp/abx-0.7/bin/pip install archivebox==0.7.4
    # and /tmp/abx-0.8 as tests/test_archivebox_real.py says, with its pins
    mkdir data && cd data
    /tmp/abx-0.7/bin/archivebox init
    DJANGO_SUPERUSER_PASSWORD=admin-pass-1 /tmp/abx-0.7/bin/archivebox manage \\
        createsuperuser --noinput --username admin --email admin@example.com
    /tmp/abx-0.7/bin/archivebox manage shell -c \\
        "exec(open('tests/data/archivebox-0.7.4-upgraded-seed-0.7.py').read())"
    ADMIN_USERNAME='Jane Doe' ADMIN_PASSWORD=jane-pass-1 /tmp/abx-0.7/bin/archivebox init
    /tmp/abx-0.8/bin/archivebox init            # the upgrade: 0.8.5rc51's migrations
    ABX_FACTS=facts.json /tmp/abx-0.8/bin/archivebox manage shell -c \\
        "exec(open('tests/data/archivebox-0.7.4-upgraded-seed-0.8.py').read())"
    sqlite3 index.sqlite3 .dump > tests/data/archivebox-0.7.4-upgraded.sql

0.7.4 (the last 0.7 on PyPI) ran Django 3.1.14; the users it made keep its password
hashes and ids 1 to 10, among them superusers (one inactive), names that differ only in
case, in other scripts, and ``Jane Doe``, whom ``archivebox init`` made from
ADMIN_USERNAME without Django's check on names. The upgrade added the ``system``
superuser after them (id 11), and moved the 0.7 snapshot and tag to UUIDs and ABIDs.
0.8.5rc51 then made a user, API tokens for old and new users, and webhooks (an auth
token under the seed's cipher key, credentials in a URL, one disabled); its hooks fired
at the seed's receiver. The upgraded file's tables and ``django_migrations`` are, column
for column, those of a file 0.8.5rc51 made from scratch.

A 0.7 user named ``system`` who is not a staff superuser cannot be upgraded at all:
0.8.5rc51's core migration 0026 then fails with "UNIQUE constraint failed:
auth_user.username", so no file the import reads holds one.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from test_archivebox_real import (
    archivebox,
    owners,
    source_rows,
    tokens_came_over,
    users_came_over,
)

from tokenstore import OutboundWebhook, Store
from tokenstore._abid import abid_from_values

pytestmark = pytest.mark.usefixtures("store_file")

DATA = Path(__file__).parent / "data"
DUMP = DATA / "archivebox-0.7.4-upgraded.sql"
FACTS: dict[str, Any] = json.loads((DATA / "archivebox-0.7.4-upgraded.json").read_text())
TOKENS: dict[str, dict[str, Any]] = FACTS["tokens"]
HOOKS: dict[str, dict[str, Any]] = FACTS["hooks"]


def upgraded(tmp_path: Path) -> Path:
    return archivebox(tmp_path, dump=DUMP)


def test_the_fixture_is_an_upgraded_07_database(tmp_path: Path) -> None:
    """0.7's users keep Django 3.1's hashes; the upgrade's system user comes after them."""
    users = {row["username"]: row for row in source_rows(upgraded(tmp_path), "auth_user")}
    assert users["system"]["id"] == 11 and users["dave"]["id"] == 12
    old = [row for row in users.values() if row["id"] <= 10]
    assert len(old) == 10 and all("$216000$" in row["password"] for row in old)
    assert users["Jane Doe"]["is_superuser"] == 1


def test_every_user_comes_over_under_the_name_archivebox_kept(store: Store, tmp_path: Path) -> None:
    source = upgraded(tmp_path)
    report = store.import_archivebox(source)
    assert (report.refused, vars(report.counts["auth_user"])) == (
        [],
        {"imported": 11, "present": 1, "refused": 0},  # system is tokenstore's own
    )
    users_came_over(store, source)
    assert store.users.get("Alice").id != store.users.get("alice").id


def test_every_token_authenticates_as_its_row(store: Store, tmp_path: Path) -> None:
    source = upgraded(tmp_path)
    report = store.import_archivebox(source)
    assert vars(report.counts["api_apitoken"]) == {"imported": 11, "present": 0, "refused": 0}
    tokens_came_over(store, source, TOKENS)


# (table, the uri source column, the subtype: the ref column or a constant)
ABID_SOURCES = [
    ("api_apitoken", "created_by_id", "01"),
    ("api_outboundwebhook", "endpoint", "ref"),
    ("core_snapshot", "url", "01"),
    ("core_tag", "slug", "03"),
]


@pytest.mark.parametrize(("table", "uri", "subtype"), ABID_SOURCES)
def test_tokenstore_computes_every_abid_archivebox_gave(
    tmp_path: Path, table: str, uri: str, subtype: str
) -> None:
    """Each row's ABID from its own columns; a 0.7 snapshot's time is when it was bookmarked.

    The upgrade gave the snapshot 0.7 made an ABID from its 0.7 ``added``
    (now ``bookmarked_at``) and a ``created_at`` of the upgrade's own time.
    """
    old_snapshot = FACTS["snapshots"]["https://example.com/old/page"]["abid"]
    checked = 0
    for row in source_rows(upgraded(tmp_path), table):
        when = row["bookmarked_at"] if row["abid"] == old_snapshot else row["created_at"]
        created = datetime.fromisoformat(when).replace(tzinfo=UTC)
        kind = row["ref"] if subtype == "ref" else subtype
        computed = abid_from_values(row["abid"][:4], created, row[uri], kind, uuid.UUID(row["id"]))
        assert str(computed) == row["abid"]
        checked += 1
    assert checked


def test_every_hook_comes_over_with_the_authorization_archivebox_sent(
    store: Store, tmp_path: Path
) -> None:
    source = upgraded(tmp_path)
    report = store.import_archivebox(source, cipher_key=FACTS["cipher_key"])
    assert vars(report.counts["api_outboundwebhook"]) == {
        "imported": 4,
        "present": 0,
        "refused": 0,
    }
    names = owners(source)
    sent = {r["path"]: r["headers"]["Authorization"] for r in FACTS["received"]}
    authorization = {"token-audit": sent["/tokens"], "snapshot-mirror": sent["/snapshots"]}
    enabled = {"token-audit": True, "user-sync": True, "snapshot-mirror": False, "tag-hook": False}
    for name, recorded in HOOKS.items():
        hook = OutboundWebhook.get_by_id(uuid.UUID(recorded["id"]))
        assert (hook.name, hook.abid) == (name, recorded["abid"])
        assert hook.created_by.username == names[recorded["created_by_id"]]
        assert hook.auth_token == authorization.get(name, "")
        assert hook.enabled == enabled[name]
        assert "@" not in hook.endpoint
