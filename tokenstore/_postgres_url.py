"""PostgreSQL URLs: telling one from a file path, showing one without its password,
and checking one before libpq gets it.

A URL carries its password (``user:password@``, ``?password=``), and
tokenstore shows where a store is in messages and reprs: always redacted.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from ._errors import StoreIOError, ValidationError
from ._inputs import check_text, mistyped_postgres, sqlite_uri
from ._postgres_driver import driver

#: Query parameters libpq reads a secret from (``?password=`` works like ``user:pw@``).
_SECRET_PARAMETERS = frozenset({"password", "sslpassword"})


#: A location with a scheme (``xyz://``, blanks before it): a URL, never a file path.
_SCHEME = re.compile(r"\s*([A-Za-z][A-Za-z0-9+.-]*)://")

#: libpq's connection keywords (PostgreSQL 17's): a ``key=value`` string may begin with any.
_KEYWORDS = (
    "host|hostaddr|port|dbname|user|password|passfile|service|options|application_name|"
    "fallback_application_name|connect_timeout|client_encoding|channel_binding|keepalives|"
    "keepalives_idle|keepalives_interval|keepalives_count|tcp_user_timeout|replication|"
    "gssencmode|gsslib|gssdelegation|krbsrvname|sslmode|sslnegotiation|requiressl|"
    "sslcompression|sslcert|sslkey|sslcertmode|sslpassword|sslrootcert|sslcrl|sslcrldir|"
    "sslsni|requirepeer|require_auth|ssl_min_protocol_version|ssl_max_protocol_version|"
    "target_session_attrs|load_balance_hosts"
)

#: How libpq's ``key=value`` connection strings begin.
_CONNINFO = re.compile(rf"\s*(?:{_KEYWORDS})\s*=", re.I)

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


def _user_part(rest: str) -> tuple[str, str]:
    """The user part of a URL after ``scheme://``, as libpq reads it, and what follows it.

    libpq takes everything up to the first ``@`` as the user part, unless a
    ``/`` comes first; ``?`` and ``#`` end nothing there (a URL parser would
    end the user part at them, and show the rest of the password as a query).
    """
    head = rest.partition("/")[0]
    if "@" not in head:
        return "", rest
    user, _, after = rest.partition("@")
    return user, after


def _ambiguous(rest: str) -> bool:
    """Whether where the password ends is anyone's guess: a second ``@``, or one after a ``/``.

    A password holding ``/`` makes libpq read the user part as a host and
    the rest of the password as the database name; one holding a second
    ``@`` makes it read part of the password as the host.
    """
    head, slash, tail = rest.partition("/")
    return head.count("@") > 1 or (bool(slash) and "@" in tail)


def redacted_url(url: str, *, dropped: bool = False) -> str:
    """The URL without its password (in the user part or the query), for messages and reprs.

    ``dropped``: left out rather than shown as ``***``, for a command to copy
    (``psql URL``), which would take the stars for the password.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:  # a file path, or a key=value string
        return _CONNINFO_SECRET.sub(r"\1***", url) if _CONNINFO.match(url) else url
    if _ambiguous(rest):  # no part of it can be shown as surely no part of the password
        return f"{scheme}://***"
    user, after = _user_part(rest)
    name, colon, _ = user.partition(":")
    hidden = ":***" if colon and not dropped else ""
    shown = f"{name}{hidden}@" if user else ""
    location, mark, query = after.partition("?")
    if mark:
        pairs = [pair.partition("=") for pair in query.split("&")]
        query = "&".join(
            f"{key}=***" if unquote(key).lower() in _SECRET_PARAMETERS else f"{key}{eq}{value}"
            for key, eq, value in pairs
            if not (dropped and unquote(key).lower() in _SECRET_PARAMETERS)
        )
        mark = mark if query else ""
    return f"{scheme}://{shown}{location}{mark}{query}"


#: The longest text searched for a user part: beyond the URLs browsers and servers take.
_SEARCHED = 2048
#: A user part with a password in what is no URL: ``postgres:/u:pw@host``, ``u:pw@host``
#: (in the quotes a usage error may put around it).
_LOOSE_USER_PART = re.compile(r"(\s*['\"]?(?:[A-Za-z][A-Za-z0-9+.-]*:/*)?[^:/@\s]*):[^@]*@")


def hidden_password(text: str) -> str:
    """Something a user typed, as a message quotes it: a URL or a ``key=value`` string
    redacted, and a ``user:password@`` of a mistyped URL without its password.

    Text without a ``:`` before an ``@`` holds no password. The search backtracks
    from every start (a minute for 100 KB), so text longer than any location is not
    searched: all from its first ``:`` to its last ``@`` is left out, the password in it.
    """
    if is_url(text):
        return redacted_url(text)
    colon, at = text.find(":"), text.rfind("@")
    if not 0 <= colon < at:
        return text
    if len(text) > _SEARCHED:
        return f"{text[:colon]}:***{text[at:]}"
    return _LOOSE_USER_PART.sub(r"\1:***@", text, 1)


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
    if scheme[1].lower() == "file":
        raise ValidationError(sqlite_uri("the store path"))
    if scheme[1].lower() in ("sqlite", "sqlite3"):  # SQLAlchemy's: sqlite:///relative/path
        meant = url[scheme.end() :].removeprefix("/")
        guess = f"did you mean {meant!r}?" if meant not in ("", ":memory:") else "one on disk"
        raise ValidationError(
            f"{redacted_url(url)} is an SQLite URL ({scheme[1]}://): tokenstore takes an "
            f"SQLite file's path: {guess}"
        )
    if scheme[1].lower() not in ("postgresql", "postgres"):
        kind = "a mistyped PostgreSQL URL" if mistyped_postgres(scheme[1]) else "a URL"
        raise ValidationError(
            f"{redacted_url(url)} is {kind} ({scheme[1]}://): tokenstore takes a "
            "postgresql:// URL (or an SQLite file's path)"
        )
    rest = url[scheme.end() :].rstrip()  # blanks and line ends around it are not part of it
    if _ambiguous(rest):
        raise ValidationError(
            "the PostgreSQL URL holds a second '@', or an '@' after a '/': a user name or "
            "password holding '@' or '/' must be written with %40 and %2F"
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
    user, after = _user_part(url.partition("://")[2])
    secrets = [user.partition(":")[2]] if ":" in user else []
    query = after.partition("?")[2].partition("#")[0]
    for key, _, value in (pair.partition("=") for pair in query.split("&")):
        if unquote(key).lower() in _SECRET_PARAMETERS:
            secrets.append(value)
    for secret in secrets:
        for form in {secret, unquote(secret)}:
            if form:
                text = text.replace(form, "***")
    return text


#: A setting named in a session's options (``-c lock_timeout=``, ``--lock-timeout=``).
_NAMED = r"(?:-c\s*|--){name}\s*="
#: A time setting and its value (``-c lock_timeout=200``, ``--lock-timeout=2s``).
_SETTING = _NAMED + r"\s*(\d+(?:\.\d+)?)\s*(us|ms|s|min|h|d)?(?!\w)"
#: Seconds per unit of a PostgreSQL time setting; a bare number is milliseconds.
_SECONDS = {"us": 1e-6, "ms": 1e-3, None: 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}

#: How long a statement may run, as the client sees it, unless the URL sets statement_timeout.
STATEMENT_WAIT = 60.0
#: What the client allows beyond a statement's run for the answer to arrive.
ANSWER_MARGIN = 5.0


def _seconds(options: str, name: str) -> float | None:
    """The last value the options give a time setting, in seconds (as on the server)."""
    found = re.findall(_SETTING.format(name=name.replace("_", "[_-]")), options)
    if not found:
        return None
    number, unit = found[-1]
    return float(number) * _SECONDS[unit or None]


def sets(options: str, name: str) -> bool:
    """Whether the options set ``name`` at all (``-c name=...`` or ``--name=...``, any case)."""
    pattern = _NAMED.format(name=name.replace("_", "[_-]"))
    return re.search(pattern, options, re.IGNORECASE) is not None


def lock_wait(options: str, busy_timeout: float) -> float:
    """How long a statement of a session with these options waits for a lock, in seconds.

    The last ``lock_timeout`` the options set wins, as on the server, so a
    URL's own setting overrides ``busy_timeout``: the StoreLocked message
    says how long the wait really was.
    """
    found = _seconds(options, "lock_timeout")
    return busy_timeout if found is None else found


def answer_wait(options: str, lock_wait: float) -> float:
    """How long the client waits for the server's answer to one request, in seconds.

    A server that stops answering (a stopped process, a hung disk) leaves
    the connection open, and its kernel answers TCP keepalives: a call
    would wait for ever. A statement may legitimately wait for a lock, or run as long as the
    session's ``statement_timeout`` lets it (``STATEMENT_WAIT`` where the URL
    sets none, or sets 0); past the longer of the two and ``ANSWER_MARGIN``,
    the server is taken for gone.
    """
    running = _seconds(options, "statement_timeout") or STATEMENT_WAIT
    return max(lock_wait, running) + ANSWER_MARGIN


#: How libpq (psycopg, for connect_timeout) refuses a value of the URL only as it connects:
#: some values once per host it tries, in that host's words, and some with quotes; and
#: how the server refuses a setting of the URL's options as the session starts.
_REFUSED_VALUE = re.compile(
    r"(connection (is bad|failed): )?"
    r'(connection to server (at "[^"]*", port \d+|on socket "[^"]*") failed: )?'
    r'(invalid (port number|integer value|"?\w+"? value)|bad value for '
    r"|could not parse network address |could not match \d+ [\w ]+ to \d+ "
    r"|FATAL:\s+(invalid value for parameter |unrecognized configuration parameter "
    r"|\S+( \S+)? is outside the valid range for parameter ))"
)


def connect_error(url: str, cause: BaseException) -> StoreIOError | ValidationError:
    """What a refused connection raises, without the password: the URL's fault when libpq
    refused one of its values (a port, an sslmode), a host name cannot be looked up (a
    label over 63 characters, or empty) or the server refused a setting of its options,
    else a StoreError."""
    text = str(cause).strip()
    detail = without_secrets(text.splitlines()[0] if text else type(cause).__name__, url)
    if isinstance(cause, UnicodeError):  # psycopg looks host names up with Python's IDNA codec
        detail = f"a host name is no DNS name: {detail}"
    if isinstance(cause, UnicodeError) or _REFUSED_VALUE.match(detail):
        return ValidationError(f"{redacted_url(url)} is not a valid PostgreSQL URL: {detail}")
    return StoreIOError(f"cannot connect to {redacted_url(url)}: {detail}")
