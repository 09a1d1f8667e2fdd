"""API tokens: issued once, stored as a digest, checked fast."""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import peewee

from ._abid import ABID
from ._backend import Backend, row_lock
from ._credentials import (
    DEFAULT_TOKEN_PREFIX,
    check_prefix,
    holds_token,
    looks_like_legacy_token,
    looks_like_token,
    quoted,
    refuse_secret,
    token_digest,
    token_hint,
)
from ._errors import (
    ExpiredToken,
    InvalidABID,
    InvalidToken,
    MissingScope,
    NotFound,
    RevokedToken,
    ValidationError,
    about,
    shown,
)
from ._fork import on_fork_in_child
from ._inputs import MAX_SPAN, check_flag, check_header_name, check_items, check_span, check_text
from ._models import SYSTEM_USERNAME, APIToken, User, unknown_owner
from ._request_token import DEFAULT_API_KEY_HEADER, HeaderLookup, token_in
from ._rows import Loader, not_utf8
from ._times import format_time, to_stored_time
from ._users import Users, newest, saved

logger = logging.getLogger("tokenstore.tokens")

_SCOPE = re.compile(r"[a-z0-9:._-]{1,100}")
#: Every check converts a token's scopes (once per changed row): their number is kept small.
MAX_SCOPES = 100

#: ``last_used_at`` moves in steps of this, and is written at most this late.
LAST_USED_RESOLUTION = timedelta(minutes=1)

MAX_NAME_LENGTH = 255

_NO_TIME = timedelta(0)
_MILLISECOND = timedelta(milliseconds=1)
_UNDER_A_MILLISECOND = _MILLISECOND - timedelta(microseconds=1)

#: How many distinct token rows ``Tokens._remember`` keeps converted.
_CONVERTED_ROWS = 128
#: Uses written in one transaction by ``flush_uses`` (about 9 µs each on SQLite).
FLUSH_BATCH = 500

# The digest is the key a check looks the row up by: given, not read back (see Loader).
_TOKENS = Loader(APIToken, given=("token_digest",))
_TABLE = APIToken._meta.table_name
# The owner must still exist: a user deleted by a program that does not enforce foreign
# keys (the sqlite3 shell, by default) leaves its tokens behind, which must not work.
_SELECT_BY_DIGEST = (
    f'SELECT {_TOKENS.columns} FROM "{_TABLE}" WHERE token_digest = ? AND EXISTS '
    f'(SELECT 1 FROM "tokenstore_user" AS owner WHERE owner."id" = "{_TABLE}"."created_by_id")'
)
_REVOKED_AT = _TOKENS.at["revoked_at"]
_SCOPES_AT = _TOKENS.at["scopes"]

_TOUCH = (
    f'UPDATE "{_TABLE}" SET "last_used_at" = ? '
    'WHERE "id" = ? AND ("last_used_at" IS NULL OR "last_used_at" < ?)'
)
# The owner's row lock: on PostgreSQL two creators for one owner count one after the other.
_LOCK_OWNER = row_lock(User._meta.table_name)
# A token's row lock: a revoker waits there for another revocation of it to commit.
_LOCK_TOKEN = row_lock(_TABLE)
_COUNT_LIVE = (
    f'SELECT count(*) FROM "{_TABLE}" WHERE "created_by_id" = ? AND "revoked_at" IS NULL '
    'AND ("expires" IS NULL OR "expires" >= ?)'
)


def _shown(data: dict[str, Any]) -> str:
    """How errors name a token: its ABID and redacted form, never anything secret."""
    return f"{data['abid']} (************{data['token_hint']})"


def _check_scopes(scopes: Iterable[str]) -> list[str]:
    if isinstance(scopes, str):
        raise ValidationError(
            f"scopes must be a list of strings, got the string {quoted(scopes)} "
            f"(write [{quoted(scopes)}] for one scope)"
        )
    items = [_check_scope(scope) for scope in check_items(scopes, "scopes", "strings")]
    for scope in items:
        refuse_secret(scope, "scope", "a scope")  # kept in clear, listed and quoted
    kept = sorted(set(items))
    if len(kept) > MAX_SCOPES:
        raise ValidationError(f"a token names at most {MAX_SCOPES} scopes, got {len(kept)}")
    return kept


def _check_stored_scopes(data: dict[str, Any]) -> None:
    """A row's scopes edited into something else (a JSON string would grant each part of
    itself to ``in``) make the token grant nothing: the row is damaged."""
    scopes = data["scopes"]
    if not (isinstance(scopes, list) and all(isinstance(scope, str) for scope in scopes)):
        raise ValidationError(
            f"API token {data['abid']}: its stored scopes are not a list of strings "
            "(the row was changed outside tokenstore)"
        )


def _check_scope(scope: object) -> str:
    if not isinstance(scope, str) or not _SCOPE.fullmatch(scope):
        raise ValidationError(
            f"scope {quoted(scope)} is not valid: use 1-100 characters from a-z, 0-9 and :._-"
            + _several(scope)
        )
    return scope


def _several(scope: object) -> str:
    """What to add when a scope is a list of them in one string (``"read,write"``)."""
    parts = re.split(r"[,\s]+", scope.strip()) if isinstance(scope, str) else []
    if len(parts) < 2 or not all(_SCOPE.fullmatch(part) for part in parts):
        return ""
    return (
        "; it holds several: scopes are given one each, as items of a list "
        f"(scopes={parts!r}), or {' '.join(f'--scope {part}' for part in parts)}"
    )


def live_from(moment: datetime) -> datetime:
    """The earliest expiry that ``authenticate`` still accepts at ``moment``.

    Expiries are stored to the millisecond, and a token expires once
    ``moment`` is past its expiry, by however little. So ``moment`` rounds up
    to the millisecond: a token expired by a microsecond is no longer live.
    """
    return to_stored_time(moment + _UNDER_A_MILLISECOND)


class Tokens:
    """``store.tokens``: issue, authenticate, revoke and list API tokens.

    ``max_tokens_per_user`` caps the *live* tokens (neither revoked nor
    expired) one user may hold. At the cap, ``create()`` is refused with a
    ValidationError; nothing is revoked behind the user's back, since an
    automatic revocation would break whichever script holds the oldest key.
    ``None`` means no cap.

    Scopes are strings of ``a-z0-9:._-``; a token issued without any is
    unrestricted, like every ArchiveBox token. Secrets of any prefix are
    accepted (the digest decides), so changing the store's prefix does not
    lock out tokens issued before.
    """

    def __init__(
        self,
        db: Backend,
        users: Users,
        clock: Callable[[], datetime],
        prefix: str = DEFAULT_TOKEN_PREFIX,
        *,
        max_tokens_per_user: int | None = None,
        header: str = DEFAULT_API_KEY_HEADER,
    ) -> None:
        check_prefix(prefix)
        if max_tokens_per_user is not None and (
            type(max_tokens_per_user) is not int or max_tokens_per_user < 1
        ):
            raise ValidationError(
                f"max_tokens_per_user must be a positive int or None, got {max_tokens_per_user!r}"
            )
        self.db = db
        self.users = users
        self.clock = clock
        self.prefix = prefix
        self.max_tokens_per_user = max_tokens_per_user
        self.header = check_header_name(header, "header")  # read on every request: checked once
        # digest -> the row last read for it and its values
        self._converted: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}
        self._select_by_digest = db.sql(_SELECT_BY_DIGEST)
        self._lookup = threading.local()  # per thread: its connection and a cursor on it
        self._touch_sql = db.sql(_TOUCH)
        self._uses: dict[str, datetime] = {}  # stored token id -> its last use, not yet written
        self._uses_lock = threading.Lock()
        # The stored time of the latest use noted; uses in the same millisecond share it.
        self._stamp = datetime.min.replace(tzinfo=UTC)
        self._flusher: threading.Timer | None = None
        self._count_live = db.sql(_COUNT_LIVE)
        self._lock_owner = db.sql(_LOCK_OWNER)
        self._lock_token = db.sql(_LOCK_TOKEN)
        on_fork_in_child(self._start_afresh)

    # -- issuing -----------------------------------------------------------------------

    def create(
        self,
        user: User | str | int | None = None,
        name: str | None = None,
        expires: datetime | timedelta | None = None,
        scopes: Iterable[str] = (),
    ) -> tuple[APIToken, str]:
        """Issue a token for ``user`` (default: the system user); returns it and its secret.

        The secret is returned this once and never stored; show it to the user
        now. ``expires`` is an aware datetime, or a timedelta from the store's
        clock; it must lie in the future. ``scopes`` limit what the token may
        do; a token with no scopes is unrestricted.
        """
        owner = self._owner(user)
        if name is not None:
            check_text(name, "token name", max_length=MAX_NAME_LENGTH, kept_as="a name")
        moment = self.clock()
        now = to_stored_time(moment)
        expiry = self._expiry(expires, now)
        scope_list = _check_scopes(scopes)
        secret = APIToken.generate_secret_token(self.prefix)
        token = APIToken(
            created_by=owner.id,
            created_at=now,
            name=name,
            token_digest=token_digest(secret),
            token_hint=token_hint(secret),
            expires=expiry,
            scopes=scope_list,
        )
        try:
            with self.db.atomic():
                self._check_limit(owner, moment)
                token.save(force_insert=True)
        except peewee.IntegrityError as exc:
            missing = unknown_owner(exc, owner.id)
            if missing is not None:
                raise missing from None
            raise
        return token, secret

    def _owner(self, user: User | str | int | None) -> User:
        if user is None:
            return self.users.get(SYSTEM_USERNAME)
        if isinstance(user, User):
            return saved(user)
        if isinstance(user, str | int) and not isinstance(user, bool):
            return self.users.get(user)
        raise ValidationError(f"user must be a User, a username or an id, got {shown(user)}")

    @staticmethod
    def _expiry(expires: datetime | timedelta | None, now: datetime) -> datetime | None:
        if expires is None:
            return None
        if isinstance(expires, timedelta):
            expires = now + check_span(expires, "expires", allow_zero=False)
        if not isinstance(expires, datetime):
            raise ValidationError(
                f"expires must be a datetime, a timedelta or None, got {type(expires).__name__}"
            )
        with about("expires"):  # naive, or beyond datetime's range once in UTC
            expiry = to_stored_time(expires)
        if expiry <= now:
            raise ValidationError(
                f"expires {format_time(expiry)} is not in the future (now is {format_time(now)})"
            )
        if expiry - now > MAX_SPAN:
            raise ValidationError(
                f"expires {format_time(expiry)} is more than {MAX_SPAN.days} days from now"
            )
        return expiry

    def _check_limit(self, owner: User, moment: datetime) -> None:
        """Runs inside the insert's write transaction, so two creators cannot both squeeze in.

        Live is what ``authenticate`` accepts at ``moment`` (see ``live_from``).
        """
        if self.max_tokens_per_user is None:
            return
        conn = self.db.connection()
        conn.execute(self._lock_owner, (owner.id,))
        since = format_time(live_from(moment))
        (live,) = conn.execute(self._count_live, (owner.id, since)).fetchone()
        if live >= self.max_tokens_per_user:
            raise ValidationError(
                f"user {owner.username!r} already has {live} live API tokens, the most allowed "
                f"({self.max_tokens_per_user}); revoke one first"
            )

    # -- checking ----------------------------------------------------------------------

    def authenticate(self, secret: str, scope: str | None = None) -> APIToken:
        """The token a secret belongs to, if it grants access (to ``scope``, when given).

        Raises InvalidToken (malformed, bad checksum, unknown), RevokedToken,
        ExpiredToken or MissingScope; messages never contain the secret. One
        indexed SELECT by digest, and never a write: the use is noted in
        memory and written within a minute (``flush_uses``; also at
        ``store.close()``), so checking a token never waits for the write
        lock. Safe from several threads.

        The row is read on every call, so a revocation or an edit made by any
        process counts at once.
        """
        if scope is not None:
            _check_scope(scope)  # a caller's mistake, so it fails whatever the secret
        if type(secret) is not str:
            if not isinstance(secret, str):
                raise InvalidToken("API token is missing or not a string")
            secret = str.__str__(secret)  # a framework's str subclass: its text, not its __str__
        try:  # credentials.token_digest, inlined: this is the hot path
            digest = hashlib.sha256(secret.encode()).hexdigest()
        except UnicodeEncodeError:
            raise InvalidToken("API token is malformed") from None
        conn, cursor = self._lookup_cursor()
        try:
            row = cursor.execute(self._select_by_digest, (digest,)).fetchone()
        except Exception as exc:
            if (damaged := not_utf8(APIToken, exc, conn)) is None:
                raise
            raise damaged from None
        if row is None:
            # Checked only on a miss, where it tells a mistyped secret from an unknown one;
            # a hit has proved the secret already: its digest is the one stored, byte for byte.
            if not (looks_like_token(secret) or looks_like_legacy_token(secret)):
                if holds_token(secret):  # a header's value copied whole, a line end ...
                    raise InvalidToken(
                        "API token is malformed: a token is in it with more around it (a "
                        "'Bearer ' prefix, quotes, blanks or a line end): pass the token alone"
                    )
                raise InvalidToken("API token is malformed or fails its checksum")
            raise InvalidToken("API token is not recognised")
        known = self._converted.get(digest)
        if known is not None and known[0] == row:
            data, fresh = known[1], False
        else:
            data, fresh = _TOKENS.values(row, digest), True
            if row[_SCOPES_AT] != "[]":  # no scopes, as most tokens: nothing to check
                _check_stored_scopes(data)
        now = self.clock()
        if row[_REVOKED_AT] is not None:
            raise RevokedToken(
                f"API token {_shown(data)} was revoked at {format_time(data['revoked_at'])}"
            )
        expires = data["expires"]
        if expires is not None and expires < now:
            raise ExpiredToken(f"API token {_shown(data)} expired at {format_time(expires)}")
        if scope is not None and data["scopes"] and scope not in data["scopes"]:
            raise MissingScope(
                f"API token {_shown(data)} lacks scope {quoted(scope)}; "
                f"it has: {', '.join(data['scopes'])}"
            )
        last_used = data["last_used_at"]
        stale = last_used is None or now - last_used >= LAST_USED_RESOLUTION
        if stale and not self.db.read_only:  # a read-only store records nothing
            if not fresh:
                data = dict(data)
            data["last_used_at"] = self._note_use(row[0], now)  # as a SELECT after the flush
            fresh = True
        if fresh:
            self._remember(digest, row, data)
        values = dict(data)  # the caller's to change; the memo's stays as it is
        values["scopes"] = list(data["scopes"])
        return APIToken.from_stored(values, snapshot=data)

    def _start_afresh(self) -> None:
        """In a forked child: no cursor on the parent's connection, and none of its uses.

        The parent writes the uses it noted; its flush timer (and whatever
        thread held the lock at the fork) does not exist here.
        """
        self._lookup = threading.local()
        self._uses = {}
        self._uses_lock = threading.Lock()
        self._flusher = None

    def _lookup_cursor(self) -> tuple[Any, Any]:
        """This thread's connection, and the cursor the digest lookup runs on.

        The cursor is made once per connection, not per check: beside one
        indexed SELECT, making and dropping a cursor is a good part of what
        a check costs in Python. A connection replaced (closed, lost) gets
        a cursor of its own.
        """
        conn = self.db.connection()
        held = getattr(self._lookup, "held", None)
        if held is None or held[0] is not conn:
            held = self._lookup.held = (conn, conn.cursor())
        return held

    def _remember(self, digest: str, row: tuple[Any, ...], data: dict[str, Any]) -> None:
        """Keep a token row's values for the next check of the same row; never to be changed.

        A script uses its key over and over. The memo is keyed by digest and
        holds the row it converted: a row that changed in any way (revoked,
        used, edited) no longer matches, and its new values replace the old.
        The values hold the use noted here, as the row will once it is
        flushed, so the next check needs no copy. It is kept small: every row
        it holds stays in memory, and the few busy keys are what it is for.
        """
        if len(self._converted) >= _CONVERTED_ROWS:
            self._converted.clear()
        self._converted[digest] = (row, data)

    def _note_use(self, token_id: str, now: datetime) -> datetime:
        """Remember a use, to be written by ``flush_uses``: within a minute, or at ``close``.

        Returns the time of use as it will be stored: a use noted less than a
        minute ago stands, so a busy token costs a look-up here, not a note.
        """
        noted = self._uses.get(token_id)
        if noted is not None and now - noted < LAST_USED_RESOLUTION:
            return noted
        stamp = self._stamp
        if not _NO_TIME <= now - stamp < _MILLISECOND:  # uses in one millisecond share it
            stamp = self._stamp = to_stored_time(now)
        with self._uses_lock:
            self._uses[token_id] = stamp
            self._start_flusher()
        return stamp

    def _start_flusher(self) -> None:
        """Flush within a minute, unless a timer is already set; the caller holds the lock."""
        if self._flusher is None:
            self._flusher = threading.Timer(
                LAST_USED_RESOLUTION.total_seconds(), self._flush_in_background
            )
            self._flusher.daemon = True
            self._flusher.start()

    def _flush_in_background(self) -> None:
        try:
            self.flush_uses()
        finally:
            self.db.close()  # the timer thread's own connection

    def flush_uses(self) -> int:
        """Write the uses ``authenticate`` noted since the last flush; returns how many.

        One conditional UPDATE each, ``FLUSH_BATCH`` to a transaction, so other
        writers never wait long behind a busy minute: a later use already
        written (by another process) is never moved back. ``last_used_at`` is a
        quiet field, so no change event. Failing to record use (say, the file
        is locked or read-only) must not deny access, so it is logged, not
        raised; the uses are kept, and the timer set to try again a minute
        later, as ``authenticate`` will not note them again. Inside the
        caller's transaction they are written in it and kept as well, since
        it may yet roll back; written again, a use changes nothing.
        """
        return self._flush(retry=True)

    def _flush(self, retry: bool) -> int:
        """``flush_uses``; ``close()`` passes ``retry=False``: no timer outlives the store."""
        inside = self.db.writing_here()
        with self._uses_lock:
            if inside:
                uses, timer = dict(self._uses), None
            else:
                uses, self._uses = self._uses, {}
                timer, self._flusher = self._flusher, None
        if timer is not None:
            timer.cancel()
        if not uses:
            return 0
        noted = list(uses.items())
        for start in range(0, len(noted), FLUSH_BATCH):
            try:
                with self.db.write(quiet=True) as conn:
                    for token_id, when in noted[start : start + FLUSH_BATCH]:
                        stamp = format_time(when)
                        conn.execute(self._touch_sql, (stamp, token_id, stamp))
            except peewee.DatabaseError as exc:
                left = dict(noted[start:])
                logger.warning("could not record the use of %d API tokens: %s", len(left), exc)
                with self._uses_lock:
                    self._uses = left | self._uses  # a use noted meanwhile is the later one
                    if retry:
                        self._start_flusher()
                return start
        return len(noted)

    # -- managing ----------------------------------------------------------------------

    def revoke(self, token: APIToken | str) -> APIToken:
        """Revoke a token (or its ABID) for good; revoking it again changes nothing."""
        abid = token.abid if isinstance(token, APIToken) else token
        with self.db.atomic():
            current = self.get(abid)
            if current.revoked_at is None:
                # Another revocation may be committing (PostgreSQL reads do not wait for
                # it): wait for the row, then read what it holds now.
                stored_id = APIToken.id.db_value(current.id)
                self.db.connection().execute(self._lock_token, (stored_id,))
                current = self.get(abid)
            if current.revoked_at is None:
                current.revoked_at = to_stored_time(self.clock())
                current.save()
        if isinstance(token, APIToken):  # so the caller's copy says revoked too
            token.adopt(current)
        return current

    def get(self, abid: str) -> APIToken:
        """A token by its ABID (``apt_...``, any case), revoked or not.

        Error messages never repeat what was given unless it is an ABID: a
        secret pasted here by mistake must not end up in a log.
        """
        if looks_like_token(abid):
            raise ValidationError("that is an API token secret, not a token's ABID (apt_...)")
        try:
            wanted = ABID.parse(abid, prefix=APIToken.abid_prefix).canonical
        except InvalidABID as exc:
            raise ValidationError(
                f"not an API token ABID ({exc}): a token's ABID is apt_ and 26 letters and "
                "digits, as store.tokens.list() and `tokenstore tokens list --user NAME` show "
                "them; a token is not found by its user's name"
            ) from None
        token: APIToken | None = APIToken.get_or_none(APIToken.abid == wanted)
        if token is None:
            raise NotFound(f"no API token {wanted}")
        return token

    def list(
        self,
        user: User | str | int | None = None,
        include_revoked: bool = False,
        limit: int | None = None,
        before: APIToken | str | None = None,
    ) -> list[APIToken]:
        """Tokens, oldest first: one user's (or everyone's), expired ones included.

        ``limit`` keeps the newest that many, as ``tail`` does, and ``before``
        (a token or its ``apt_...`` ABID) only those made before it: passing
        the first token of one page gives the page before it, so a store of
        many tokens is read a page at a time, back from the newest.
        """
        newest_first = (APIToken.created_at.desc(), APIToken.abid.desc())
        query = APIToken.select().order_by(*newest_first)
        if user is not None:
            query = query.where(APIToken.created_by == self._owner(user).id)
        if not check_flag(include_revoked, "include_revoked"):
            query = query.where(APIToken.revoked_at.is_null())
        if before is not None:
            with about("before"):
                after = self.get(before.abid if isinstance(before, APIToken) else before)
            query = query.where(
                peewee.Tuple(APIToken.created_at, APIToken.abid)
                < peewee.Tuple(format_time(after.created_at), after.abid)
            )
        return newest(query, limit)

    def token_from_request(
        self, headers: HeaderLookup, query: Mapping[str, Any] | str | None = None
    ) -> str | None:
        """``token_from_request()`` with this store's API-key header."""
        return token_in(headers, query, self.header)
