"""Which addresses a webhook may reach.

A webhook URL is chosen by whoever configures the hook, and the request goes
out from inside the application's network. Without a guard that is a
server-side request forgery hole: ``http://169.254.169.254/`` reads cloud
credentials, ``http://127.0.0.1:6379/`` pokes a local service. So by default
only public (global) addresses may be reached.

Checking the URL text is not enough: a hostname can resolve (or re-resolve,
after a DNS rebinding) to a private address, and IPv6 can wrap an IPv4
address (``::ffff:127.0.0.1``, NAT64, 6to4). :func:`guarded_session` therefore
judges the peer address of the socket actually connected, before a byte of
the request is written. :meth:`AddressGuard.check_endpoint` is the early,
friendly check for when a hook is created.

``requests`` and ``urllib3`` are imported only inside :func:`guarded_session`,
so importing tokenstore stays cheap for applications that never send.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ._errors import BlockedAddress, ValidationError

if TYPE_CHECKING:
    import requests

__all__ = ["AddressGuard", "guarded_session"]

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


def _normalize_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


def _parse_allow_entry(entry: object) -> _IPNetwork | str:
    if not isinstance(entry, str) or not entry.strip():
        raise ValidationError(f"allowlist entry {entry!r} must be a non-empty string")
    text = entry.strip()
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
    host = _normalize_host(text)
    labels = host.split(".")
    if (
        len(host) > 253
        or not all(_LABEL_RE.fullmatch(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise ValidationError(
            f"allowlist entry {entry!r} is not an IP address, a CIDR network or a hostname"
        )
    return host


def _embedded_ipv4(ip: _IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address wraps, which is where packets really go."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def _own_reason(ip: _IPAddress, shown: str) -> str | None:
    """Why ``ip`` itself is not a public destination, or None if it is one."""
    if ip.is_unspecified:
        return f"{shown} is the unspecified address"
    if ip.is_loopback:
        return f"{shown} is a loopback address"
    if ip == _METADATA:
        return f"{shown} is a link-local address (the cloud metadata service)"
    if ip.is_link_local:
        return f"{shown} is a link-local address"
    if ip.is_multicast:
        return f"{shown} is a multicast address"
    if isinstance(ip, ipaddress.IPv4Address):
        if ip in _CGNAT:
            return f"{shown} is a carrier-grade NAT address (100.64.0.0/10)"
        if any(ip in net for net in _RFC1918):
            return f"{shown} is a private address"
    else:
        if ip in _UNIQUE_LOCAL:
            return f"{shown} is a unique local (private) address"
        if ip.is_site_local:
            return f"{shown} is a site-local address"
    if ip.is_reserved:
        return f"{shown} is a reserved address"
    if ip.is_private or not ip.is_global:
        return f"{shown} is a special-purpose address, not a public one"
    return None


class AddressGuard:
    """Decides which peer addresses outbound webhooks may reach.

    ``allow`` lifts the default block for IP addresses, CIDR networks or
    hostnames: a desktop app allows ``127.0.0.1/32`` to notify local tools,
    tests allow loopback. Hostnames match the URL's host, whatever it
    resolves to, so only list names you control.
    """

    def __init__(self, allow: Iterable[str] = ()) -> None:
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
        self._networks: tuple[_IPNetwork, ...] = tuple(networks)
        self._hosts: frozenset[str] = frozenset(hosts)

    def __repr__(self) -> str:
        entries = [str(net) for net in self._networks] + sorted(self._hosts)
        return f"AddressGuard(allow={entries!r})"

    def host_allowed(self, host: str) -> bool:
        """Whether ``host`` is allowlisted by name (case and trailing dot ignored)."""
        return _normalize_host(host) in self._hosts

    def _network_allowed(self, ip: _IPAddress) -> bool:
        return any(ip in net for net in self._networks)

    def blocked_reason(self, ip: str) -> str | None:
        """Why connecting to ``ip`` is refused, or None when it may be reached.

        The reason is written for people reading a delivery log.
        """
        try:
            address = ipaddress.ip_address(ip.strip())
        except (ValueError, AttributeError):
            raise ValidationError(f"{ip!r} is not an IP address") from None
        shown = ip.strip()
        embedded = _embedded_ipv4(address)
        if self._network_allowed(address) or (
            embedded is not None and self._network_allowed(embedded)
        ):
            return None
        if embedded is not None:
            inner = _own_reason(embedded, str(embedded))
            if inner is None:
                return None
            return f"{shown} embeds the IPv4 address {embedded}, and {inner}"
        return _own_reason(address, shown)

    def check_endpoint(self, url: str) -> None:
        """Reject a hook URL early, with a clear message, when it is plainly unusable.

        Hostnames pass: what they resolve to can change, so they are judged
        when the connection is made.
        """
        if not isinstance(url, str) or not url:
            raise ValidationError("webhook URL must be a non-empty string")
        if _CONTROL_RE.search(url):
            raise ValidationError("webhook URL must not contain spaces or control characters")
        try:
            parts = urlsplit(url)
            host = parts.hostname
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise ValidationError(f"webhook URL is malformed: {exc}") from None
        if parts.scheme.lower() not in ("http", "https"):
            shown = parts.scheme or "(none)"
            raise ValidationError(f"webhook URL scheme must be http or https, not {shown}")
        if not host:
            raise ValidationError("webhook URL has no host")
        if self.host_allowed(host):
            return
        address = _literal_address(host)
        if address is None:
            return
        reason = self.blocked_reason(str(address))
        if reason is not None:
            raise BlockedAddress(f"webhook URL host {host} is not allowed: {reason}")


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


def _vet_socket(guard: AddressGuard, host: str, sock: socket.socket) -> socket.socket:
    """Close ``sock`` and raise unless its peer is one the guard accepts."""
    try:
        peer = str(sock.getpeername()[0])
        reason = None if guard.host_allowed(host) else guard.blocked_reason(peer)
    except BaseException:
        sock.close()
        raise
    if reason is not None:
        sock.close()
        shown = host if host == peer else f"{host} ({peer})"
        raise BlockedAddress(f"refusing to connect to {shown}: {reason}")
    return sock


def _find_blocked(exc: BaseException) -> BlockedAddress | None:
    """Dig a BlockedAddress out of the wrappers urllib3 or requests may put around it."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, BlockedAddress):
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
    A refused connection raises :class:`BlockedAddress` from the request call.
    """
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    # _new_conn() returns the connected socket before http.client or TLS write
    # anything, and its peer is the address really reached whatever DNS said.
    class GuardedHTTPConnection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return _vet_socket(guard, self.host, super()._new_conn())

    class GuardedHTTPSConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return _vet_socket(guard, self.host, super()._new_conn())

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
            """Keep BlockedAddress catchable even if a urllib3/requests release wraps it.

            With urllib3 2.8 and requests 2.34 it already passes through
            unwrapped: it is not an OSError, so neither library catches it.
            """
            try:
                return super().send(request, stream, timeout, verify, cert, proxies)
            except requests.RequestException as exc:
                blocked = _find_blocked(exc)
                if blocked is None:
                    raise
                raise BlockedAddress(str(blocked)) from exc

    session = requests.Session()
    session.trust_env = False
    adapter = GuardedAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
