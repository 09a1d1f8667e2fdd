"""``tokenstore users`` and ``tokenstore tokens``."""

from __future__ import annotations

import argparse
import sys

from .._errors import AuthenticationError, StoreError
from .._users import usernames
from ._base import Commands, _command, _group, _open
from ._output import Output, token_dict, user_dict
from ._values import _positive_int, _secret, parse_expiry

# -- users --------------------------------------------------------------------------------


def cmd_users_create(args: argparse.Namespace, out: Output) -> int:
    """``store.users.create``."""
    with _open(args) as store:
        out.record(user_dict(store.users.create(args.username, superuser=args.superuser)))
    return 0


def cmd_users_get(args: argparse.Namespace, out: Output) -> int:
    """``store.users.get``."""
    with _open(args, read=True) as store:
        out.record(user_dict(store.users.get(args.username)))
    return 0


def cmd_users_list(args: argparse.Namespace, out: Output) -> int:
    """``store.users.list``."""
    with _open(args, read=True) as store:
        users = [user_dict(u) for u in store.users.list(limit=args.limit, before=args.before)]
    out.rows(users, ["id", "username", "is_superuser", "created_at"])
    return 0


def _page_options(parser: argparse.ArgumentParser, metavar: str, before: str) -> None:
    """``--limit`` and ``--before``, the paging parameters of ``users.list`` and ``tokens.list``."""
    parser.add_argument(
        "--limit",
        type=_positive_int,
        help="only the newest this many, still listed oldest first (default: all)",
    )
    parser.add_argument(
        "--before",
        metavar=metavar,
        help=f"only {before}: with --limit, the page before it (default: up to the newest)",
    )


def add_users_commands(commands: Commands) -> None:
    """``tokenstore users ...``."""
    users = _group(
        commands,
        "users",
        "manage users, the owners of tokens",
        "  tokenstore users create alice\n  tokenstore users get alice\n  tokenstore users list",
    )
    p = _command(
        users, "create", cmd_users_create, "store.users.create", "add a user", aliases=["add"]
    )
    p.add_argument("username", help="1-150 letters, digits or _.@+-")
    p.add_argument("--superuser", action="store_true", help="mark the user as a superuser")
    p = _command(users, "get", cmd_users_get, "store.users.get", "show a user", aliases=["show"])
    p.add_argument("username", help="the user's name")
    p = _command(users, "list", cmd_users_list, "store.users.list", "list users, oldest first")
    _page_options(p, "USERNAME", "users added before this one")


# -- tokens -------------------------------------------------------------------------------


def cmd_tokens_create(args: argparse.Namespace, out: Output) -> int:
    """``store.tokens.create``; the secret is printed this once."""
    expires = None if args.expires is None else parse_expiry(args.expires)
    with _open(args) as store, store.atomic():
        token, secret = store.tokens.create(
            args.user, name=args.name, expires=expires, scopes=args.scope
        )
        try:  # shown before the commit: a secret nobody saw is no token to keep
            out.record({**token_dict(token), "secret": secret})
            sys.stdout.flush()
        except OSError as exc:  # a full disk, a closed pipe: the token rolls back
            raise StoreError(
                f"the secret could not be printed ({exc}): the token was not kept"
            ) from None
    print("Store this secret now: it is not kept and will not be shown again.", file=sys.stderr)
    return 0


def cmd_tokens_get(args: argparse.Namespace, out: Output) -> int:
    """``store.tokens.get``."""
    with _open(args, read=True) as store:
        out.record(token_dict(store.tokens.get(args.abid)))
    return 0


def cmd_tokens_list(args: argparse.Namespace, out: Output) -> int:
    """``store.tokens.list``."""
    with _open(args, read=True) as store:
        found = store.tokens.list(
            args.user, include_revoked=args.include_revoked, limit=args.limit, before=args.before
        )
        names = usernames(token.created_by_id for token in found)
        tokens = [{**token_dict(t), "user": names.get(t.created_by_id)} for t in found]
    out.rows(tokens, ["abid", "user", "name", "token", "expires", "revoked_at", "valid"])
    return 0


def cmd_tokens_revoke(args: argparse.Namespace, out: Output) -> int:
    """``store.tokens.revoke``."""
    with _open(args) as store:
        out.record(token_dict(store.tokens.revoke(args.abid)))
    return 0


def cmd_tokens_authenticate(args: argparse.Namespace, out: Output) -> int:
    """``store.tokens.authenticate``: exit 0 if the secret grants access, else 1 and why."""
    secret = _secret(args.secret)
    with _open(args, read=True) as store:
        try:
            token = store.tokens.authenticate(secret, scope=args.scope)
        except AuthenticationError as exc:
            out.record({"valid": False, "reason": type(exc).__name__, "message": str(exc)})
            return 1
        out.record({**token_dict(token), "valid": True})
    return 0


def add_tokens_commands(commands: Commands) -> None:
    """``tokenstore tokens ...``."""
    tokens = _group(
        commands,
        "tokens",
        "issue, check and revoke API tokens",
        "  tokenstore tokens create alice --name ci --expires 30d --scope snapshots:read\n"
        '  echo "$SECRET" | tokenstore tokens authenticate --scope snapshots:read\n'
        "  tokenstore tokens list --user alice\n"
        "  tokenstore tokens revoke apt_01JAZ6BQG0D53BD22B01XRS78E",
    )
    p = _command(
        tokens,
        "create",
        cmd_tokens_create,
        "store.tokens.create",
        "issue a token, shown once",
        prints="Prints the token and its secret, shown this once: the file keeps only its digest.",
    )
    p.add_argument("user", nargs="?", help="the owner's username (default: the system user)")
    p.add_argument("--name", help="what the token is for (default: no name)")
    p.add_argument(
        "--expires",
        metavar="DURATION_OR_TIME",
        help="a duration from now (30d) or an ISO-8601 time with a timezone "
        "(default: never expires)",
    )
    p.add_argument(
        "--scope",
        action="append",
        default=[],
        help="a scope the token grants, e.g. snapshots:read (repeatable) "
        "(default: none, which means unrestricted)",
    )
    p = _command(
        tokens,
        "get",
        cmd_tokens_get,
        "store.tokens.get",
        "show a token by its ABID",
        aliases=["show"],
    )
    p.add_argument("abid", help="the token's ABID (apt_...)")
    p = _command(tokens, "list", cmd_tokens_list, "store.tokens.list", "list tokens, oldest first")
    p.add_argument("--user", help="only this user's tokens (default: everyone's)")
    p.add_argument("--include-revoked", "--all", action="store_true", help="include revoked tokens")
    _page_options(p, "ABID", "tokens made before this one (apt_...)")
    p = _command(tokens, "revoke", cmd_tokens_revoke, "store.tokens.revoke", "revoke for good")
    p.add_argument("abid", help="the token's ABID (apt_...)")
    p = _command(
        tokens,
        "authenticate",
        cmd_tokens_authenticate,
        "store.tokens.authenticate",
        "check a secret: exit 0 if it grants access, 1 (with the reason) if not",
        aliases=["verify"],
        prints="Prints the token the secret belongs to; if refused, valid False, the "
        "reason (InvalidToken, ExpiredToken, RevokedToken or MissingScope) and the message.",
    )
    p.add_argument(
        "secret",
        nargs="?",
        default="-",
        help="the secret, or - to read it from stdin, which keeps it out of the process "
        "list and shell history",
    )
    p.add_argument("--scope", help="the scope it must grant (default: any)")
