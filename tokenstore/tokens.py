"""Users and API tokens: issued once, stored as a digest, checked fast."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import peewee

from .errors import NotFound, ValidationError
from .models import User

if TYPE_CHECKING:
    from .store import Store

_USERNAME = re.compile(r"[A-Za-z0-9_.@+-]{1,150}")


class Users:
    """``store.users``: the owners tokens and hooks belong to."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, username: str, superuser: bool = False) -> User:
        """Add a user; usernames are 1-150 letters, digits or ``_.@+-``, unique."""
        if not isinstance(username, str) or not _USERNAME.fullmatch(username):
            raise ValidationError(
                f"username {username!r} is not valid: use 1-150 letters, digits or _.@+-"
            )
        try:
            user: User = User.create(username=username, is_superuser=bool(superuser))
        except peewee.IntegrityError:
            raise ValidationError(f"username {username!r} is already taken") from None
        return user

    def get(self, username: str | int) -> User:
        """A user by username (or by integer id)."""
        if isinstance(username, int):
            user = User.get_or_none(User.id == username)
        else:
            user = User.get_or_none(User.username == username)
        if user is None:
            raise NotFound(f"no user {username!r}")
        return user

    def list(self) -> list[User]:
        """Every user, oldest first."""
        return list(User.select().order_by(User.id))


class Tokens:
    """``store.tokens``: issue, authenticate, revoke and list API tokens."""

    def __init__(self, store: Store, prefix: str) -> None:
        self.store = store
        self.prefix = prefix
