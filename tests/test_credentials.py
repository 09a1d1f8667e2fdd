"""Token secret format: GitHub-style prefix, base62 body and CRC32 checksum."""

from __future__ import annotations

import hashlib
import re
import string
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenstore._credentials import (
    DEFAULT_TOKEN_PREFIX,
    generate_token,
    looks_like_token,
    token_digest,
    token_hint,
)
from tokenstore._errors import ValidationError

BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
TOKEN_RE = re.compile(
    r"(?P<prefix>[a-z]{2,8})_(?P<random>[0-9A-Za-z]{30})(?P<check>[0-9A-Za-z]{6})"
)

random_parts = st.text(alphabet=BASE62, min_size=30, max_size=30)
prefixes = st.text(alphabet=string.ascii_lowercase, min_size=2, max_size=8)
# Hypothesis fails an example slower than its deadline (200 ms): one paused by a busy
# machine failed these tests, which are about checksums, not speed.
no_deadline = settings(deadline=None)


def reference_checksum(random_part: str) -> str:
    """Independent re-implementation of the spec, so the test does not trust the code."""
    number = zlib.crc32(random_part.encode("ascii"))
    digits = ""
    while number:
        number, rest = divmod(number, 62)
        digits = BASE62[rest] + digits
    return digits.rjust(6, "0")


def make_token(prefix: str, random_part: str) -> str:
    return f"{prefix}_{random_part}{reference_checksum(random_part)}"


def test_generated_token_has_the_documented_format() -> None:
    token = generate_token()
    match = TOKEN_RE.fullmatch(token)
    assert match is not None, token
    assert match["prefix"] == DEFAULT_TOKEN_PREFIX == "tsk"
    assert match["check"] == reference_checksum(match["random"])
    assert len(token) == len("tsk_") + 36
    assert looks_like_token(token)
    assert looks_like_token(token, prefix="tsk")


def test_tokens_are_random() -> None:
    tokens = {generate_token() for _ in range(200)}
    assert len(tokens) == 200
    # Every base62 character shows up somewhere in 200 * 30 random characters.
    used = set("".join(t[4:34] for t in tokens))
    assert used == set(BASE62)


def test_checksum_padding_for_small_crc() -> None:
    # Find a random part whose CRC32 needs fewer than 6 base62 digits; it must be 0-padded.
    candidates = (f"{i:030d}" for i in range(2_000_000))
    short = next(c for c in candidates if zlib.crc32(c.encode()) < 62**5)
    token = make_token("ab", short)
    assert token[-6] == "0"
    assert looks_like_token(token)


@pytest.mark.parametrize("prefix", ["ab", "tsk", "abcdefgh", "ghp"])
def test_custom_prefixes(prefix: str) -> None:
    token = generate_token(prefix)
    assert token.startswith(prefix + "_")
    assert looks_like_token(token, prefix=prefix)
    assert looks_like_token(token)
    assert not looks_like_token(token, prefix="zz")


@pytest.mark.parametrize("prefix", ["", "a", "abcdefghi", "TSK", "ts1", "ts_k", "tsk ", "ték", 3])
def test_bad_prefix_is_rejected_with_a_clear_message(prefix: object) -> None:
    with pytest.raises(ValidationError, match="2 to 8 lowercase ASCII letters"):
        generate_token(prefix)  # type: ignore[arg-type]


@no_deadline
@given(prefix=prefixes, random_part=random_parts)
def test_well_formed_tokens_are_recognised(prefix: str, random_part: str) -> None:
    assert looks_like_token(make_token(prefix, random_part))
    assert looks_like_token(make_token(prefix, random_part), prefix=prefix)


@no_deadline
@given(
    random_part=random_parts,
    position=st.integers(min_value=0, max_value=29),
    replacement=st.sampled_from(BASE62),
)
def test_checksum_detects_every_single_character_change(
    random_part: str, position: int, replacement: str
) -> None:
    token = make_token("tsk", random_part)
    index = len("tsk_") + position
    if token[index] == replacement:
        replacement = BASE62[(BASE62.index(replacement) + 1) % 62]
    changed = token[:index] + replacement + token[index + 1 :]
    assert changed != token
    assert not looks_like_token(changed)


@no_deadline
@given(random_part=random_parts, position=st.integers(min_value=0, max_value=5), data=st.data())
def test_checksum_characters_are_checked_too(
    random_part: str, position: int, data: st.DataObject
) -> None:
    token = make_token("tsk", random_part)
    index = len(token) - 6 + position
    replacement = data.draw(st.sampled_from(BASE62.replace(token[index], "")))
    assert not looks_like_token(token[:index] + replacement + token[index + 1 :])


@no_deadline
@given(random_part=random_parts, position=st.integers(min_value=0, max_value=28))
def test_checksum_detects_adjacent_transpositions(random_part: str, position: int) -> None:
    token = make_token("tsk", random_part)
    i = len("tsk_") + position
    if token[i] == token[i + 1]:
        return
    swapped = token[:i] + token[i + 1] + token[i] + token[i + 2 :]
    assert not looks_like_token(swapped)


@pytest.mark.parametrize(
    "text",
    [
        None,
        42,
        b"tsk_" + b"0" * 36,
        "",
        "tsk_",
        "tsk",
        "t_" + "0" * 36,
        "toolongpx_" + "0" * 36,
        "TSK_" + "0" * 36,
        "tsk-" + "0" * 36,
        "tsk_" + "0" * 35,
        "tsk_" + "0" * 37,
        "tsk_" + "0" * 30 + "00000!",
        " " + generate_token(),
        generate_token() + "\n",
        "tsk_" + "\uff10" * 36,  # FULLWIDTH DIGIT ZERO is a digit, but not ASCII
    ],
)
def test_looks_like_token_rejects_malformed_input_without_raising(text: object) -> None:
    assert looks_like_token(text) is False


def test_looks_like_token_never_raises_on_odd_prefix_argument() -> None:
    token = generate_token()
    assert looks_like_token(token, prefix="NOT VALID") is False
    assert looks_like_token(token, prefix="") is False


def test_digest_is_sha256_hex_of_utf8() -> None:
    token = generate_token()
    assert token_digest(token) == hashlib.sha256(token.encode("utf-8")).hexdigest()
    assert token_digest("é" * 20) == hashlib.sha256("é".encode() * 20).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", token_digest(token))
    assert token_digest(token) != token_digest(generate_token())


def test_hint_is_the_last_four_characters() -> None:
    token = generate_token()
    assert token_hint(token) == token[-4:]
    assert len(token_hint(token)) == 4


def test_hint_refuses_secrets_it_would_mostly_reveal() -> None:
    with pytest.raises(ValidationError, match="too short"):
        token_hint("abcdef")


def test_digest_and_hint_reject_non_strings() -> None:
    with pytest.raises(ValidationError):
        token_digest(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        token_hint(None)  # type: ignore[arg-type]
