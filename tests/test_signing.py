"""Standard Webhooks signing, cross-checked against the ``standardwebhooks`` package."""

from __future__ import annotations

import base64
import email.message
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime
from typing import Any
from wsgiref.headers import Headers as WSGIHeaders

import pytest
import standardwebhooks

from tokenstore._errors import ValidationError, WebhookVerificationError
from tokenstore._signing import (
    new_signing_secret,
    sign,
    signature_header,
    signing_key,
    verify_webhook,
)

BODY = json.dumps({"type": "user.created", "data": {"pk": 1}}).encode()
MSG_ID = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"


def headers_for(secret: str, body: bytes = BODY, *, timestamp: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, MSG_ID, ts, body),
    }


def test_new_secret_format() -> None:
    secret = new_signing_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret[6:], validate=True)) == 24
    assert signing_key(secret) == base64.b64decode(secret[6:])
    assert new_signing_secret() != secret


def test_sign_matches_the_spec_formula() -> None:
    secret = new_signing_secret()
    expected = hmac.new(
        base64.b64decode(secret[6:]), f"{MSG_ID}.1700000000.".encode() + BODY, hashlib.sha256
    ).digest()
    assert sign(secret, MSG_ID, 1700000000, BODY) == "v1," + base64.b64encode(expected).decode()


def test_spec_example_vector() -> None:
    # The example from the Standard Webhooks reference libraries' test suites.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    assert (
        sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_our_signature_is_accepted_by_standardwebhooks() -> None:
    secret = new_signing_secret()
    headers = headers_for(secret)
    assert standardwebhooks.Webhook(secret).verify(BODY, headers) == json.loads(BODY)


def test_standardwebhooks_signature_is_accepted_by_us() -> None:
    secret = new_signing_secret()
    now = datetime.now(tz=UTC)
    signature = standardwebhooks.Webhook(secret).sign(MSG_ID, now, BODY.decode())
    headers = {
        "Webhook-Id": MSG_ID,
        "Webhook-Timestamp": str(int(now.timestamp())),
        "Webhook-Signature": signature,
    }
    assert verify_webhook(secret, headers, BODY) == json.loads(BODY)
    assert verify_webhook(secret, headers, BODY.decode()) == json.loads(BODY)


def test_headers_are_case_insensitive() -> None:
    secret = new_signing_secret()
    headers = {k.upper(): v for k, v in headers_for(secret).items()}
    assert verify_webhook(secret, headers, BODY)["type"] == "user.created"


def test_bare_base64_secret_is_accepted() -> None:
    secret = new_signing_secret()
    assert signing_key(secret[6:]) == signing_key(secret)
    headers = headers_for(secret)
    assert verify_webhook(secret[6:], headers, BODY) == json.loads(BODY)


def test_unpadded_secret_is_accepted_like_standardwebhooks_does() -> None:
    key = b"0123456789abcdefghij"  # 20 bytes -> base64 ends with "="
    encoded = base64.b64encode(key).decode()
    assert encoded.endswith("=")
    assert signing_key("whsec_" + encoded.rstrip("=")) == key


def test_tampered_body_is_rejected() -> None:
    secret = new_signing_secret()
    headers = headers_for(secret)
    with pytest.raises(WebhookVerificationError, match=r"no v1 signature .* matches"):
        verify_webhook(secret, headers, BODY.replace(b"1", b"2"))


def test_wrong_secret_is_rejected() -> None:
    headers = headers_for(new_signing_secret())
    with pytest.raises(WebhookVerificationError, match="no v1 signature"):
        verify_webhook(new_signing_secret(), headers, BODY)


def test_changed_id_or_timestamp_is_rejected() -> None:
    secret = new_signing_secret()
    headers = headers_for(secret)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(secret, {**headers, "webhook-id": "msg_other"}, BODY)
    moved = str(int(headers["webhook-timestamp"]) + 1)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(secret, {**headers, "webhook-timestamp": moved}, BODY)


def test_stale_timestamp_is_rejected_with_how_far_off() -> None:
    secret = new_signing_secret()
    headers = headers_for(secret, timestamp=1_700_000_000)
    with pytest.raises(WebhookVerificationError, match=r"400 seconds old \(tolerance 300 s\)"):
        verify_webhook(secret, headers, BODY, now=1_700_000_400)
    # Inside the window it passes, so the rejection above was about the time.
    assert verify_webhook(secret, headers, BODY, now=1_700_000_300) == json.loads(BODY)


def test_future_timestamp_is_rejected_with_how_far_off() -> None:
    secret = new_signing_secret()
    headers = headers_for(secret, timestamp=1_700_000_000)
    with pytest.raises(WebhookVerificationError, match="500 seconds in the future"):
        verify_webhook(secret, headers, BODY, now=1_699_999_500)
    assert verify_webhook(secret, headers, BODY, now=1_699_999_700) == json.loads(BODY)


def test_a_timestamp_a_fraction_of_a_second_past_the_tolerance_says_so() -> None:
    """Rounded to the nearest second, 300.4 s away read "300 seconds ... (tolerance 300 s)"."""
    secret = new_signing_secret()
    headers = headers_for(secret, timestamp=1_700_000_000)
    with pytest.raises(WebhookVerificationError, match=r" 301 seconds old \(tolerance 300 s\)"):
        verify_webhook(secret, headers, BODY, now=1_700_000_300.4)
    with pytest.raises(WebhookVerificationError, match=r" 301 seconds in the future \(toler"):
        verify_webhook(secret, headers, BODY, now=1_699_999_699.6)


@pytest.mark.parametrize("digits", [16, 400])
def test_a_timestamp_of_too_many_digits_is_said_to_be_too_far_in_the_future(digits: int) -> None:
    """It is an integer: the message said it must be one."""
    secret = new_signing_secret()
    headers = {**headers_for(secret), "webhook-timestamp": "9" * digits}
    with pytest.raises(WebhookVerificationError, match="is too far in the future: "):
        verify_webhook(secret, headers, BODY)


def test_tolerance_is_configurable() -> None:
    secret = new_signing_secret()
    headers = headers_for(secret, timestamp=1_700_000_000)
    with pytest.raises(WebhookVerificationError, match="tolerance 5 s"):
        verify_webhook(secret, headers, BODY, now=1_700_000_010, tolerance=5)
    assert verify_webhook(secret, headers, BODY, now=1_700_000_010, tolerance=10)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_is_named(missing: str) -> None:
    secret = new_signing_secret()
    headers = headers_for(secret)
    del headers[missing]
    with pytest.raises(WebhookVerificationError, match=f"missing {missing} header"):
        verify_webhook(secret, headers, BODY)


@pytest.mark.parametrize("value", ["", "abc", "1.7e9", "-5", "1700000000.5", "\uff11\uff17"])
def test_non_integer_timestamp_is_rejected(value: str) -> None:
    secret = new_signing_secret()
    headers = {**headers_for(secret), "webhook-timestamp": value}
    with pytest.raises(WebhookVerificationError, match="webhook-timestamp header"):
        verify_webhook(secret, headers, BODY)


def test_a_message_id_that_is_not_unicode_is_rejected() -> None:
    """Headers built by hand (or decoded with surrogateescape) may hold a lone surrogate."""
    secret = new_signing_secret()
    headers = {**headers_for(secret), "webhook-id": "msg_\ud800"}
    with pytest.raises(WebhookVerificationError, match="webhook-id header is not valid Unicode"):
        verify_webhook(secret, headers, BODY)


def test_second_of_several_signatures_matches() -> None:
    old, new = new_signing_secret(), new_signing_secret()
    ts = int(time.time())
    header = signature_header([old, new], MSG_ID, ts, BODY)
    first, second = header.split(" ")
    assert first == sign(old, MSG_ID, ts, BODY)
    assert second == sign(new, MSG_ID, ts, BODY)
    headers = {"webhook-id": MSG_ID, "webhook-timestamp": str(ts), "webhook-signature": header}
    assert verify_webhook(new, headers, BODY) == json.loads(BODY)
    assert verify_webhook(old, headers, BODY) == json.loads(BODY)
    assert standardwebhooks.Webhook(new).verify(BODY, headers) == json.loads(BODY)
    # Junk and other versions before the good one are skipped, not fatal.
    messy = f"v2,abc v1,!!notbase64 v1a,xyz {second}"
    assert verify_webhook(new, {**headers, "webhook-signature": messy}, BODY)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(new_signing_secret(), headers, BODY)


def test_signature_header_without_v1_entry() -> None:
    secret = new_signing_secret()
    headers = {**headers_for(secret), "webhook-signature": "v2,abc"}
    with pytest.raises(WebhookVerificationError, match="no v1 signature"):
        verify_webhook(secret, headers, BODY)


def test_signature_header_needs_secrets() -> None:
    with pytest.raises(ValidationError):
        signature_header([], MSG_ID, 1, BODY)
    with pytest.raises(ValidationError):
        signature_header(new_signing_secret(), MSG_ID, 1, BODY)


def test_invalid_json_body_is_a_verification_error() -> None:
    secret = new_signing_secret()
    body = b"not json"
    with pytest.raises(WebhookVerificationError, match="not valid JSON"):
        verify_webhook(secret, headers_for(secret, body), body)


@pytest.mark.parametrize("word", ["NaN", "Infinity", "-Infinity"])
def test_a_body_with_a_number_json_does_not_have_is_not_valid_json(word: str) -> None:
    secret = new_signing_secret()
    body = b'{"value": %s}' % word.encode()
    with pytest.raises(WebhookVerificationError, match="not valid JSON"):
        verify_webhook(secret, headers_for(secret, body), body)


SECRET_LOOKALIKE = "whsec_c2VjcmV0IQ!!"


@pytest.mark.parametrize(
    "bad",
    ["", "whsec_", "whsec_!!!!", "whsec_Q", "whsec_ab cd", SECRET_LOOKALIKE, "sk_live_x=y", None],
)
def test_bad_secret_formats(bad: object) -> None:
    with pytest.raises(
        ValidationError, match=r"signing secret must be whsec and an underscore, then a base64 key"
    ) as info:
        signing_key(bad)  # type: ignore[arg-type]
    if isinstance(bad, str) and len(bad) > len("whsec_"):
        assert bad not in str(info.value)
        assert bad.removeprefix("whsec_") not in str(info.value)
    with pytest.raises(ValidationError):
        sign(bad, MSG_ID, 1, BODY)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        verify_webhook(bad, headers_for(new_signing_secret()), BODY)  # type: ignore[arg-type]


def test_sign_rejects_bad_message_parts() -> None:
    secret = new_signing_secret()
    with pytest.raises(ValidationError, match="message id"):
        sign(secret, "", 1, BODY)
    with pytest.raises(ValidationError, match="timestamp"):
        sign(secret, MSG_ID, 1.5, BODY)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="bytes"):
        sign(secret, MSG_ID, 1, "text")  # type: ignore[arg-type]


HUGE = 10**5000  # past float's range and past the digits str() will write


@pytest.mark.parametrize(
    "now", [10**400, -(10**400), HUGE, -HUGE], ids=["1e400", "-1e400", "huge", "-huge"]
)
def test_a_now_past_floats_range_is_a_validation_error(now: int) -> None:
    secret = new_signing_secret()
    with pytest.raises(ValidationError, match="now must be a finite number"):
        verify_webhook(secret, headers_for(secret), BODY, now=now)


@pytest.mark.parametrize("tolerance", [-HUGE, HUGE, 2**63], ids=["-huge", "huge", "2**63"])
def test_a_huge_tolerance_is_a_validation_error(tolerance: int) -> None:
    secret = new_signing_secret()
    with pytest.raises(ValidationError, match="tolerance"):
        verify_webhook(secret, headers_for(secret), BODY, tolerance=tolerance)


@pytest.mark.parametrize("timestamp", [HUGE, -HUGE, 10**15], ids=["huge", "-huge", "10**15"])
def test_sign_refuses_a_timestamp_verify_webhook_would_refuse(timestamp: int) -> None:
    """verify_webhook reads at most 15 digits: a longer timestamp could never be verified."""
    with pytest.raises(ValidationError, match="timestamp"):
        sign(new_signing_secret(), MSG_ID, timestamp, BODY)
    assert sign(new_signing_secret(), MSG_ID, 10**15 - 1, BODY).startswith("v1,")


@pytest.mark.parametrize("name", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_signed_header_given_twice_is_refused(name: str) -> None:
    """Two spellings of one header leave it open which one the application reads: a
    replayed request with a second ``Webhook-Id`` would verify under the first and pass
    the second to the application's duplicate check."""
    secret = new_signing_secret()
    headers = headers_for(secret)
    twice = {**headers, name.title(): headers[name]}
    with pytest.raises(WebhookVerificationError, match=f"{name} header appears more than once"):
        verify_webhook(secret, twice, BODY)
    assert verify_webhook(secret, headers, BODY) == json.loads(BODY)


def test_header_objects_of_the_standard_library_are_read() -> None:
    """http.server hands a handler an ``email.message.Message``, wsgiref builds ``Headers``:
    neither is a ``Mapping``, and both hold a header given twice, which is refused."""
    secret = new_signing_secret()
    headers = headers_for(secret)
    message = email.message.Message()
    for name, value in headers.items():
        message[name] = value
    assert verify_webhook(secret, message, BODY) == json.loads(BODY)
    assert verify_webhook(secret, WSGIHeaders(list(headers.items())), BODY) == json.loads(BODY)
    message["Webhook-Id"] = "msg_replayed"
    with pytest.raises(WebhookVerificationError, match="webhook-id header appears more than once"):
        verify_webhook(secret, message, BODY)
    with pytest.raises(ValidationError, match="headers must be a mapping"):
        verify_webhook(secret, list(headers.items()), BODY)  # type: ignore[arg-type]


class _BrokenHeaders:
    """A header object whose ``items()`` is not what a mapping's is."""

    def __init__(self, items: Any) -> None:
        self._items = items

    def items(self) -> Any:
        if isinstance(self._items, Exception):
            raise self._items
        return self._items


@pytest.mark.parametrize(
    "items",
    [5, [("webhook-id", "a", "b")], [("webhook-id",)], [1, 2], RuntimeError("boom")],
    ids=["not-iterable", "triples", "singles", "no-pairs", "raises"],
)
def test_headers_whose_items_are_no_pairs_are_a_validation_error(items: Any) -> None:
    secret = new_signing_secret()
    with pytest.raises(ValidationError, match=r"its items\(\) gave no pairs"):
        verify_webhook(secret, _BrokenHeaders(items), BODY)


def test_sign_refuses_a_message_id_that_is_not_unicode() -> None:
    with pytest.raises(ValidationError, match="message id"):
        sign(new_signing_secret(), "msg_\ud800", 1, BODY)


@pytest.mark.parametrize(
    "secrets", [5, None, b"whsec_", object()], ids=["int", "None", "bytes", "object"]
)
def test_signature_header_refuses_what_is_no_list_of_secrets(secrets: object) -> None:
    with pytest.raises(ValidationError, match="sequence of signing secrets"):
        signature_header(secrets, MSG_ID, 1, BODY)  # type: ignore[arg-type]


def test_a_timestamp_with_leading_zeros_is_signed_as_its_integer() -> None:
    """The reference libraries parse webhook-timestamp and sign the integer they read, so
    ``0`` written before it changes no signature; a signature over the zeros matches none."""
    secret = new_signing_secret()
    ts = int(time.time())
    headers = {**headers_for(secret, timestamp=ts), "webhook-timestamp": f"000{ts}"}
    assert verify_webhook(secret, headers, BODY) == json.loads(BODY)
    assert standardwebhooks.Webhook(secret).verify(BODY, headers) == json.loads(BODY)
    key = signing_key(secret)
    literal = hmac.new(key, f"{MSG_ID}.000{ts}.".encode() + BODY, hashlib.sha256).digest()
    signed_zeros = {**headers, "webhook-signature": "v1," + base64.b64encode(literal).decode()}
    with pytest.raises(WebhookVerificationError, match="no v1 signature"):
        verify_webhook(secret, signed_zeros, BODY)
    many_zeros = {**headers, "webhook-timestamp": "0" * 40 + str(ts)}
    assert verify_webhook(secret, many_zeros, BODY) == json.loads(BODY)
