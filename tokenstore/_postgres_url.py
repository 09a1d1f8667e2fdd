"""PostgreSQL URLs: telling one from a file path, showing one without its password,
and checking one before libpq gets it.

A URL carries its password (``user:password@``, ``?password=``), and
tokenstore shows where a store is in messages and reprs: always redacted.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from ._errors import ValidationError
from ._inputs import check_text
from ._postgres_driver import driver

#: Query parameters libpq reads a secret from (``?password=`` works like ``user:pw@``).
_SECRET_PARAMETERS = frozenset({"password", "sslpassword"})


#: A location with a scheme (``xyz://``, blanks before it): a URL, never a file path.
_SCHEME = re.compile(r"\s*([A-Za-z][A-Za-z0-9+.-]*)://")

#: How libpq's ``key=value`` connection strings begin.
_CONNINFO = re.compile(r"\s*(?:host|hostaddr|port|dbname|user|password|service)\s*=", re.I)

#: A password in a ``key=value`` connection string, quoted or not.
_CONNINFO_SECRET = re.compile(r"((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.I)


def is_url(location: str) -> bool:
    """Whether ``tokenstore.open`` was given a server's address rather than a file path.

    Any ``scheme://`` counts (a scheme has no case), and so does libpq's
    ``host=... password=...``: taken for a file, either would be created
    under that name and repeat its password in messages.
    ``connection_url`` then refuses all but a ``postgresql://`` URL.
    """
    return bool(_SCHEME.match(location) or _CONNINFO.match(location))


def redacted_url(url: str) -> str:
    """The URL without its password (in the user part or the query), for messages and reprs."""
    scheme, separator, _ = url.partition("://")
    if not separator:  # a file path, or a key=value string
        return _CONNINFO_SECRET.sub(r"\1***", url) if _CONNINFO.match(url) else url
    try:
        parts = urlsplit(url)
    except ValueError:  # say, an unclosed [ in the host: nothing of it is shown
        return f"{scheme}://***"
    user, at, host = parts.netloc.rpartition("@")
    netloc = f"{user.partition(':')[0]}:***@{host}" if at and ":" in user else parts.netloc
    query = "&".join(
        f"{key}=***" if unquote(key).lower() in _SECRET_PARAMETERS else f"{key}{eq}{value}"
        for key, eq, value in (pair.partition("=") for pair in parts.query.split("&"))
    )
    return (
        f"{scheme}://{netloc}{parts.path}"
        + (f"?{query}" if parts.query else "")
        + (f"#{parts.fragment}" if parts.fragment else "")
    )


def connection_url(url: str) -> str:
    """The URL as libpq must get it: checked, its scheme ``postgresql``, its user part unambiguous.

    libpq takes the first ``@`` as the end of the password, where URL
    parsers take the last; an ``@`` in a user name or password must be
    written ``%40``, or the rest of the password would become the host name
    and appear in connection errors. peewee hands libpq only a
    ``postgresql://`` URL as one (``postgres://`` would be a database name).
    A URL libpq cannot parse is refused here, without the parser's message
    quoting the password back.
    """
    check_text(url, "the PostgreSQL URL")
    scheme = _SCHEME.match(url)
    if scheme is None:
        raise ValidationError(
            f"{redacted_url(url)!r} is a key=value connection string: tokenstore takes a "
            "postgresql:// URL (or an SQLite file's path)"
        )
    if scheme[1].lower() not in ("postgresql", "postgres"):
        raise ValidationError(
            f"{redacted_url(url)} is a {scheme[1]}:// URL: tokenstore takes a postgresql:// URL "
            "(or an SQLite file's path)"
        )
    rest = url[scheme.end() :]
    if rest.partition("/")[0].count("@") > 1:
        raise ValidationError(
            "the PostgreSQL URL's user name or password holds an '@': write it as %40"
        )
    url = f"postgresql://{rest}"
    try:
        driver().conninfo.conninfo_to_dict(url)
    except (driver().ProgrammingError, UnicodeDecodeError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValidationError(
            f"{redacted_url(url)} is not a valid PostgreSQL URL: {without_secrets(detail, url)}"
        ) from None
    return url


def without_secrets(text: str, url: str) -> str:
    """A driver's message with the URL, and any password of it, replaced by stars.

    libpq quotes the part it could not parse, which may be the password or
    the whole URL.
    """
    text = text.replace(url, redacted_url(url))
    rest = url.partition("://")[2]
    user = rest.partition("/")[0].partition("?")[0].rpartition("@")[0]
    secrets = [user.partition(":")[2]] if ":" in user else []
    query = rest.partition("?")[2].partition("#")[0]
    for key, _, value in (pair.partition("=") for pair in query.split("&")):
        if unquote(key).lower() in _SECRET_PARAMETERS:
            secrets.append(value)
    for secret in secrets:
        for form in {secret, unquote(secret)}:
            if form:
                text = text.replace(form, "***")
    return text
