"""Which addresses a webhook may reach.

A webhook URL is chosen by whoever configures the hook, and the request goes
out from inside the application's network. Without a guard that is a
server-side request forgery hole: ``http://169.254.169.254/`` reads cloud
credentials, ``http://127.0.0.1:6379/`` pokes a local service. So by default
only public (global) addresses may be reached.

Checking the URL text is not enough: a hostname can resolve (or re-resolve,
after a DNS rebinding) to a private address, and IPv6 can wrap an IPv4
address (``::ffff:127.0.0.1``, NAT64, 6to4). Judging a socket once it is
connected is too late: the blocked address has had a TCP handshake by then,
and whether it answered or refused tells an open port from a closed one. So
:func:`guarded_session` resolves the host itself, judges every address, and
connects only to an address it allowed, pinned for that connection (the name
is not resolved again). The Host header, TLS SNI and certificate checks still
use the name. A refusal names the kind of address, never the address a name
resolved to, and reads the same whatever listens there.
:meth:`AddressGuard.check_endpoint` is the early, friendly check for when a
hook is created.

``requests``, ``urllib3`` and ``idna`` are imported only when needed, so
importing tokenstore stays cheap for applications that never send.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import sys
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from . import _compat, _deadline, _lookup
from ._credentials import refuse_secret
from ._errors import BlockedAddress, ValidationError, shown
from ._postgres_url import redacted_url

if TYPE_CHECKING:
    from http.client import HTTPResponse

    import requests
    from urllib3.connection import HTTPConnection

__all__ = ["HOW_TO_ALLOW", "AddressGuard", "guarded_session"]

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_METADATA = ipaddress.IPv4Address("169.254.169.254")
_RFC1918 = (
    ipaddress.IPv4Network("10.0.0.0/8"),
    ipaddress.IPv4Network("172.16.0.0/12"),
    ipaddress.IPv4Network("192.168.0.0/16"),
)
_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")

_LABEL_RE = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_CONTROL_RE = re.compile(r"[\x00-\x20\x7f]")
_BRACKETED = re.compile(r"\[[0-9A-Fa-f:.]+\](:[0-9]*)?")

#: How a refusal says what lifts it.
HOW_TO_ALLOW = (
    "to allow it, add the host or its network to the store's webhook allowlist "
    "(store.webhooks.allow(), webhook_allow= or `tokenstore webhooks allow`)"
)


def _normalize_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


def _printable(exc: Exception) -> str:
    """An error's text with what a terminal cannot show (lone surrogates) escaped."""
    return str(exc).encode("ascii", "backslashreplace").decode("ascii")


def _host_name(host: str) -> str:
    """``host`` as an ASCII DNS name (IDNA A-labels); ValueError saying why it cannot be one.

    Non-ASCII names are encoded as urllib3 reads a URL's host before any
    request: label by label, lower-cased, IDNA 2008 without the UTS 46
    mapping (so no full-width letters or ideographic full stops), and a name
    refused here is one no request could use.
    """
    name = host.lower().removesuffix(".")  # not stripped: urllib3 takes a blank for part of it
    if not name.isascii():
        import idna

        try:
            name = ".".join(
                label
                if label.isascii()
                else idna.encode(label, strict=True, std3_rules=True).decode("ascii")
                for label in name.split(".")
            )
        except (idna.IDNAError, UnicodeError) as exc:
            raise ValueError(
                f"it is not a valid internationalized domain name ({_printable(exc)})"
            ) from None
    if len(name) > 253:
        raise ValueError(f"it is {len(name)} characters long; DNS allows 253")
    labels = name.split(".")
    for label in labels:
        if not _LABEL_RE.fullmatch(label):
            raise ValueError(
                f"its label {label!r} is not 1-63 letters, digits, hyphens or "
                "underscores with no hyphen at either end"
            )
        if label.startswith("xn--"):
            import idna

            try:
                idna.decode(label)
            except (idna.IDNAError, UnicodeError) as exc:
                raise ValueError(
                    f"its label {label!r} is not a valid IDNA A-label ({_printable(exc)})"
                ) from None
    if labels[-1].isdigit():
        raise ValueError("its last label is all digits, yet it is not an IP address")
    return name


def _parse_allow_entry(entry: object) -> _IPNetwork | str:
    if not isinstance(entry, str) or not entry.strip():
        raise ValidationError(f"allowlist entry {shown(entry)} must be a non-empty string")
    text = entry.strip()
    meant = _host_of_url_or_port(text)
    if meant is not None:
        written = "a URL" if "://" in text else "a host and a port"
        raise ValidationError(
            f"allowlist entry {redacted_url(entry)!r} is {written}: an entry is a host or a "
            f"network, allowed whatever the port; did you mean {meant!r}?"
        )
    if "/" in text:
        try:
            return ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            raise ValidationError(
                f"allowlist entry {entry!r} is not a valid CIDR network ({exc})"
            ) from None
    try:
        address = ipaddress.ip_address(text.removeprefix("[").removesuffix("]"))
    except ValueError:
        pass
    else:
        return ipaddress.ip_network(address)
    try:
        return _host_name(text)
    except ValueError as exc:
        raise ValidationError(
            f"allowlist entry {entry!r} is not an IP address, a CIDR network or a hostname: {exc}"
        ) from None


#: A host (a name, an IPv4 address, or an IPv6 one in brackets) and a port.
_HOST_AND_PORT = re.compile(r"(\[[^\]]+\]|[^:\[\]/]+):[0-9]+")


def _host_of_url_or_port(text: str) -> str | None:
    """The host an entry names along with a scheme or a port (``http://localhost:8000/``,
    ``localhost:8000``), which allowing cannot take; None for any other entry.

    A URL is quoted without its password.
    """
    if "://" in text:
        try:
            return urlsplit(text).hostname
        except ValueError:
            return None
    if _HOST_AND_PORT.fullmatch(text):
        return text.rpartition(":")[0].removeprefix("[").removesuffix("]")
    return None


def _embedded_ipv4(ip: _IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address wraps, which is where packets really go."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def _kind(ip: _IPAddress) -> str | None:
    """What kind of non-public destination ``ip`` is, or None if it is a public one."""
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip == _METADATA:
        return "a link-local address (the cloud metadata service)"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address):
        if ip in _CGNAT:
            return "a carrier-grade NAT address (100.64.0.0/10)"
        if any(ip in net for net in _RFC1918):
            return "a private address"
    else:
        if ip in _UNIQUE_LOCAL:
            return "a unique local (private) address"
        if ip.is_site_local:
            return "a site-local address"
    if ip.is_reserved:
        return "a reserved address"
    if ip.is_private or not ip.is_global:
        return "a special-purpose address, not a public one"
    return None


class AddressGuard:
    """Decides which peer addresses outbound webhooks may reach.

    ``allow`` lifts the default block for IP addresses, CIDR networks or
    hostnames: a desktop app allows ``127.0.0.1/32`` to notify local tools,
    tests allow loopback. Hostnames match the URL's host, whatever it
    resolves to, so only list names you control.
    """

    def __init__(self, allow: Iterable[str] = ()) -> None:
        self._networks: tuple[_IPNetwork, ...] = ()
        self._hosts: frozenset[str] = frozenset()
        self.replace(allow)

    def replace(self, allow: Iterable[str]) -> None:
        """Allow exactly these entries from now on (the store's list changed)."""
        if isinstance(allow, str):
            raise ValidationError(
                f"allow must be a list of entries, not the single string {allow!r}"
            )
        networks: list[_IPNetwork] = []
        hosts: set[str] = set()
        for entry in allow:
            parsed = _parse_allow_entry(entry)
            if isinstance(parsed, str):
                hosts.add(parsed)
            else:
                networks.append(parsed)
        self._networks, self._hosts = tuple(networks), frozenset(hosts)

    @staticmethod
    def canonical(entry: str) -> str:
        """An allowlist entry in the one form it is stored in (``10.0.0.0/8``, ``host.example``).

        A token or signing secret pasted here would pass for a host name and be kept in
        the file in clear: it is refused without being quoted.
        """
        refuse_secret(entry, "allowlist entry", "a host")
        return str(_parse_allow_entry(entry))

    def __repr__(self) -> str:
        entries = [str(net) for net in self._networks] + sorted(self._hosts)
        return f"AddressGuard(allow={entries!r})"

    def host_allowed(self, host: str) -> bool:
        """Whether ``host`` is allowlisted by name (case and trailing dot ignored)."""
        return _normalize_host(host) in self._hosts

    def _network_allowed(self, ip: _IPAddress) -> bool:
        return any(ip in net for net in self._networks)

    def _refusal(self, ip: _IPAddress) -> tuple[ipaddress.IPv4Address | None, str] | None:
        """Why ``ip`` is refused, as (the IPv4 address it wraps or None, the kind), or None.

        The kind is that of the destination packets really reach: for a
        wrapping IPv6 address, the IPv4 address inside.
        """
        embedded = _embedded_ipv4(ip)
        if self._network_allowed(ip) or (embedded is not None and self._network_allowed(embedded)):
            return None
        kind = _kind(ip if embedded is None else embedded)
        return None if kind is None else (embedded, kind)

    def blocked_reason(self, ip: str) -> str | None:
        """Why connecting to ``ip`` is refused, or None when it may be reached.

        The reason is written for people reading a delivery log.
        """
        try:
            address = ipaddress.ip_address(ip.strip())
        except (ValueError, AttributeError):
            raise ValidationError(f"{ip!r} is not an IP address") from None
        return self._explain(address, ip.strip())

    def _explain(self, ip: _IPAddress, shown: str) -> str | None:
        """:meth:`blocked_reason` for ``ip``, written as ``shown``."""
        refusal = self._refusal(ip)
        if refusal is None:
            return None
        embedded, kind = refusal
        if embedded is None:
            return f"{shown} is {kind}"
        return f"{shown} embeds the IPv4 address {embedded}, and {embedded} is {kind}"

    def addresses(self, host: str, port: int, timeout: float | None = None) -> list[str]:
        """The addresses to connect to for ``host``, every one of them allowed.

        Raises :class:`BlockedAddress` if any address the host resolves to is
        refused: a name mixing public and internal addresses is a DNS trick
        (or an allowlist to complete), and nothing is sent either way. The
        message gives the kind of address, not the address, so a delivery
        log does not map the internal network for whoever sets hook URLs.
        Resolution errors are the resolver's ``socket.gaierror``, raised too
        when it has not answered within ``timeout`` seconds (``None``: no limit);
        ``_lookup.ResolverBusy`` when too many other names are waiting on it.
        """
        name = host.strip("[]")
        found = _lookup.getaddrinfo(name, port, timeout)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
        if self.host_allowed(name):
            return addresses
        kinds: list[str] = []
        for address in addresses:
            refusal = self._refusal(ipaddress.ip_address(address))
            if refusal is not None:
                embedded, kind = refusal
                kinds.append(kind if embedded is None else f"an IPv6 address wrapping {kind}")
        if not kinds:
            return addresses
        literal = _literal_address(name)  # its own text says no more than the URL does
        reason = None if literal is None else self._explain(literal, name)
        if reason is None:
            reason = f"{name} resolves to {' and '.join(dict.fromkeys(kinds))}"
        raise BlockedAddress(f"{reason}; {HOW_TO_ALLOW}")

    def check_endpoint(self, url: str) -> None:
        """Reject a hook URL early, with a clear message, when it is plainly unusable.

        A host name must be one DNS could hold, but passes whatever it
        resolves to: that can change, so it is judged when connecting.
        """
        if not isinstance(url, str) or not url:
            raise ValidationError("webhook URL must be a non-empty string")
        if _CONTROL_RE.search(url):
            raise ValidationError("webhook URL must not contain spaces or control characters")
        if "\\" in url:  # read as "/" by browsers, as part of the user name by urlsplit
            raise ValidationError("webhook URL must not contain a backslash")
        try:
            parts = urlsplit(url)
            host = parts.hostname
        except ValueError as exc:
            raise ValidationError(f"webhook URL is malformed: {_printable(exc)}") from None
        try:
            port = parts.port
        except ValueError:  # not quoted: with a '/', '?' or '#' in a password, it is the password
            raise ValidationError(
                "webhook URL is malformed: its port is not a number from 1 to 65535"
            ) from None
        if parts.scheme.lower() not in ("http", "https"):
            shown = parts.scheme or "(none)"
            raise ValidationError(f"webhook URL scheme must be http or https, not {shown}")
        if not host:
            raise ValidationError("webhook URL has no host")
        self._judge_host(host)
        if port == 0:  # urllib3 reads port 0 as "none given" and connects to 80 or 443
            raise ValidationError("webhook URL port must be 1-65535, not port 0")
        if "%" in host:
            raise ValidationError(
                f"webhook URL host {host} has an IPv6 zone (%...), which names a network "
                "interface of one machine; webhooks cannot be sent by it"
            )
        if parts.username is not None or parts.password is not None:
            # Not quoted: a URL is shown in lists and logs, where a password must not be.
            raise ValidationError(
                "webhook URL must not carry credentials (user:password@): pass them as "
                "auth_token or headers, which are kept private"
            )
        # urlsplit reads a host out of "[::1]x" or "x[::1]" (and IPvFuture's "[v1.fe]" as a
        # name); urllib3 refuses them before any request is made.
        if "[" in parts.netloc and not _BRACKETED.fullmatch(parts.netloc):
            raise ValidationError(
                "webhook URL host must be an IPv6 address in brackets, as in "
                "http://[2001:db8::1]:8080/, with nothing else around them"
            )

    def _judge_host(self, host: str) -> None:
        """Refuse a URL's host that no DNS could hold, or a literal address not allowed."""
        if self.host_allowed(host):
            return
        address = _literal_address(host)
        if address is None:
            try:
                _host_name(host)
            except ValueError as exc:
                raise ValidationError(
                    f"webhook URL host {host!r} is not a valid host name: {exc}"
                ) from None
            return
        reason = self._explain(address, host)
        if reason is not None:
            raise BlockedAddress(
                f"webhook URL host {host} is not allowed: {reason}; {HOW_TO_ALLOW}"
            )


def _literal_address(host: str) -> _IPAddress | None:
    """The address a URL host denotes when it is an IP literal, else None.

    Includes the legacy numeric IPv4 forms (``2130706433``, ``0x7f.1``) that
    the system resolver also treats as addresses.
    """
    try:
        return ipaddress.ip_address(host.replace("%25", "%"))
    except ValueError:
        pass
    if re.fullmatch(r"[0-9a-fx.]+", host) and any(ch.isdigit() for ch in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _connect_pinned(conn: HTTPConnection, guard: AddressGuard) -> socket.socket:
    """Open ``conn``'s socket to an address the guard allowed for its host.

    Stands in for urllib3's ``HTTPConnection._new_conn``: the same socket
    options and the same exceptions, but the name is resolved once, by the
    guard, and each connection attempt goes to an address it returned.
    """
    from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
    from urllib3.util.connection import create_connection

    timeout = conn.timeout
    # The lookup, like each connection attempt, within the connect timeout and the deadline.
    lookup = _deadline.remaining(float(timeout)) if isinstance(timeout, int | float) else None
    try:
        addresses = guard.addresses(conn.host, conn.port, lookup)
    except socket.gaierror as exc:
        raise NameResolutionError(conn.host, conn, exc) from exc
    error: OSError | None = None
    for address in addresses:
        if isinstance(timeout, int | float):  # never past the attempt's deadline
            timeout = _deadline.remaining(float(timeout))
        try:
            sock = create_connection(
                (address, conn.port),  # an IP: create_connection does not look it up
                timeout,
                source_address=conn.source_address,
                socket_options=conn.socket_options,
            )
        except OSError as exc:
            error = exc
            continue
        sys.audit("http.client.connect", conn, conn.host, conn.port)
        _deadline.watch(sock)
        return sock
    if isinstance(error, TimeoutError):
        raise ConnectTimeoutError(
            conn, f"Connection to {conn.host} timed out. (connect timeout={conn.timeout})"
        ) from error
    raise NewConnectionError(conn, f"Failed to establish a new connection: {error}") from error


def _find_refusal(exc: BaseException) -> BlockedAddress | _lookup.ResolverBusy | None:
    """Dig a refusal of ours out of the wrappers urllib3 or requests may put around it."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, BlockedAddress | _lookup.ResolverBusy):
            return current
        linked: list[object] = [current.__cause__, current.__context__, *current.args]
        linked.append(getattr(current, "reason", None))
        pending.extend(item for item in linked if isinstance(item, BaseException))
    return None


def guarded_session(guard: AddressGuard) -> requests.Session:
    """A ``requests.Session`` that can only connect where ``guard`` allows.

    Environment proxies are ignored (``trust_env = False``) and explicit
    proxies are refused with :class:`ValidationError`: through a proxy the
    guard would only see the proxy's address, not the destination's.
    A refused connection raises :class:`BlockedAddress` from the request call
    before the endpoint has received a single packet.
    """
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    # _new_conn() only opens the socket; connect() then speaks TLS over it with
    # self.host (the name) for SNI and certificate checks, and requests sets the
    # Host header from the URL: pinning the address changes neither.
    # Whatever socket a request goes out on (new, reused, or wrapped in TLS) is put
    # under the attempt's deadline before it is written to or read from.
    class Pinned:
        sock: socket.socket | None
        response_class: type[HTTPResponse] = _compat.FinalResponse  # past 1xx answers

        def _new_conn(self) -> socket.socket:
            return _connect_pinned(self, guard)  # type: ignore[arg-type]

        def request(self, *args: Any, **kwargs: Any) -> None:
            if self.sock is not None:
                _deadline.watch(self.sock)
            super().request(*args, **kwargs)  # type: ignore[misc]

        def getresponse(self) -> Any:
            if self.sock is not None:
                _deadline.watch(self.sock)
            return super().getresponse()  # type: ignore[misc]

    class GuardedHTTPConnection(Pinned, HTTPConnection):
        pass

    class GuardedHTTPSConnection(Pinned, HTTPSConnection):
        pass

    class GuardedHTTPConnectionPool(HTTPConnectionPool):
        ConnectionCls = GuardedHTTPConnection

    class GuardedHTTPSConnectionPool(HTTPSConnectionPool):
        ConnectionCls = GuardedHTTPSConnection

    class GuardedAdapter(HTTPAdapter):
        def init_poolmanager(
            self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
        ) -> None:
            super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
            self.poolmanager.pool_classes_by_scheme = {
                "http": GuardedHTTPConnectionPool,
                "https": GuardedHTTPSConnectionPool,
            }

        def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
            raise ValidationError(
                "a guarded session does not use proxies: the address guard could only "
                "check the proxy, not the webhook endpoint"
            )

        def send(
            self,
            request: requests.PreparedRequest,
            stream: bool = False,
            timeout: float | tuple[float, float] | tuple[float, None] | None = None,
            verify: bool | str = True,
            cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
            proxies: Mapping[str, str] | None = None,
        ) -> requests.Response:
            """Keep our refusals catchable even if a urllib3/requests release wraps them.

            With urllib3 2.8 and requests 2.34 they already pass through
            unwrapped: neither is an OSError, so neither library catches them.
            """
            try:
                return super().send(request, stream, timeout, verify, cert, proxies)
            except requests.RequestException as exc:
                refusal = _find_refusal(exc)
                if refusal is None:
                    raise
                raise type(refusal)(str(refusal)) from exc

    session = requests.Session()
    session.trust_env = False
    adapter = GuardedAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
