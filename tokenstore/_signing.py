"""Standard Webhooks signatures (https://www.standardwebhooks.com).

Following the published spec rather than inventing a scheme means any
receiver library for it (``standardwebhooks``, Svix, ...) can verify what we
send, and :func:`verify_webhook` can check what they send.

The signed content is ``f"{webhook-id}.{webhook-timestamp}."`` followed by the
raw body bytes; the signature header carries ``v1,<base64 HMAC-SHA256>``
entries separated by spaces, so a sender can sign with an old and a new secret
while receivers switch over.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import secrets as _secrets
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from ._credentials import SECRET_FORM, SECRET_PREFIX
from ._errors import ValidationError, WebhookVerificationError, shown
from ._inputs import check_int, check_text

__all__ = [
    "new_signing_secret",
    "sign",
    "signature_header",
    "signing_key",
    "verify_webhook",
]

_SECRET_BYTES = 24  # the size the spec's reference implementations generate
_BAD_SECRET = f"signing secret must be {SECRET_FORM}"
# Timestamps are whole seconds, in ASCII digits only (int() would read "+1", "1_0" and
# other scripts' digits); past the cap (some 30 million years) int() is not asked.
_TIMESTAMP_DIGITS = 15
_TIMESTAMP_RE = re.compile("0*([0-9]+)")


def new_signing_secret() -> str:
    """A fresh secret in the spec's ``whsec_<base64>`` form, ready to give to a receiver."""
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(_SECRET_BYTES)).decode("ascii")


def secret_version(secret: str) -> str:
    """A short fingerprint of a signing secret: another with each rotation, and no help in
    guessing the secret (16 hex digits of its SHA-256), so a page may carry it in a form."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()[:16]


def signing_key(secret: str) -> bytes:
    """Decode a secret into HMAC key bytes.

    The bare base64 form (without ``whsec_``) and missing ``=`` padding are
    accepted because other Standard Webhooks libraries accept them too. Error
    messages never quote the secret.
    """
    if not isinstance(secret, str):
        raise ValidationError(_BAD_SECRET)
    encoded = secret.removeprefix(SECRET_PREFIX)
    if "=" not in encoded:
        encoded += "=" * (-len(encoded) % 4)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError(_BAD_SECRET) from None
    if not key:
        raise ValidationError(_BAD_SECRET)
    return key


def _signature_bytes(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return hmac.new(key, signed, hashlib.sha256).digest()


def _check_message(msg_id: str, timestamp: int, body: bytes) -> None:
    if not isinstance(msg_id, str) or not msg_id:
        raise ValidationError("webhook message id must be a non-empty str")
    check_text(msg_id, "webhook message id")  # it is signed as UTF-8 and sent in a header
    # No longer than verify_webhook reads, or the signature could never be checked.
    check_int(timestamp, "webhook timestamp (Unix seconds)", maximum=10**_TIMESTAMP_DIGITS - 1)
    if not isinstance(body, bytes):
        raise ValidationError(f"webhook body must be bytes, got {type(body).__name__}")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature: the value of ``webhook-signature`` for one secret."""
    _check_message(msg_id, timestamp, body)
    digest = _signature_bytes(signing_key(secret), msg_id, timestamp, body)
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_header(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """Sign with every secret, so receivers on either side of a rotation accept the message."""
    if isinstance(secrets, str | bytes) or not isinstance(secrets, Iterable) or not secrets:
        raise ValidationError("signature_header needs a non-empty sequence of signing secrets")
    return " ".join(sign(secret, msg_id, timestamp, body) for secret in secrets)


class HeaderItems(Protocol):
    """What ``verify_webhook`` reads headers through: a ``Mapping``, or a header object
    that is none (``http.server``'s and ``http.client``'s, ``wsgiref``'s, werkzeug's)."""

    def items(self) -> Iterable[tuple[Any, Any]]: ...


def _header_pairs(headers: HeaderItems) -> list[tuple[Any, Any]]:
    """The (name, value) pairs of ``headers``, read once; an ``items()`` that yields
    something else, or raises, is the caller's mistake, named as such."""
    try:
        return [(name, value) for name, value in headers.items()]
    except Exception as exc:
        raise ValidationError(
            "headers must be a mapping of header names to values: its items() gave no "
            f"pairs ({type(exc).__name__})"
        ) from None


def _header(pairs: list[tuple[Any, Any]], wanted: str) -> str:
    """The one value of a signed header, in any case. Given twice, it is refused: which
    of the two the application goes on to read (its webhook-id, say) cannot be known."""
    values = [value for name, value in pairs if isinstance(name, str) and name.lower() == wanted]
    if not values:
        raise WebhookVerificationError(f"missing {wanted} header")
    if len(values) > 1:
        raise WebhookVerificationError(f"{wanted} header appears more than once")
    value = values[0]
    if not isinstance(value, str):
        raise WebhookVerificationError(f"{wanted} header is not text")
    if not value:
        raise WebhookVerificationError(f"{wanted} header is empty")
    return value


def _epoch_seconds(now: object) -> float:
    """``now`` as a float; an int past float's range is no finite number either."""
    if isinstance(now, bool) or not isinstance(now, int | float):
        what = type(now).__name__
    else:
        try:
            seconds = float(now)
        except OverflowError:
            seconds = math.inf
        if math.isfinite(seconds):
            return seconds
        what = shown(now)
    raise ValidationError(f"now must be a finite number of seconds since the epoch, got {what}")


def verify_webhook(
    secret: str,
    headers: HeaderItems,
    body: bytes | str,
    *,
    tolerance: int = 300,
    now: float | None = None,
) -> Any:
    """Check a received webhook and return its decoded JSON body.

    The timestamp window stops replays of captured requests; the signature
    check is constant-time so it leaks nothing about the expected value.
    ``body`` must be the exact bytes received: re-serialised JSON will not
    verify.
    """
    check_int(tolerance, "tolerance in seconds")
    current = time.time() if now is None else _epoch_seconds(now)
    if not callable(getattr(headers, "items", None)):
        raise ValidationError(f"headers must be a mapping, got {type(headers).__name__}")
    key = signing_key(secret)
    if isinstance(body, str):
        try:
            raw = body.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError("body is not valid Unicode (it holds a lone surrogate)") from None
    elif isinstance(body, bytes | bytearray):
        raw = bytes(body)
    else:
        raise ValidationError(f"body must be the bytes received, got {type(body).__name__}")

    pairs = _header_pairs(headers)
    msg_id = _header(pairs, "webhook-id")
    timestamp_text = _header(pairs, "webhook-timestamp").strip()
    signatures = _header(pairs, "webhook-signature")

    digits = _TIMESTAMP_RE.fullmatch(timestamp_text)
    if digits is None:
        raise WebhookVerificationError(
            "webhook-timestamp header must be an integer number of seconds since the epoch"
        )
    if len(digits[1]) > _TIMESTAMP_DIGITS:
        raise WebhookVerificationError(
            f"webhook-timestamp is too far in the future: {len(digits[1])} digits "
            f"(tolerance {tolerance} s)"
        )
    timestamp = int(digits[1])
    # Rounded up: a fraction of a second past the tolerance is shown past it.
    drift = current - timestamp
    if drift > tolerance:
        raise WebhookVerificationError(
            f"webhook-timestamp is {math.ceil(drift)} seconds old (tolerance {tolerance} s)"
        )
    if -drift > tolerance:
        raise WebhookVerificationError(
            f"webhook-timestamp is {math.ceil(-drift)} seconds in the future "
            f"(tolerance {tolerance} s)"
        )

    # The integer read is signed, as the reference libraries do: leading zeros in the
    # header change no signature, and a signature over them matches none.
    try:
        expected = _signature_bytes(key, msg_id, timestamp, raw)
    except UnicodeEncodeError:
        raise WebhookVerificationError("webhook-id header is not valid Unicode") from None
    checked = 0
    for entry in signatures.split():
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue
        checked += 1
        try:
            candidate = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(candidate, expected):
            break
    else:
        if checked == 0:
            raise WebhookVerificationError("webhook-signature header has no v1 signature")
        raise WebhookVerificationError(
            f"no v1 signature in the webhook-signature header matches ({checked} checked)"
        )

    try:
        return json.loads(raw, parse_constant=_not_json)
    except (ValueError, RecursionError):
        raise WebhookVerificationError("webhook body is not valid JSON") from None


def _not_json(word: str) -> Any:
    """Python reads ``NaN`` and ``Infinity`` as numbers; JSON (RFC 8259) has no such words."""
    raise ValueError(f"{word} is not JSON")
