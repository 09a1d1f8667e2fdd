"""ABIDs: prefixed, time-sortable identifiers, byte-compatible with ArchiveBox 0.8.x.

An ABID is ``prefix + ts + uri + subtype + rand`` (4 + 10 + 8 + 2 + 6 chars). The
suffix is a ULID whose last 80 bits are not random but derived from the record
(its owner, its type, its id), so that the same record always yields the same
ABID, and an ABID says which owner and type it belongs to without a lookup. The
exact algorithm, with vectors, is in ``docs/abid.md``; this module follows it to
the byte, including the original's quirks where compatibility needs them:

* ``ts`` is ``int(ts.timestamp() * 1000)``, the float formula of the original
  (and of python-ulid). For about 0.6% of datetimes that are exact milliseconds
  the float product lands just below the integer and the part is 1 ms early;
  matching the original matters more than the last millisecond.
* ``subtype`` is converted with ``str()`` first, as the original does, so a
  non-str whose text is 2 chars (the int ``42``) is used verbatim too.
* ``rand`` from a str shorter than 6 chars is left-padded with ``'0'`` (the
  original would produce a short, unparseable ABID); ints are padded the same way.

Where tokenstore departs from the original, it is only to refuse what the original
would have guessed at or let through: naive datetimes, empty uri sources and
malformed prefixes raise :class:`~tokenstore._errors.InvalidABID` (never an
``assert``, which ``python -O`` removes), and equality and hashing include the
prefix, so an ``apt_`` and a ``whk_`` with the same suffix are different keys.

Parsing keeps the text as given, so an ABID read from ArchiveBox is written back
byte for byte: a verbatim subtype may be lower case, and a str rand may hold
``I``, ``L``, ``O`` or ``U``, none of which a ULID encoder writes. Only the ts and
uri parts, which the original always encodes itself, must be base32. Equality
ignores the case of ASCII letters in the suffix (the TypeID spelling is the same
ABID), and the decoding views read ``I`` and ``L`` as 1 and ``O`` as 0, as
Crockford's base32 says.

This module knows nothing of databases; :mod:`tokenstore._models` feeds it values.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Final, NoReturn
from urllib.parse import urlparse

from ._errors import InvalidABID

__all__ = [
    "ABID",
    "DEFAULT_ABID_PREFIX",
    "DEFAULT_ABID_URI_SALT",
    "abid_from_values",
]

#: The salt of the original, so that uri parts agree across installations that
#: keep it; an installation can set its own to keep owners unguessable.
DEFAULT_ABID_URI_SALT: Final = "687c2fff14e3a7780faa5a40c237b19b5b51b089"

#: The prefix the original assumes when a bare suffix is parsed without one.
DEFAULT_ABID_PREFIX: Final = "obj_"

_SUFFIX_LEN: Final = 26
_RAND_LEN: Final = 6
# The ts and uri parts: always encoded by the algorithm itself, so parsing holds them to base32.
_ENCODED_LEN: Final = 18

# (name, start, end) of each suffix part, for messages that say where a bad char is.
_PARTS: Final = (("ts", 0, 10), ("uri", 10, 18), ("subtype", 18, 20), ("rand", 20, 26))

_ALPHABET: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_VALID_CHARS: Final = frozenset(_ALPHABET + _ALPHABET.lower())
# Crockford's decoding reads I and L as 1 and O as 0, in either case; U is never a digit.
_ALIASES: Final = "IiLlOo"
_DECODABLE_CHARS: Final = _VALID_CHARS | frozenset(_ALIASES)
_LOWER_LETTERS: Final = frozenset("abcdefghijklmnopqrstuvwxyz")
# Every 10-bit value as two Crockford chars: encoding is a few table lookups
# instead of one divmod per char.
_PAIRS: Final = tuple(a + b for a in _ALPHABET for b in _ALPHABET)
# Crockford digits (either case, aliases included) -> the digits int(x, 32)
# understands, so decoding runs in C.
_TO_INT_BASE32: Final = str.maketrans(
    _ALPHABET + _ALPHABET.lower() + _ALIASES,
    "0123456789abcdefghijklmnopqrstuv" * 2 + "111100",
)
# Any decodable spelling -> the one a ULID encoder writes.
_TO_CANONICAL: Final = str.maketrans(_ALPHABET.lower() + _ALIASES, _ALPHABET + "111100")
# Upper case for ASCII letters only: str.upper() would turn a non-ASCII char
# (say a verbatim subtype's "ß") into two.
_ASCII_UPPER: Final = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
# Its inverse, for the TypeID view: str.lower() would turn U+0130 into two chars.
_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_RAND_MASK: Final = (1 << 30) - 1
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

_object_new = object.__new__
_object_setattr = object.__setattr__


def _show(text: str) -> str:
    """Quote short input, but only describe long input: it may be a mistyped secret."""
    return repr(text) if len(text) <= 8 else f"a {len(text)}-char string"


def _fail(message: str) -> NoReturn:
    raise InvalidABID(message)


def _is_crockford(text: str) -> bool:
    """All chars in the (case-insensitive) Crockford alphabet, checked with C-speed ops.

    ``isascii`` first, so that non-ASCII chars whose upper case is ASCII (long s, U+017F)
    cannot slip through ``upper()``.
    """
    if not (text.isascii() and text.isalnum()):
        return False
    upper = text.upper()
    return not ("I" in upper or "L" in upper or "O" in upper or "U" in upper)


def _is_decodable(text: str) -> bool:
    """Like ``_is_crockford``, but with the aliases I, L and O that decoding reads."""
    return text.isascii() and text.isalnum() and "U" not in text.upper()


def _bad_char_message(suffix: str, decoding: bool = False) -> str:
    """Name the first char parsing (or, with ``decoding``, the views) cannot take, and where.

    Only called once a fast check failed.
    """
    for index, char in enumerate(suffix):
        if decoding:
            fine = char in _DECODABLE_CHARS
        elif index < _ENCODED_LEN:
            fine = char in _VALID_CHARS
        else:
            fine = char.isprintable()
        if fine:
            continue
        part = next(name for name, start, end in _PARTS if start <= index < end)
        if decoding:
            rule = f"not Crockford base32 ({_ALPHABET}, with I and L read as 1, O as 0)"
        elif index < _ENCODED_LEN:
            rule = f"not Crockford base32 ({_ALPHABET})"
        else:
            rule = "not a printable character"
        return (
            f"bad character {char!r} at position {index} (0-based) of the suffix,"
            f" in its {part} part: {rule}"
        )
    return "the suffix is not Crockford base32"  # pragma: no cover - callers checked


# ---------------------------------------------------------------------------
# parts


def _text(source: object, part: str) -> str:
    """``str(source)``, as the original takes a source; an int too long to write is refused."""
    try:
        return str(source)
    except ValueError as exc:  # past sys.get_int_max_str_digits(), 4300 digits by default
        raise InvalidABID(f"{part} source cannot be written as text: {exc}") from None


# Normal form of every prefix spelling seen; a plain dict so hot paths can
# ``.get()`` it inline. Bounded: only valid spellings go in, at most _CACHE_MAX.
_PREFIXES: dict[str, str] = {}
_CACHE_MAX: Final = 4096


def _prefix_part(prefix: str) -> str:
    """Normalise like the original (strip ``_``, lowercase, 3 chars, add ``_``), but refuse."""
    cached = _PREFIXES.get(prefix)
    if cached is not None:
        return cached
    core = prefix.strip("_")
    if len(core) != 3 or not core.isascii() or not _LOWER_LETTERS.issuperset(core.lower()):
        _fail(
            f"prefix must be 3 letters a-z, optionally followed by '_' (like 'apt_'),"
            f" got {_show(prefix)}"
        )
    normal = core.lower() + "_"
    if len(_PREFIXES) < _CACHE_MAX:
        _PREFIXES[prefix] = normal
    return normal


def _normalise_prefix(prefix: object) -> str:
    if prefix is None:
        return DEFAULT_ABID_PREFIX
    if type(prefix) is not str:
        if not isinstance(prefix, str):
            _fail(f"prefix must be a str, got {type(prefix).__name__}")
        prefix = str.__str__(prefix)  # a str subclass: its text, as the original takes it
    return _prefix_part(prefix)


# One-entry cache of the last ts part: inserts arrive many to the millisecond.
_last_ts: tuple[int, str] = (-1, "")


def _ts_part(ts: object) -> str:
    global _last_ts
    if type(ts) is not datetime and not isinstance(ts, datetime):
        _fail(f"ts must be a timezone-aware datetime, got {type(ts).__name__}")
    tz = ts.tzinfo
    try:  # a caller's tzinfo may raise, or answer what datetime refuses
        if tz is not UTC and (tz is None or ts.utcoffset() is None):
            _fail("ts must be timezone-aware (got a naive datetime): tokenstore stores UTC times")
        seconds = ts.timestamp()
    except InvalidABID:
        raise
    except Exception as exc:
        raise InvalidABID(
            "ts has a time zone that cannot give its offset: "
            f"{type(exc).__name__}: {str(exc)[:200]}"
        ) from None
    # The original's float formula, kept for byte compatibility (see the module doc): it
    # cuts the last millisecond of 1969 to 0, and refuses what is earlier.
    ms = int(seconds * 1000)
    if ms < 0:
        _fail(f"ts must not be before 1970-01-01T00:00:00Z, got {ts.isoformat()}")
    cached = _last_ts
    if cached[0] == ms:
        return cached[1]
    pairs = _PAIRS
    part = (
        pairs[ms >> 40]
        + pairs[(ms >> 30) & 1023]
        + pairs[(ms >> 20) & 1023]
        + pairs[(ms >> 10) & 1023]
        + pairs[ms & 1023]
    )
    _last_ts = (ms, part)
    return part


@lru_cache(maxsize=1024)
def _uri_hash_part(uri: str | int, salt: str) -> str:
    """Hash a uri source; cached by (value, salt) because a store has few owners."""
    text = _text(uri, "uri").strip()
    if not text or text == "None":
        _fail("uri source must not be empty or None: it identifies the owner")
    if "://" in text:
        try:
            netloc = urlparse(text).netloc
        except ValueError as exc:
            raise InvalidABID(f"uri source is not a parseable URL: {exc}") from None
        if netloc:
            text = netloc
    try:
        data = text.encode() + salt.encode()
    except UnicodeError:
        raise InvalidABID("uri source or salt cannot be encoded as UTF-8") from None
    return hashlib.sha256(data).hexdigest()[:8].upper()


def _uri_part(uri: object, salt: str) -> str:
    if type(salt) is not str:
        if not isinstance(salt, str):
            _fail(f"salt must be a str, got {type(salt).__name__}")
        salt = str.__str__(salt)  # a str subclass: its text, as the original takes it
    # Cache on the value itself only for exact str and int (1 and "1" hash alike,
    # True is neither): another object's str() might change while it is cached.
    if type(uri) is str or type(uri) is int:
        return _uri_hash_part(uri, salt)
    return _uri_hash_part(_text(uri, "uri"), salt)


@lru_cache(maxsize=1024)
def _subtype_hash_part(subtype: str) -> str:
    try:
        data = subtype.encode()
    except UnicodeError:
        raise InvalidABID("subtype source cannot be encoded as UTF-8") from None
    return hashlib.sha256(data).hexdigest()[:2].upper()


def _subtype_part(subtype: object) -> str:
    text = subtype if type(subtype) is str else _text(subtype, "subtype")
    if len(text) == 2:
        return text
    return _subtype_hash_part(text)


def _rand_part(rand: object) -> str:
    pairs = _PAIRS
    if type(rand) is uuid.UUID:
        value = rand.int & _RAND_MASK
    elif rand is None:
        value = secrets.randbits(30)
    elif isinstance(rand, uuid.UUID):
        value = rand.int & _RAND_MASK
    elif isinstance(rand, int):
        return _text(rand, "rand")[-_RAND_LEN:].rjust(_RAND_LEN, "0")
    else:
        return _text(rand, "rand")[-_RAND_LEN:].upper().rjust(_RAND_LEN, "0")
    return pairs[value >> 20] + pairs[(value >> 10) & 1023] + pairs[value & 1023]


# ---------------------------------------------------------------------------
# the value


class ABID:
    """An ABID value: immutable, hashable, equal to an ABID with the same text in any case.

    Only the 30-char string is stored, as given; the parts are slices of it. That
    keeps construction to one slot write on the insert path.
    """

    __slots__ = ("_text",)
    __match_args__ = ("prefix", "ts", "uri", "subtype", "rand")

    _text: str

    def __init__(self, prefix: str, ts: str, uri: str, subtype: str, rand: str) -> None:
        """Assemble from already-encoded parts, the original's fields.

        Only types, lengths and the prefix are checked: chars outside base32 must be
        allowed, since verbatim subtypes and str rands produce them; the ``uuid`` and
        ``datetime`` views of such an ABID raise instead.
        """
        fields = (("ts", ts, 10), ("uri", uri, 8), ("subtype", subtype, 2), ("rand", rand, 6))
        for name, value, size in fields:
            if type(value) is not str:
                _fail(f"{name} part must be a str, got {type(value).__name__}")
            if len(value) != size:
                _fail(f"{name} part must be {size} chars, got {len(value)}")
        text = _normalise_prefix(prefix) + ts + uri + subtype + rand
        _object_setattr(self, "_text", text)

    @classmethod
    def _from_text(cls, text: str) -> ABID:
        """Wrap a string already known to be well-formed, skipping ``__init__``."""
        abid = _object_new(cls)
        _set_text(abid, text)
        return abid

    if not TYPE_CHECKING:  # hidden from type checkers, so they still flag stray writes

        def __setattr__(self, name: str, value: object) -> NoReturn:
            raise AttributeError(f"ABID is immutable; cannot set {name!r}")

        def __delattr__(self, name: str) -> NoReturn:
            raise AttributeError(f"ABID is immutable; cannot delete {name!r}")

    def __reduce__(self) -> tuple[type[ABID], tuple[str, str, str, str, str]]:
        return (type(self), (self.prefix, self.ts, self.uri, self.subtype, self.rand))

    # -- the parts ---------------------------------------------------------

    @property
    def prefix(self) -> str:
        """The kind of record, three letters and ``_`` (``apt_``)."""
        return self._text[:4]

    @property
    def ts(self) -> str:
        """The creation time: 10 base32 characters of milliseconds since 1970."""
        return self._text[4:14]

    @property
    def uri(self) -> str:
        """The owner: 8 hex digits of a salted hash of the uri source."""
        return self._text[14:22]

    @property
    def subtype(self) -> str:
        """The type: 2 characters, kept as given or hashed."""
        return self._text[22:24]

    @property
    def rand(self) -> str:
        """The record's own part: 6 characters derived from its id."""
        return self._text[24:30]

    @property
    def suffix(self) -> str:
        """The 26 characters after the prefix, laid out as a ULID."""
        return self._text[4:]

    # -- value semantics ---------------------------------------------------

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"ABID({self._text!r})"

    def _key(self) -> str:
        """The text with ASCII letters upper-cased: what equality and hashing compare.

        The prefix is always lower case, so the key of ``apt_`` never equals one of
        ``whk_``; the suffix's case does not count (``apt_01jaz...`` is ``apt_01JAZ...``).
        Only ASCII letters change: a verbatim subtype or str rand may hold other
        chars, and ``str.upper`` could map two different ones to the same text.
        """
        text = self._text
        return text.upper() if text.isascii() else text.translate(_ASCII_UPPER)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ABID):
            return self._text == other._text or self._key() == other._key()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._key())

    @property
    def canonical(self) -> str:
        """The one spelling all equal ABIDs share: the prefix, then the suffix upper-cased.

        tokenstore's own tables store their ABIDs in this form (their subtypes and
        rands are never lower case), so lookups by an ABID typed in any case use it.
        """
        return self._text[:4] + self._key()[4:]

    # -- views -------------------------------------------------------------

    @property
    def ulid(self) -> str:
        """The suffix as a ULID encoder writes it: upper case, ``I``/``L`` as 1, ``O`` as 0."""
        return self._decodable_suffix().translate(_TO_CANONICAL)

    @property
    def typeid(self) -> str:
        """The TypeID spelling (``apt_01jaz6...``): prefix and suffix, ASCII letters lowercase.

        Other chars (a str rand's, upper-cased by its source) stay as they are, so the
        TypeID is 30 chars and parses back to an equal ABID.
        """
        text = self._text
        return text.lower() if text.isascii() else text.translate(_ASCII_LOWER)

    def _decodable_suffix(self) -> str:
        """The suffix, once it is known to decode to at most 128 bits; InvalidABID if not."""
        suffix = self._text[4:]
        if not _is_decodable(suffix):
            _fail(
                f"ABID {self._text!r} cannot be decoded: {_bad_char_message(suffix, decoding=True)}"
            )
        if suffix[0].translate(_TO_INT_BASE32) > "7":
            _fail(
                f"ABID {self._text!r} cannot be decoded: its suffix starts with"
                f" {suffix[0]!r}, above '7', so it exceeds 128 bits"
            )
        return suffix

    @property
    def uuid(self) -> uuid.UUID:
        """The 128-bit value of the suffix as a UUID (not the record's ``id``)."""
        return uuid.UUID(int=int(self._decodable_suffix().translate(_TO_INT_BASE32), 32))

    @property
    def datetime(self) -> datetime:
        """The ts part as an aware UTC datetime, millisecond precision."""
        ts = self._text[4:14]
        if not _is_decodable(ts):
            _fail(f"ABID {self._text!r} cannot be decoded: {_bad_char_message(ts, decoding=True)}")
        ms = int(ts.translate(_TO_INT_BASE32), 32)
        try:
            return _EPOCH + timedelta(milliseconds=ms)
        except OverflowError:
            raise InvalidABID(
                f"ABID {self._text!r}: ts part {ts!r} is past the largest datetime"
            ) from None

    # -- parsing -----------------------------------------------------------

    @classmethod
    def parse(cls, text: object, prefix: str | None = None) -> ABID:
        """Parse ``prefix_suffix`` (or a bare suffix), raising only InvalidABID.

        The suffix is kept as given (``str()`` gives it back) and read in any case,
        so the TypeID spelling parses too. Its ts and uri parts must be base32; its
        subtype and rand parts may hold any printable char, since the original
        copies them from their sources. A bare suffix takes ``prefix`` (default
        ``obj_``); a text whose own prefix differs from a given ``prefix`` is
        refused rather than silently re-prefixed.
        """
        if type(text) is str:
            pass
        elif isinstance(text, ABID):
            text = text._text
        elif isinstance(text, str):
            text = str.__str__(text)
        else:
            _fail(f"an ABID must be parsed from a str, got {type(text).__name__}")
        cut = text.find("_")
        if cut >= 0:
            if text.find("_", cut + 1) >= 0:
                _fail(
                    f"an ABID has exactly one '_' (after its 3-letter prefix),"
                    f" got {text.count('_')}"
                )
            own = _prefix_part(text[:cut])
            if prefix is not None:
                wanted = _normalise_prefix(prefix)
                if wanted != own:
                    _fail(f"unexpected prefix: expected {wanted!r}, got {own!r}")
            suffix = text[cut + 1 :]
        else:
            own = _normalise_prefix(prefix)
            suffix = text
        if len(suffix) != _SUFFIX_LEN:
            _fail(f"expected {_SUFFIX_LEN} chars for the suffix, got {len(suffix)}")
        if not (_is_crockford(suffix[:_ENCODED_LEN]) and suffix[_ENCODED_LEN:].isprintable()):
            _fail(_bad_char_message(suffix))
        if suffix[0] > "7":
            _fail(
                f"bad character {suffix[0]!r} at position 0 (0-based) of the suffix:"
                " a ULID starts with 0-7, or it exceeds 128 bits"
            )
        return cls._from_text(own + suffix)


# ---------------------------------------------------------------------------
# construction from source values


def abid_from_values(
    prefix: str | None,
    ts: datetime,
    uri: object,
    subtype: object,
    rand: uuid.UUID | int | str | None,
    salt: str = DEFAULT_ABID_URI_SALT,
) -> ABID:
    """Derive the ABID of a record from its source values, exactly as the original.

    ``uri`` is the owner (an id or a URL: only a URL's netloc is hashed, so one
    site's records share a uri part); ``subtype`` the kind of record; ``rand`` its
    id (UUID, int or str), or None for fresh randomness.
    """
    # The common source types are handled inline (a function call is a good part
    # of the cost here); everything else goes through the general helpers.
    head = _PREFIXES.get(prefix) if type(prefix) is str else None
    if head is None:
        head = _normalise_prefix(prefix)
    if type(ts) is datetime and ts.tzinfo is UTC:
        seconds = ts.timestamp()
        cached = _last_ts
        if cached[0] == int(seconds * 1000) and seconds >= 0:
            head += cached[1]
        else:
            head += _ts_part(ts)
    else:
        head += _ts_part(ts)
    if (type(uri) is str or type(uri) is int) and type(salt) is str:
        head += _uri_hash_part(uri, salt)
    else:
        head += _uri_part(uri, salt)
    if type(subtype) is str and len(subtype) == 2:
        head += subtype
    else:
        head += _subtype_part(subtype)
    if type(rand) is uuid.UUID:
        value = rand.int & _RAND_MASK
        head += _PAIRS[value >> 20] + _PAIRS[(value >> 10) & 1023] + _PAIRS[value & 1023]
    else:
        head += _rand_part(rand)
    abid = _object_new(ABID)
    _set_text(abid, head)
    return abid


# Writes the slot directly, past ABID.__setattr__, which refuses all writes.
_set_text = ABID.__dict__["_text"].__set__
