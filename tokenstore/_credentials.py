"""The shape of an API token secret, independent of any database.

Tokens follow GitHub's scheme: ``<prefix>_<30 random base62 chars><6 char
checksum>``. The prefix makes leaked tokens findable by secret scanners; the
CRC32 checksum lets :func:`looks_like_token` reject typos and random strings
offline (in a client, a secret scanner, or to tell a typo from an unknown key).
Only a SHA-256 digest and a four-character hint are ever stored, so a copy of
the database file does not hand out working credentials.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import zlib

from ._errors import ValidationError, shown

__all__ = [
    "DEFAULT_TOKEN_PREFIX",
    "SECRET_PREFIX",
    "check_prefix",
    "generate_token",
    "looks_like_legacy_token",
    "looks_like_secret",
    "looks_like_token",
    "quoted",
    "refuse_secret",
    "token_digest",
    "token_hint",
]

DEFAULT_TOKEN_PREFIX = "tsk"

#: How a hook's signing secret starts (Standard Webhooks).
SECRET_PREFIX = "whsec_"
#: A signing secret's form, in words for messages: the bare prefix would itself be taken for
#: a secret and left out where messages are cleaned of them (the CLI's error lines).
SECRET_FORM = f"{SECRET_PREFIX[:-1]} and an underscore, then a base64 key"

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_RANDOM_LENGTH = 30  # 30 * log2(62) ~ 178 bits of entropy
_CHECKSUM_LENGTH = 6  # 62**6 > 2**32, so any CRC32 fits
_HINT_LENGTH = 4
# A hint of a very short secret would disclose most of it.
_MIN_HINT_SOURCE = 16

_PREFIX_RE = re.compile(r"[a-z]{2,8}")
# ArchiveBox's tokens (``secrets.token_hex(16)``), which an import carries over as they are.
_LEGACY_TOKEN_RE = re.compile(r"[0-9a-f]{32}")
_TOKEN_RE = re.compile(
    rf"(?P<prefix>[a-z]{{2,8}})_(?P<random>[0-9A-Za-z]{{{_RANDOM_LENGTH}}})"
    rf"(?P<checksum>[0-9A-Za-z]{{{_CHECKSUM_LENGTH}}})"
)


# Every two-character base62 string, by value: three lookups encode any CRC32
# (62**6 > 2**32) without a loop over digits.
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
_PAIR_BASE = len(_PAIRS)


def _checksum(random_part: str) -> str:
    number = zlib.crc32(random_part.encode("ascii"))
    high, rest = divmod(number, _PAIR_BASE * _PAIR_BASE)
    middle, low = divmod(rest, _PAIR_BASE)
    return _PAIRS[high] + _PAIRS[middle] + _PAIRS[low]


def check_prefix(prefix: object) -> str:
    """A token prefix as given, if it is one: 2 to 8 lowercase ASCII letters."""
    if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
        raise ValidationError(
            f"token prefix must be 2 to 8 lowercase ASCII letters (a-z), got {quoted(prefix)}"
        )
    return prefix


def generate_token(prefix: str = DEFAULT_TOKEN_PREFIX) -> str:
    """Return a new secret; show it to the user once, then keep only its digest."""
    check_prefix(prefix)
    random_part = "".join(secrets.choice(_ALPHABET) for _ in range(_RANDOM_LENGTH))
    return f"{prefix}_{random_part}{_checksum(random_part)}"


def looks_like_token(text: object, prefix: str | None = None) -> bool:
    """Whether ``text`` has a token's shape and a correct checksum, checked offline.

    Safe to call on anything a client sent: it never raises.
    """
    if not isinstance(text, str):
        return False
    match = _TOKEN_RE.fullmatch(text)
    if match is None:
        return False
    if prefix is not None and match["prefix"] != prefix:
        return False
    return secrets.compare_digest(_checksum(match["random"]), match["checksum"])


def looks_like_legacy_token(text: object) -> bool:
    """Whether ``text`` has the shape of an ArchiveBox token: 32 lowercase hex digits.

    Such tokens have no prefix and no checksum, so a typo in one cannot be told
    from an unknown token; this only says it is not malformed.
    """
    return isinstance(text, str) and _LEGACY_TOKEN_RE.fullmatch(text) is not None


# A token or an ArchiveBox key anywhere in a text, glued to what surrounds it (``key=``,
# ``X-API-Key:``, a URL's ``?api_key=``). Only the prefix and ``_`` are consumed, so a
# match that fails its checksum does not hide a token right after it. A longer run of hex
# digits (a commit hash) is no ArchiveBox key.
_TOKEN_IN_TEXT = re.compile(
    rf"[a-z]{{2,8}}_(?=([0-9A-Za-z]{{{_RANDOM_LENGTH}}})([0-9A-Za-z]{{{_CHECKSUM_LENGTH}}}))"
)
_LEGACY_TOKEN_IN_TEXT = re.compile(r"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])")


def looks_like_secret(text: object) -> bool:
    """Whether ``text`` holds a secret given where a name or an id belongs: an API token of
    either kind, or a hook's signing secret, anywhere in it (pasted with its line end, in
    quotes, after ``Bearer`` or ``key=``). A message about it must not quote it back."""
    return isinstance(text, str) and (SECRET_PREFIX in text or holds_token(text))


def holds_token(text: str) -> bool:
    """Whether an API token of either kind is anywhere in ``text``, whatever is around it."""
    if _LEGACY_TOKEN_IN_TEXT.search(text):
        return True
    return any(_checksum(match[1]) == match[2] for match in _TOKEN_IN_TEXT.finditer(text))


def refuse_secret(value: object, what: str, instead: str) -> None:
    """Refuse a secret pasted where text kept in clear belongs, without quoting it."""
    if looks_like_secret(value):
        raise ValidationError(f"{what} looks like a secret (not shown), not {instead}")


def quoted(value: object) -> str:
    """A caller's value as a message about it quotes it: left out if it looks like a secret."""
    return "(a secret, not shown)" if looks_like_secret(value) else shown(value)


def token_digest(secret: str) -> str:
    """The only form of a secret the database keeps: a leaked file grants nothing."""
    if not isinstance(secret, str):
        raise ValidationError(f"token secret must be a str, got {type(secret).__name__}")
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def token_hint(secret: str) -> str:
    """Lets people tell their tokens apart (``'************' + hint``) without revealing one."""
    if not isinstance(secret, str):
        raise ValidationError(f"token secret must be a str, got {type(secret).__name__}")
    if len(secret) < _MIN_HINT_SOURCE:
        raise ValidationError(
            f"token secret is too short for a hint (need at least {_MIN_HINT_SOURCE} characters)"
        )
    return secret[-_HINT_LENGTH:]
