"""Where a request carries its API token: looked for where ArchiveBox looks, in its order.

Kept apart from ``store.tokens``: reading a request needs no store, and a
framework's middleware (``_wsgi.py``) or a view calls it before any check.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol
from urllib.parse import parse_qs

from ._errors import ValidationError
from ._inputs import check_header_name

DEFAULT_API_KEY_HEADER = "X-API-Key"
#: The header ArchiveBox 0.8 reads first; scripts written for it send their key there.
ARCHIVEBOX_API_KEY_HEADER = "X-ArchiveBox-API-Key"

#: ArchiveBox treats these as "no token sent" (what empty API-explorer forms submit).
ABSENT_VALUES = frozenset({"", "string", "None", "null"})


class HeaderLookup(Protocol):
    """What ``token_from_request`` reads headers through: a ``Mapping``, or the header
    objects of frameworks that are none (werkzeug's, ``wsgiref``'s, ``http.client``'s)."""

    def get(self, name: str, /) -> Any: ...

    def items(self) -> Iterable[tuple[Any, Any]]: ...


def _header(headers: HeaderLookup, name: str) -> Any:
    """Header lookup that ignores case, for plain dicts as well as case-insensitive maps."""
    value = headers.get(name)
    if value is None:
        wanted = name.lower()
        for key, candidate in headers.items():
            if isinstance(key, str) and key.lower() == wanted:
                return candidate
    return value


def _first(value: Any) -> Any:
    """The first of several values (a multi-value map's list), or the one value."""
    if isinstance(value, list | tuple):
        return value[0] if value else None
    return value


def _present(value: Any) -> str | None:
    value = _first(value)
    if not isinstance(value, str):
        return None
    value = value.strip()
    return None if value in ABSENT_VALUES else value


def token_from_request(
    headers: HeaderLookup,
    query: Mapping[str, Any] | str | None = None,
    header: str = DEFAULT_API_KEY_HEADER,
) -> str | None:
    """The token a request carries, looked for where ArchiveBox looks, in its order.

    1. the API-key header (``header``), then ArchiveBox's own
    ``X-ArchiveBox-API-Key``, 2. ``Authorization: Bearer <token>`` (scheme in
    any case), 3. the ``api_key`` query parameter (``query`` is a mapping, as
    from ``parse_qs``, or the raw query string; ``headers`` a mapping or a framework's
    header object, such as Flask's ``request.headers``). Values ArchiveBox
    ignores (``''``, ``'string'``, ``'None'``, ``'null'``) count as absent and
    the search goes on. The first present value is returned unchecked: unlike
    ArchiveBox, a wrong key in the header is not rescued by a right one in the
    query string, so a client learns that its header is wrong. HTTP Basic is
    not read.
    """
    return token_in(headers, query, check_header_name(header, "header"))


def token_in(
    headers: HeaderLookup, query: Mapping[str, Any] | str | None, header: str
) -> str | None:
    """``token_from_request`` for callers whose ``header`` was checked when they were made."""
    if not isinstance(headers, Mapping) and not (
        callable(getattr(headers, "get", None)) and callable(getattr(headers, "items", None))
    ):
        raise ValidationError(f"headers must be a mapping, got {type(headers).__name__}")
    if query is not None and not isinstance(query, str | Mapping):
        raise ValidationError(
            f"query must be a mapping, a query string or None, got {type(query).__name__}"
        )
    for name in (header, ARCHIVEBOX_API_KEY_HEADER):
        token = _present(_header(headers, name))
        if token is not None:
            return token
    authorization = _first(_header(headers, "Authorization"))
    if isinstance(authorization, str):
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "bearer":
            token = _present(credentials)
            if token is not None:
                return token
    if isinstance(query, str):
        query = parse_qs(query, keep_blank_values=True)
    if query is not None:
        return _present(query.get("api_key"))
    return None
