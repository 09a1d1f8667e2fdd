"""Every public call, each parameter in turn given every hostile value, on both backends.

The calls are found by introspection (the functions ``tokenstore``,
``tokenstore.admin`` and ``tokenstore.signals`` export, and the methods of
the classes a caller holds), so a new call or parameter is swept as soon as
it exists: ``VALID`` must then say what valid arguments it takes, or the
sweep fails naming it. For each (call, parameter, value) the other
parameters keep a valid value, and the contract is (README, docs/api.md):

- the call succeeds or raises a ``TokenstoreError``; a value of a type the
  parameter's annotation does not take is a ``ValidationError``;
- the message names the parameter and never quotes a secret;
- a refused call leaves every row of every table as it was.

Calls that send reach only 127.0.0.1 (a closed port). test_hardening.py
throws random odd values at hand-picked calls; this sweep is exhaustive
and deterministic instead.
"""

from __future__ import annotations

import collections.abc
import inspect
import itertools
import math
import types
import typing
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import peewee
import pytest
from _db import Raw
from conftest import new_database
from test_archivebox import standard

import tokenstore
import tokenstore.admin
import tokenstore.signals
from tokenstore import (
    ABID,
    AuthenticationError,
    InvalidABID,
    Store,
    TokenstoreError,
    ValidationError,
)
from tokenstore._models import ABIDModel
from tokenstore._signing import sign

CLOSED = "http://127.0.0.1:9/hook"


class Probe(ABIDModel):
    """The model the sweep's hooks watch; nothing writes to it, so nothing is delivered."""

    abid_prefix = "prb_"
    text = peewee.TextField(default="")


class EvilStr(str):
    """A str whose str(), == and hash() lie: only its own characters may be used."""

    def __str__(self) -> str:
        return "\x00evil"

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return 0


# -- the calls ------------------------------------------------------------------------------

#: The classes whose public methods a caller holds, and how the world gives an instance.
HOLDERS: dict[type, Callable[[World], Any]] = {
    Store: lambda w: w.store,
    tokenstore.Users: lambda w: w.store.users,
    tokenstore.Tokens: lambda w: w.store.tokens,
    tokenstore.Webhooks: lambda w: w.store.webhooks,
    tokenstore.RetryThread: lambda w: w.thread,
    tokenstore.APIToken: lambda w: w.token,
    ABID: lambda w: w.token.ABID,
}

#: Public methods that are not calls of the API: peewee's and threading's own.
NOT_API = {"APIToken.save", "RetryThread.run", "APIToken.abid_subtype_src"}

#: Exported classes a caller constructs.
CONSTRUCTED = (Store, ABID, tokenstore.TokenAuthMiddleware, tokenstore.admin.AdminApp)


def _functions(module: types.ModuleType, names: list[str]) -> dict[str, Any]:
    found = {}
    for name in names:
        obj = getattr(module, name)
        if inspect.isfunction(obj):
            found[f"{module.__name__}.{name}"] = obj
    return found


def call_names() -> list[str]:
    """Every public call that takes a parameter, by a stable name."""
    names = set(_functions(tokenstore, tokenstore.__all__))
    names |= set(_functions(tokenstore.admin, tokenstore.admin.__all__))
    signal_names = [n for n in vars(tokenstore.signals) if not n.startswith("_")]
    names |= {
        n
        for n, f in _functions(tokenstore.signals, signal_names).items()
        if f.__module__ == "tokenstore.signals"
    }
    for cls in HOLDERS:
        for attr, member in vars(cls).items():
            raw = member.__func__ if isinstance(member, classmethod | staticmethod) else member
            if attr.startswith("_") or not inspect.isfunction(raw):
                continue
            names.add(f"{cls.__name__}.{attr}")
    names |= {f"{cls.__name__}()" for cls in CONSTRUCTED}
    return sorted(n for n in names - NOT_API if _parameters(_resolve_static(n)))


def _resolve_static(name: str) -> Any:
    """The function a call name stands for (unbound), to read its signature."""
    if name.endswith("()"):
        cls = next(c for c in CONSTRUCTED if c.__name__ == name[:-2])
        return cls.__init__
    if "." in name and name.split(".")[0] in {c.__name__ for c in HOLDERS}:
        cls_name, attr = name.split(".")
        cls = next(c for c in HOLDERS if c.__name__ == cls_name)
        member = vars(cls)[attr]
        return member.__func__ if isinstance(member, classmethod | staticmethod) else member
    module, _, attr = name.rpartition(".")
    return getattr({m.__name__: m for m in _MODULES}[module], attr)


_MODULES = (tokenstore, tokenstore.admin, tokenstore.signals)


def _parameters(func: Any) -> list[inspect.Parameter]:
    """The parameters a caller names (not self or cls, not **kwargs)."""
    params = list(inspect.signature(func).parameters.values())
    if params and params[0].name in ("self", "cls"):
        params = params[1:]
    return [p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]


def _bound(w: World, name: str) -> Callable[..., Any]:
    """The callable a caller would use for this name, in this world."""
    if name.endswith("()"):
        return next(c for c in CONSTRUCTED if c.__name__ == name[:-2])  # type: ignore[no-any-return]
    head, _, attr = name.rpartition(".")
    for cls, holder in HOLDERS.items():
        if cls.__name__ == head:
            return getattr(holder(w), attr)  # type: ignore[no-any-return]
    return getattr({m.__name__: m for m in _MODULES}[head], attr)  # type: ignore[no-any-return]


# -- the world ------------------------------------------------------------------------------


class World:
    """A store with a user, a token, a hook and a delivery: the valid arguments."""

    def __init__(self, location: Path | str, tmp: Path) -> None:
        self.tmp = tmp
        self.location = location
        other = tokenstore.open(tmp / "other.sqlite3")
        self.closed_user = other.users.create("alice")
        other.close()
        self.store = self._open()
        self.alice = self.store.users.create("alice")
        self.token, self.secret = self.store.tokens.create(self.alice, name="ci", scopes=["r"])
        self.hook = self.store.webhooks.create("probe", Probe, CLOSED)
        self.delivery = self.store.webhooks.ping(self.hook)
        self.thread = self.store.webhooks.start_retry_thread(3600)
        self._numbers = itertools.count()
        gone = self.store.users.create("gone")
        self.store.tokens.list(gone)
        with self.store.atomic():
            tokenstore.User.delete().where(tokenstore.User.id == gone.id).execute()
        self.deleted_user = gone
        self.raw = Raw(location)
        archivebox = tmp / "archivebox"
        archivebox.mkdir()
        self.archivebox = standard(archivebox)
        self.secrets = [self.secret, self.hook.secret]

    def _open(self) -> Store:
        store = tokenstore.open(self.location, webhook_allow=["127.0.0.1/32"], read_timeout=0.5)
        store.register(Probe)
        return store

    def reopen(self) -> None:
        """Take the models back after a call opened another store (one store per process)."""
        self.store.close()
        self.store = self._open()
        self.thread = self.store.webhooks.start_retry_thread(3600)

    def fresh(self, stem: str) -> str:
        return f"{stem}{next(self._numbers)}"

    def new_hook(self) -> tokenstore.OutboundWebhook:
        return self.store.webhooks.create(self.fresh("h"), Probe, self.fresh(CLOSED))

    def dump(self) -> dict[str, list[str]]:
        """Every committed row of every table, read on a connection of the test's own."""
        if self.raw.postgres:
            sql = (
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema()"
            )
        else:
            sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
        tables = [r[0] for r in self.raw.rows(sql)]
        dumped = {t: sorted(map(repr, self.raw.rows(f'SELECT * FROM "{t}"'))) for t in tables}
        self.raw.commit()
        return dumped

    def close(self) -> None:
        self.raw.close()
        self.store.close()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("types")
    if request.param == "postgres":
        with new_database(request.getfixturevalue("pg_admin_url")) as url:
            w = World(url, tmp)
            try:
                yield w
            finally:
                w.close()
        return
    w = World(tmp / "store.sqlite3", tmp)
    try:
        yield w
    finally:
        w.close()


def _signed(w: World) -> dict[str, Any]:
    body = b'{"type": "webhook.ping"}'
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": "1000",
        "webhook-signature": sign(w.hook.secret, "msg_1", 1000, body),
    }
    return {"secret": w.hook.secret, "headers": headers, "body": body, "now": 1000}


def _app(environ: Any, start_response: Any) -> list[bytes]:
    return []


#: Valid arguments of every call, as a function of the world: a parameter left out takes
#: its default (and is still swept).
VALID: dict[str, Callable[[World], dict[str, Any]]] = {
    "ABID()": lambda w: dict(
        prefix="prb_", ts="01JAZ6BQG0", uri="D53BD22B", subtype="01", rand="XRS78E"
    ),
    "ABID.parse": lambda w: {"text": str(w.token.abid), "prefix": "apt_"},
    "APIToken.generate_secret_token": lambda w: {"prefix": "tsk"},
    "APIToken.has_scope": lambda w: {"scope": "r"},
    "APIToken.is_valid": lambda w: {"for_date": datetime.now(UTC)},
    "AdminApp()": lambda w: {"store": w.store},
    "RetryThread.stop": lambda w: {"timeout": 5.0},
    "Store()": lambda w: {"path": w.tmp / w.fresh("s")},
    "Store.dispatch": lambda w: {"deliver": False},
    "Store.import_archivebox": lambda w: {"path": w.archivebox, "dry_run": True},
    "Store.model_for_ref": lambda w: {"ref": Probe},
    "Store.ref": lambda w: {"model": Probe},
    "Store.register": lambda w: {"model": Probe},
    "Store.wait_for_changes": lambda w: {"timeout": 0.0},
    "TokenAuthMiddleware()": lambda w: {"app": _app, "store": w.store, "scope": "r"},
    "Tokens.authenticate": lambda w: {"secret": w.secret, "scope": "r"},
    "Tokens.create": lambda w: {
        "user": w.alice,
        "name": "n",
        "expires": timedelta(days=1),
        "scopes": ["r"],
    },
    "Tokens.get": lambda w: {"abid": str(w.token.abid)},
    "Tokens.list": lambda w: {"user": w.alice, "include_revoked": True, "limit": 5},
    "Tokens.revoke": lambda w: {"token": w.store.tokens.create(w.alice)[0]},
    "Tokens.token_from_request": lambda w: {"headers": {"X-API-Key": w.secret}, "query": {}},
    "Users.create": lambda w: {"username": w.fresh("u"), "superuser": False},
    "Users.get": lambda w: {"username": "alice"},
    "Users.list": lambda w: {"limit": 5, "before": "alice"},
    "Webhooks.allow": lambda w: {"entry": "10.9.0.0/16"},
    "Webhooks.create": lambda w: {
        "name": w.fresh("h"),
        "ref": Probe,
        "endpoint": w.fresh(CLOSED),
        "headers": {"X-A": "b"},
        "auth_token": "t",
        "created_by": w.alice,
    },
    "Webhooks.deliveries": lambda w: {"hook": w.hook, "status": "failed", "limit": 5},
    "Webhooks.deliver_due": lambda w: {"now": datetime.now(UTC), "limit": 5},
    "Webhooks.delete": lambda w: {"hook": w.new_hook()},
    "Webhooks.delivery": lambda w: {"abid": str(w.delivery.abid)},
    "Webhooks.disable": lambda w: {"hook": w.new_hook(), "reason": "r"},
    "Webhooks.disallow": lambda w: {"entry": "10.8.0.0/16"},
    "Webhooks.enable": lambda w: {"hook": w.new_hook()},
    "Webhooks.erase_expired_secrets": lambda w: {"now": datetime.now(UTC)},
    "Webhooks.get": lambda w: {"key": "probe"},
    "Webhooks.list": lambda w: {"enabled": True},
    "Webhooks.ping": lambda w: {"hook": w.hook},
    "Webhooks.prune": lambda w: {"older_than": timedelta(days=30)},
    "Webhooks.redeliver": lambda w: {"delivery": w.delivery},
    "Webhooks.rotate_secret": lambda w: {"hook": w.new_hook(), "grace": timedelta(hours=1)},
    "Webhooks.start_retry_thread": lambda w: {"interval": 3600.0},
    "Webhooks.update": lambda w: {"hook": w.new_hook(), "unchanged_since": None},
    "tokenstore.abid_from_values": lambda w: dict(
        prefix="prb_", ts=datetime.now(UTC), uri="u", subtype="00", rand=1
    ),
    "tokenstore.admin.grants_admin": lambda w: {"token": w.token, "owner": w.alice},
    "tokenstore.admin.make_admin_server": lambda w: {"store": w.store, "port": 0},
    "tokenstore.admin.make_app": lambda w: {"store": w.store},
    "tokenstore.admin.public_warning": lambda w: {"host": "127.0.0.1"},
    "tokenstore.looks_like_token": lambda w: {"text": w.secret, "prefix": "tsk"},
    "tokenstore.make_receiver": lambda w: dict(
        host="127.0.0.1", port=0, secret=w.hook.secret, on_event=lambda p, h: None
    ),
    "tokenstore.migrate": lambda w: {"source": w.location, "dest": w.tmp / w.fresh("m")},
    "tokenstore.open": lambda w: {"path": w.tmp / w.fresh("o")},
    "tokenstore.signals.send_isolated": lambda w: {
        "signal": tokenstore.signals.webhook_failed,
        "sender": w.store,
    },
    "tokenstore.token_from_request": lambda w: {"headers": {"X-API-Key": w.secret}},
    "tokenstore.verify_webhook": _signed,
}


def _stranger() -> type[peewee.Model]:
    """A model no store registered: a new one each time, as register() may take one."""
    return type("Stranger", (peewee.Model,), {"__module__": __name__})


def hostile(w: World) -> list[tuple[str, Any]]:
    """The values each parameter gets in turn, with a name for the report."""
    now = datetime.now(UTC)
    return [
        ("None", None),
        ("True", True),
        ("0", 0),
        ("-1", -1),
        ("2**64", 2**64),
        ("1.5", 1.5),
        ("nan", math.nan),
        ("bytes", b"x"),
        ("bytearray", bytearray(b"x")),
        ("empty", ""),
        ("blank", " "),
        ("NUL", "\x00"),
        ("surrogate", "a\ud800"),
        ("1MB", "x" * 1_000_000),
        ("EvilStr", EvilStr("alice")),
        ("list", ["x"]),
        ("dict", {"x": object()}),
        ("object", object()),
        ("naive", now.replace(tzinfo=None)),
        ("far-past", datetime.min.replace(tzinfo=UTC)),
        ("far-future", datetime.max.replace(tzinfo=UTC)),
        ("-timedelta", timedelta(seconds=-1)),
        ("huge-timedelta", timedelta.max),
        ("wrong-model", w.delivery),
        ("unsaved", tokenstore.User(username="nobody")),
        ("deleted", w.deleted_user),
        ("closed-store", w.closed_user),
        ("a-class", _stranger()),
        ("token-secret", w.secret),
    ]


# -- what a parameter takes ------------------------------------------------------------------


def _hints(func: Any) -> dict[str, Any]:
    """The resolved annotations, or none where one names a private protocol."""
    try:
        return typing.get_type_hints(func)
    except Exception:
        return {}


def takes(annotation: Any, value: object) -> bool | None:
    """Whether a value is of a type the annotation takes; None: cannot tell (a protocol)."""
    if annotation is Any or annotation is object:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        answers = [takes(a, value) for a in typing.get_args(annotation)]
        return True if True in answers else (None if None in answers else False)
    if annotation is type(None):
        return value is None
    if origin is type:
        return isinstance(value, type)
    if origin is not None:
        if origin is collections.abc.Callable:
            return callable(value)
        return isinstance(value, origin) if isinstance(origin, type) else None
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is bytes:  # the annotation's shorthand for bytes-like
        return isinstance(value, bytes | bytearray)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        if getattr(annotation, "_is_protocol", False):
            return None
        return isinstance(value, annotation)
    return None


#: How messages name a parameter in words where its name alone would say less.
IN_WORDS = {
    "abid": ("abid", "webhook-id"),
    "key": ("webhook abid or name",),
    "username": ("user",),
    "user": ("user",),
    "endpoint": ("endpoint", "url"),
    "scopes": ("scope",),
    "headers": ("header",),
    "entry": ("allowlist", "cidr", "address"),
    "secret": ("api token",),
    "text": ("abid", "suffix", "prefix"),
    "host": ("listen on",),
    "ref_map": ("map",),
    "unchanged_since": ("changed meanwhile",),
    # A file is named by its path, as the message must quote it: "cannot read PATH".
    "path": ("archivebox", "cannot read"),
}


def names_parameter(message: str, param: str) -> bool:
    """Whether a message says which parameter held the value (by name, or in words)."""
    words = message.lower().replace("_", " ")
    return any(w in words for w in (param.replace("_", " "), *IN_WORDS.get(param, ())))


@pytest.fixture
def in_tmp(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Paths given as hostile values ('', ' ') land in the world's folder."""
    monkeypatch.chdir(world.tmp)


def _cleanup(result: Any) -> None:
    """Close what a successful call opened."""
    for name in ("server_close", "close", "stop"):
        if name == "close" and not isinstance(result, Store):
            continue
        method = getattr(result, name, None)
        if callable(method):
            method()
            return


CALLS = call_names()

#: Parameters naming a file: a message says which file by quoting its path, whatever it is.
PATHS = {"path", "source", "dest"}

#: The calls whose valid arguments are made by writing (a hook or token to act on).
FACTORY_WRITES = {
    "Tokens.revoke",
    "Webhooks.delete",
    "Webhooks.disable",
    "Webhooks.enable",
    "Webhooks.rotate_secret",
    "Webhooks.update",
}

#: Where docs/api.md names another refusal than ValidationError for a bad value.
DOCUMENTED: dict[str, type[TokenstoreError]] = {
    **{f"ABID()({p})": InvalidABID for p in ("prefix", "ts", "uri", "subtype", "rand")},
    "ABID.parse(text)": InvalidABID,
    "ABID.parse(prefix)": InvalidABID,
    **{
        f"tokenstore.abid_from_values({p})": InvalidABID
        for p in ("prefix", "ts", "uri", "subtype", "rand", "salt")
    },
    "Tokens.authenticate(secret)": AuthenticationError,
}

#: Parameters documented to take more than their annotation says; only TokenstoreError and
#: nothing half-written are asked of them.
ANY_TYPE = {
    # "it never raises" (docs/api.md): anything that is no token's prefix is a False.
    "tokenstore.looks_like_token(prefix)",
    # ArchiveBox's rule: a rand of another type is used as its text (docs/abid.md).
    "tokenstore.abid_from_values(rand)",
    # None is an ABID without prefix, as abid_from_values(prefix=None) makes.
    "ABID()(prefix)",
}

#: The calls that open a store, taking the models from the world's (one store per process).
OPENERS = {"Store()", "tokenstore.open", "tokenstore.migrate"}


def test_every_call_has_valid_arguments() -> None:
    """A new call is swept only once VALID says what a valid call of it is."""
    assert sorted(set(CALLS) - set(VALID)) == []


@pytest.mark.parametrize("name", CALLS)
def test_hostile_values(world: World, in_tmp: None, name: str) -> None:
    func = _resolve_static(name)
    params = _parameters(func)
    hints = _hints(func)
    failures: list[str] = []
    before = world.dump()
    for param, (label, value) in itertools.product(params, hostile(world)):
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        args = VALID[name](world)
        if name in FACTORY_WRITES:
            before = world.dump()
        args[param.name] = value
        case = f"{name}({param.name}={label})"
        wrong_type = takes(hints.get(param.name, Any), value) is False
        wrong_type = wrong_type and f"{name}({param.name})" not in ANY_TYPE
        refusal = DOCUMENTED.get(f"{name}({param.name})", ValidationError)
        try:
            _cleanup(_bound(world, name)(**args))
            if name in OPENERS:
                world.reopen()
        except TokenstoreError as exc:
            message = str(exc)
            if wrong_type and not isinstance(exc, refusal):
                failures.append(f"{case}: {type(exc).__name__} for a wrong type: {message}")
            if isinstance(exc, refusal) and not names_parameter(message, param.name):
                failures.append(f"{case}: the message does not name it: {message}")
            if param.name not in PATHS and any(s in message for s in world.secrets):
                failures.append(f"{case}: the message quotes a secret")
            after = world.dump()
            if after != before:
                failures.append(f"{case}: refused, but rows changed")
            before = after
        except Exception as exc:
            failures.append(f"{case}: {type(exc).__name__}: {str(exc)[:200]}")
            before = world.dump()
        else:
            if wrong_type:
                failures.append(f"{case}: accepted a value of a wrong type")
            before = world.dump()
    assert failures == [], "\n".join(failures)
