"""Every use of a peewee or requests internal, in one place.

tokenstore leans on a few things its dependencies do not document as API.
Each is used only through this module, so an upgrade that moves one breaks
here, visibly, and ``install_requires`` bounds the majors these were read
from (peewee 4, requests 2 with urllib3 1 or 2). What is relied on:

peewee
  - ``peewee.__exception_wrapper__``: turns driver errors into peewee's own
    classes, for statements tokenstore runs on the raw connection.
  - a peewee error's ``orig``: the driver exception it wraps (which holds
    SQLite's result code).
  - a model instance's ``__data__``, ``_dirty`` and ``__rel__`` slots and the
    ``__no_default__`` constructor flag: building an instance from stored
    values without running defaults or per-field ``setattr``.
  - ``Model._pk``: whether an instance was ever saved.
  - ``_StringField.adapt`` / ``IntegerField.adapt``: recognising fields that
    read a stored value unchanged.
  - ``Database._log_query(sql, params)``: the one place peewee logs a
    statement (logger ``peewee``, DEBUG), overridden by ``RedactedQueryLog``.
  - ``Database._state``: this thread's connection (``conn``), ``reset()``
    to forget one the server ended, so that the next call opens another,
    and room for one attribute of tokenstore's own (``ClosedWithThread``).
  - ``peewee._manual``: what ``manual_commit()`` puts on the transaction
    stack, though it opens no transaction.
  - ``ModelSelect._get_cursor_wrapper`` and a model cursor wrapper's
    ``initialize``, ``converters``, ``fields``, ``process_row``, ``iterate``
    and ``cursor``: converting a SELECT's rows with tokenstore's converters,
    and naming a row that fails (``checked_select_class``).

blinker
  - ``Signal._by_sender``: which receivers are still connected, to which
    senders. ``Signal.receivers`` keeps a receiver disconnected from the one
    sender it was connected to, so it cannot tell; an id in ``_by_sender``
    counts only while ``receivers`` holds it.

requests
  - ``PreparedRequest.prepare_*``: a POST prepared step by step, so the URL of
    an endpoint is prepared once and no session state is merged in.
  - ``Session.get_adapter(url).send``: sending through the adapter that holds
    the address guard.
  - ``Response.raw.read1(n, decode_content=True)`` (urllib3): reading a body a
    chunk at a time, so a deadline can stop a trickle.

http.client
  - ``HTTPResponse._read_status``: the status line, which ``FinalResponse``
    reads again past interim (1xx) answers; ``begin()`` skips 100 alone.
"""

from __future__ import annotations

import http.client
import logging
import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

import peewee

if TYPE_CHECKING:
    import requests

M = TypeVar("M", bound=peewee.Model)

#: Driver errors raised inside it come out as peewee's classes (IntegrityError, ...).
peewee_errors: AbstractContextManager[None] = peewee.__exception_wrapper__  # type: ignore[attr-defined]


_query_log = logging.getLogger("peewee")


class RedactedQueryLog:
    """A database mixin: peewee's query log without the values of tokenstore's statements.

    peewee logs every statement with its parameters at DEBUG. tokenstore's
    tables hold hook secrets, auth tokens and header credentials, so the
    statements that name them are logged with every value replaced: one rule
    that also covers columns added later. An application's own statements
    keep their values.
    """

    def _log_query(self, sql: str, params: Any) -> None:
        if _query_log.isEnabledFor(logging.DEBUG):
            if params and "tokenstore_" in sql:
                params = tuple("<redacted>" for _ in params)
            _query_log.debug((sql, params))


def driver_error(exc: BaseException) -> BaseException | None:
    """The driver exception behind ``exc``: itself if peewee did not wrap it, else ``orig``.

    peewee may wrap an error twice (a statement inside a wrapped block), so
    the chain of ``orig`` is followed to its end.
    """
    while isinstance(exc, peewee.PeeweeException):
        orig = getattr(exc, "orig", None)
        if orig is None:
            return None
        exc = orig
    return exc


def current_connection(db: peewee.Database) -> Any:
    """This thread's open DB-API connection, or None; unlike ``connection()``, never a new one."""
    return db._state.conn  # type: ignore[attr-defined]


class CloserOf:
    """Closes a connection when it is dropped, in the process that opened it: see
    ``ClosedWithThread``. A process forked from it leaves it alone (see ``_fork``)."""

    __slots__ = ("conn", "pid")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.pid = os.getpid()

    def __del__(self, getpid: Callable[[], int] = os.getpid) -> None:
        # No module globals here: this may run as the interpreter shuts down.
        if getpid() == self.pid:
            try:  # noqa: SIM105 (contextlib is a global)
                self.conn.close()
            except Exception:  # SQLite's of another thread, or one lost
                pass


class ClosedWithThread:
    """A database mixin: each thread's connection is closed when the thread ends.

    peewee keeps a connection per thread, which only that thread closes
    (``db.close()``); a request or worker thread that ends without it drops
    its connection open, and the collector warns of it (psycopg, and
    sqlite3 from Python 3.13). A closer sits beside each new connection in
    the same per-thread state, so it goes with the thread and closes it first.
    """

    def connect(self, reuse_if_open: bool = False) -> bool:
        opened = bool(super().connect(reuse_if_open))  # type: ignore[misc]
        if opened:
            state = self._state  # type: ignore[attr-defined]
            state.closer = CloserOf(state.conn)
        return opened


def forget_connection(db: peewee.Database) -> None:
    """Drop this thread's connection from peewee's books (the server ended it), unclosed."""
    db._state.reset()  # type: ignore[attr-defined]


def in_transaction_block(db: peewee.Database) -> bool:
    """Whether an ``atomic()``/``transaction()`` block is open; ``manual_commit()`` is none.

    ``db.in_transaction()`` counts a manual_commit() block too, so a commit
    made by hand inside one would wait for a later commit to be dispatched.
    """
    top = db.top_transaction()
    return top is not None and not isinstance(top, peewee._manual)


def loaded_instance(model: type[M], values: dict[str, Any], state: dict[str, Any]) -> M:
    """An instance as a SELECT would load it, from Python values keyed by field name.

    ``values`` becomes the instance's own; ``state`` sets further attributes.
    The attributes are set as one dict: this runs for every authenticated token.
    """
    instance = model.__new__(model)
    instance.__dict__ = {"__data__": values, "_dirty": set(), "__rel__": {}, **state}
    return instance


def adopt_state(instance: M, loaded: M) -> None:
    """Make ``instance`` hold what ``loaded`` (a ``loaded_instance`` of its model) holds."""
    vars(instance).update(vars(loaded))


def instance_without_defaults(model: type[M], values: dict[str, Any]) -> M:
    """An instance of any peewee model holding exactly ``values``, defaults not applied."""
    return model(__no_default__=True, **values)


def values_of(instance: peewee.Model) -> dict[str, Any]:
    """The instance's field values by name (not a copy)."""
    return instance.__data__  # type: ignore[no-any-return]


def loading(kwargs: dict[str, Any]) -> bool:
    """Whether a model is being built from a row peewee read (defaults are not applied)."""
    return bool(kwargs.get("__no_default__"))


def is_connected(signal: Any) -> bool:
    """Whether any receiver is connected to a blinker signal, for any sender.

    A receiver counts only while ``receivers`` still holds it: ``receivers``
    edited by hand (``clear()``, ``del``, ``pop``) leaves its id in
    ``_by_sender``, and blinker's ``receivers_for`` then skips it.
    """
    held = signal.receivers.keys()
    return any(not held.isdisjoint(bucket) for bucket in list(signal._by_sender.values()))


def was_saved(instance: peewee.Model) -> bool:
    return instance._pk is not None  # type: ignore[attr-defined]


def mark_clean(instance: peewee.Model) -> None:
    instance._dirty.clear()  # type: ignore[attr-defined]


def plain_python_type(field: peewee.Field) -> type | None:
    """``str`` or ``int`` when the field gives a stored value of that type back unchanged."""
    kind = type(field)
    if kind.python_value is not peewee.Field.python_value:
        return None
    if kind.adapt is peewee._StringField.adapt:
        return str
    if kind.adapt is peewee.IntegerField.adapt:
        return int
    return None


def prepare_post(
    url: str, prepared_url: str | None, body: bytes, headers: dict[str, str]
) -> requests.PreparedRequest:
    """What ``PreparedRequest.prepare`` makes of a POST without cookies or hooks.

    ``prepared_url`` is this URL as an earlier call prepared it (``request.url``),
    or None to prepare it now: it depends on the URL alone.
    """
    import requests

    request = requests.PreparedRequest()
    request.prepare_method("POST")
    if prepared_url is None:
        request.prepare_url(url, None)
    else:
        request.url = prepared_url
    request.prepare_headers(headers)
    request.prepare_body(body, None)
    request.prepare_auth(None, url)  # credentials in the URL become Basic auth
    return request


def send_prepared(
    session: requests.Session, request: requests.PreparedRequest, timeout: Any
) -> requests.Response:
    """Send through the session's adapter (the one holding the guard), streaming the body.

    ``Session.send`` would add only cookie bookkeeping and a lookup for
    redirects, which are never followed.
    """
    return session.get_adapter(request.url or "").send(
        request,
        stream=True,
        timeout=timeout,
        verify=True if session.verify is None else session.verify,
        cert=session.cert,
        proxies=session.proxies,
    )


def chunk_reader(response: requests.Response) -> Callable[[int], bytes]:
    """A function reading at most n decoded bytes of the body, waiting on the socket once."""
    raw = response.raw
    read = getattr(raw, "read1", raw.read)  # urllib3 < 2 has no read1

    def read_chunk(size: int) -> bytes:
        return bytes(read(size, decode_content=True))

    return read_chunk


class FinalResponse(http.client.HTTPResponse):
    """An answer read past any interim (1xx) answers before it, as HTTP asks of a client.

    http.client skips ``100 Continue`` only, and took a ``102 Processing`` or
    ``103 Early Hints`` for the answer: a message the receiver then accepted
    was recorded as failed, and sent again. ``101 Switching Protocols`` ends
    the exchange (nothing asks for it), so it stays the answer.
    """

    def _read_status(self) -> tuple[str, int, str]:
        while True:
            version, status, reason = super()._read_status()  # type: ignore[misc]
            if not 101 < status < 200:
                return version, status, reason
            http.client.parse_headers(self.fp)  # the interim answer's headers, unused


def checked_select_class(
    convert: Callable[[peewee.Field], Callable[[Any], Any]],
    row_failed: Callable[[Any, dict[str, Any], Exception], BaseException],
    read_failed: Callable[[Any, Exception, Any], BaseException | None],
) -> type[peewee.ModelSelect]:
    """A ``ModelSelect`` whose rows convert through ``convert(field)``.

    A row that fails to convert raises ``row_failed(model, stored, error)``,
    with the model's columns as stored; a row the driver cannot read raises
    ``read_failed(model, error, connection)``, or the error itself if that
    gives None.
    """

    def check_rows(wrapper: Any) -> None:
        initialize, process, iterate = wrapper.initialize, wrapper.process_row, wrapper.iterate

        def checked_initialize() -> None:
            initialize()
            # A column that is an expression (a function, arithmetic) has no field;
            # peewee's own conversion of it, if any, stays.
            wrapper.converters = [
                convert(field)
                if field is not None and old is not None and old == field.python_value
                else old
                for field, old in zip(wrapper.fields, wrapper.converters, strict=True)
            ]

        def checked_process(row: Sequence[Any]) -> Any:
            try:
                return process(row)
            except Exception as exc:
                model = wrapper.model
                stored = {
                    field.column_name: raw
                    for field, raw in zip(wrapper.fields, row, strict=True)
                    if field is not None and field.model is model
                }
                raise row_failed(model, stored, exc) from None

        def checked_iterate(cache: bool = True) -> Any:
            try:
                return iterate(cache)
            except Exception as exc:
                failed = read_failed(wrapper.model, exc, wrapper.cursor.connection)
                if failed is None:
                    raise
                raise failed from None

        wrapper.initialize, wrapper.process_row = checked_initialize, checked_process
        wrapper.iterate = checked_iterate

    class CheckedSelect(peewee.ModelSelect):
        def _get_cursor_wrapper(self, cursor: Any) -> Any:
            wrapper = super()._get_cursor_wrapper(cursor)  # type: ignore[misc]
            if isinstance(wrapper, peewee.BaseModelCursorWrapper):
                check_rows(wrapper)
            return wrapper

    return CheckedSelect
