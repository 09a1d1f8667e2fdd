"""Server-side sessions in memory, keyed by a random id sent in an HttpOnly cookie.

A session remembers which token signed in (its ABID, never its secret), the
CSRF token its forms carry, the one-time ids of the forms it was shown that
must be carried out once, and at most one secret waiting to be shown once.
Restarting the server signs everybody out, which is the safe way round.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

#: How long a signed-in session lasts, whatever happens (seconds).
SESSION_LIFETIME = 8 * 3600
#: How long a visitor has to fill in the sign-in form (seconds).
SIGN_IN_LIFETIME = 15 * 60
#: The most one-time form ids a session keeps; past it the oldest are forgotten.
MAX_FORMS = 100
#: The most sessions of each kind kept (signed in, and sign-in forms); past it the
#: oldest of that kind are dropped.
MAX_SESSIONS = 10_000


def new_form_id() -> str:
    """A one-time form id: random, so that no form can be sent for another."""
    return secrets.token_urlsafe(16)


@dataclass
class Reveal:
    """A secret to show on the next page, then forget: a new token's or a rotated signing key."""

    label: str
    value: str = field(repr=False)


@dataclass
class Session:
    """One visitor's session; its repr leaves out what would let another act as it."""

    id: str = field(repr=False)
    expires: float
    token_abid: str | None = None
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    notice: str = ""
    reveal: Reveal | None = None
    #: One-time ids of the forms shown and not yet sent, oldest first.
    forms: dict[str, None] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def csrf_ok(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), self.csrf.encode())

    def keep_form(self, form_id: str | None = None) -> str:
        """Remember a one-time form id (a new one unless given back); returns it."""
        form_id = form_id or new_form_id()
        with self._lock:
            self.forms[form_id] = None
            while len(self.forms) > MAX_FORMS:
                del self.forms[next(iter(self.forms))]
        return form_id

    def take_form(self, form_id: str) -> bool:
        """Whether ``form_id`` was waiting to be sent; it is not any more."""
        with self._lock:
            if form_id not in self.forms:
                return False
            del self.forms[form_id]
            return True

    def take_reveal(self) -> Reveal | None:
        reveal, self.reveal = self.reveal, None
        return reveal

    def take_notice(self) -> str:
        notice, self.notice = self.notice, ""
        return notice


class Sessions:
    """The session table; safe to use from the threads of a threaded server.

    Sign-in forms and signed-in sessions are kept apart: anyone can ask for
    sign-in forms by the thousand, and those must not push the signed-in
    administrators out.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._signing_in: dict[str, Session] = {}
        self._signed_in: dict[str, Session] = {}
        self._lock = threading.Lock()

    def new(self, token_abid: str | None = None, keep: bool = True) -> Session:
        """A fresh session: anonymous (for the sign-in form) or signed in as ``token_abid``;
        not kept (``keep=False``) for a page that only shows what a new one would look like."""
        lifetime = SIGN_IN_LIFETIME if token_abid is None else SESSION_LIFETIME
        session = Session(secrets.token_urlsafe(32), self.clock() + lifetime, token_abid)
        if not keep:
            return session
        table = self._signing_in if token_abid is None else self._signed_in
        with self._lock:
            self._drop_expired()
            while len(table) >= MAX_SESSIONS:
                del table[next(iter(table))]
            table[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        with self._lock:
            for table in (self._signed_in, self._signing_in):
                session = table.get(session_id)
                if session is not None:
                    if session.expires <= self.clock():
                        del table[session_id]
                        return None
                    return session
            return None

    def end(self, session: Session) -> None:
        with self._lock:
            self._signed_in.pop(session.id, None)
            self._signing_in.pop(session.id, None)

    def _drop_expired(self) -> None:
        now = self.clock()
        for table in (self._signed_in, self._signing_in):
            for key in [k for k, s in table.items() if s.expires <= now]:
                del table[key]
