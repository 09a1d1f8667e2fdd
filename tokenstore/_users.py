"""Users: the owners tokens and hooks belong to, and paging back from the newest."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, TypeVar

import peewee

from ._credentials import looks_like_secret, quoted, refuse_secret
from ._errors import NotFound, ValidationError, about, shown
from ._inputs import check_flag, check_int, check_text
from ._models import User

# Django's rule (ArchiveBox's users are Django's): letters and digits of any script.
_USERNAME = re.compile(r"[\w.@+-]{1,150}")

M = TypeVar("M", bound=peewee.Model)

#: Ids asked for in one query: far below SQLite's and PostgreSQL's limits on parameters.
_IDS_AT_ONCE = 500


def usernames(ids: Iterable[int]) -> dict[int, str]:
    """The usernames of these users, by id: a listing names the owners it shows, and no others.

    A store may have many more users than a page of tokens has owners.
    """
    wanted = sorted(set(ids))
    found: dict[int, str] = {}
    for start in range(0, len(wanted), _IDS_AT_ONCE):
        chunk = wanted[start : start + _IDS_AT_ONCE]
        pairs: Any = User.select(User.id, User.username).where(User.id.in_(chunk)).tuples()
        found.update(pairs)
    return found


def newest(query: peewee.ModelSelect[M], limit: int | None) -> list[M]:
    """The first ``limit`` rows of a newest-first query (all, without one), oldest first.

    ``users.list`` and ``tokens.list`` page this way: ``limit`` keeps the newest,
    as ``tail`` does, and the page still reads oldest first.
    """
    if limit is not None:
        query = query.limit(check_int(limit, "limit", minimum=1))
    page = list(query)
    page.reverse()
    return page


def saved(user: User) -> User:
    """A User object given for a row: one never saved has no id, so it names no user."""
    if user.id is None:
        raise ValidationError(f"user {quoted(user.username)} is not saved yet")
    return user


def add_user(username: str, superuser: bool) -> User:
    """A new user of a name already checked: by ``Users.create``, or as another system kept it.

    The ArchiveBox import takes names ``Users.create`` would not (ArchiveBox
    makes its ``ADMIN_USERNAME`` a user without Django's check), so the rule
    on names is the caller's; uniqueness is checked here.
    """
    taken = ValidationError(f"username {quoted(username)} is already taken")
    # Looked up first: PostgreSQL's refused insert would still use up an id of its
    # sequence, and the next user's id would differ from SQLite's.
    if User.select().where(User.username == username).exists():
        raise taken
    try:
        # A savepoint inside an open transaction: on PostgreSQL a failed statement
        # would otherwise abort the caller's whole transaction.
        with User._meta.database.atomic():
            user: User = User.create(username=username, is_superuser=superuser)
    except peewee.IntegrityError:  # taken meanwhile, by another process
        raise taken from None
    return user


class Users:
    """``store.users``: the owners tokens and hooks belong to."""

    def create(self, username: str, superuser: bool = False) -> User:
        """Add a user; usernames are 1-150 letters or digits (any script) or ``_.@+-``, unique."""
        refuse_secret(username, "username", "a name")  # kept in clear, listed and printed
        if not isinstance(username, str) or not _USERNAME.fullmatch(username):
            raise ValidationError(
                f"username {quoted(username)} is not valid: use 1-150 letters, digits or _.@+-"
            )
        return add_user(username, check_flag(superuser, "superuser"))

    def get(self, username: str | int) -> User:
        """A user by username (or by integer id)."""
        if isinstance(username, int) and not isinstance(username, bool):
            user = User.get_or_none(User.id == check_int(username, "user id", minimum=1))
        else:
            user = User.get_or_none(User.username == check_text(username, "username"))
        if user is None:
            if looks_like_secret(username):
                # a secret pasted for a name must not end up in a log
                raise NotFound("no user of that name, which looks like a secret (not shown)")
            raise NotFound(f"no user {shown(username)}")
        return user

    def list(self, limit: int | None = None, before: User | str | int | None = None) -> list[User]:
        """Every user, oldest first (by id).

        ``limit`` keeps the newest that many and ``before`` (a user, a
        username or an id) only those added before it, as in ``tokens.list``:
        an application that maps each of its users onto one reads them a page
        at a time.
        """
        query = User.select().order_by(User.id.desc())
        if before is not None:
            with about("before"):
                after = saved(before) if isinstance(before, User) else self.get(before)
            query = query.where(User.id < after.id)
        return newest(query, limit)
