"""Sending one webhook message: the signed request, the guarded HTTP session, the outcome.

Nothing here touches the database. A send never raises for what the network
or the receiver does: every way it can go is an ``Outcome`` to record.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from . import _compat, _deadline
from ._errors import BlockedAddress
from ._inputs import storable
from ._lookup import ResolverBusy
from ._models import OutboundWebhook
from ._netguard import AddressGuard
from ._signing import signature_header
from ._version import __version__

if TYPE_CHECKING:
    import requests

#: How much of a response body is kept, in characters (as django-signal-webhooks).
RESPONSE_LIMIT = 8000
_RESPONSE_BYTES = RESPONSE_LIMIT * 4  # enough bytes for that many UTF-8 characters

#: Shorter values of a hook's (a header's "1", say) are not blanked out of texts.
_SHORTEST_SECRET = 4

#: How many endpoints' prepared URLs a sender keeps (all of them are forgotten past that).
_PREPARED_URLS = 1024

#: Headers a hook may not set: they identify, sign and frame the message (a Transfer-Encoding
#: beside the Content-Length sent would have the receiver, or a proxy, split the body).
_OWN_HEADERS = frozenset(
    {
        "user-agent",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "content-length",
        "transfer-encoding",
    }
)


@dataclass
class Outcome:
    """What one HTTP attempt came to."""

    ok: bool
    status_code: int | None = None
    error: str = ""
    body: str = ""
    retry_after: str | None = None  #: the Retry-After header of a 429 or 503
    gone: bool = False
    duration_ms: int = 0
    #: Not sent, for a limit of this process's own: no attempt, and no failure of the receiver.
    held_back: bool = False


#: How the error of an attempt that ran out of time begins.
TIMED_OUT = "timed out"


def refused(status_code: object, error: object) -> bool:
    """Whether a failed attempt was turned down by a receiver that is up: the message's fault.

    A 3xx or a 4xx other than 408 and 429 is the receiver's answer to this
    one message (too large, a payload its schema rejects, a redirect not
    followed), given in time: the hook's other deliveries need not wait for
    this one's retry. No answer, a 5xx, a 408, a 429, or an answer that came
    past the deadline say the receiver is down, busy or slow. The values may
    be as stored: one edited by hand into something else says no answer came.
    """
    return (
        type(status_code) is int
        and 300 <= status_code < 500
        and status_code not in (408, 429)
        and isinstance(error, str)
        and not error.startswith(TIMED_OUT)
    )


def message_headers(
    hook: OutboundWebhook, msg_id: str, body: bytes, now: datetime
) -> dict[str, str]:
    """The hook's headers, then defaults, then the signature headers nobody may override.

    While a rotation's grace period lasts, the message is signed with the old
    secret too, so receivers on either side of the switch accept it.
    """
    headers = dict(hook.headers or {})
    present = {name.lower() for name in headers}
    if "content-type" not in present:
        headers["Content-Type"] = "application/json"
    if hook.auth_token and "authorization" not in present:
        headers["Authorization"] = hook.auth_token
    headers = {k: v for k, v in headers.items() if k.lower() not in _OWN_HEADERS}
    secrets = [hook.secret]
    if (
        hook.previous_secret
        and hook.previous_secret_expires is not None
        and hook.previous_secret_expires > now
    ):
        secrets.append(hook.previous_secret)
    timestamp = int(now.timestamp())
    headers["User-Agent"] = f"tokenstore/{__version__}"
    headers["webhook-id"] = msg_id
    headers["webhook-timestamp"] = str(timestamp)
    headers["webhook-signature"] = signature_header(secrets, msg_id, timestamp, body)
    return headers


def redacted(error: str, hook: OutboundWebhook) -> str:
    """An error text with the hook's secrets blanked out.

    HTTP libraries quote a header value they refuse to send; that value may be
    the auth token or a credential in the hook's headers, and the error goes to
    the delivery log, the command's output and the ``webhook_failed`` signal.
    A text cut to its first characters (a kept answer) may end inside a secret:
    that start of it is blanked too.
    """
    # Headers edited by hand into something other than an object still get here.
    headers = hook.headers.values() if isinstance(hook.headers, dict) else ()
    secrets = [hook.auth_token, hook.secret, hook.previous_secret, *headers]
    # A receiver may quote only the credential of "Bearer <credential>", without its scheme.
    secrets += [x.partition(" ")[2].strip() for x in secrets if isinstance(x, str)]
    for secret in sorted(
        (x for x in secrets if isinstance(x, str) and len(x) >= _SHORTEST_SECRET),
        key=len,
        reverse=True,
    ):
        for form in (secret, repr(secret)[1:-1]):
            error = _cut_off(error.replace(form, "***"), form)
    return error


def _cut_off(text: str, secret: str) -> str:
    """``text`` with the start of ``secret`` it ends with (it was cut inside it) blanked."""
    for size in range(len(secret) - 1, _SHORTEST_SECRET - 1, -1):
        if text.endswith(secret[:size]):
            return text[:-size] + "***"
    return text


class Sender:
    """Posts messages over one keep-alive session per thread, through the address guard.

    Each attempt ends by ``deadline`` seconds, connecting, sending and reading
    the answer together; ``connect_timeout`` and ``read_timeout`` bound each
    single wait within it.
    """

    def __init__(
        self, guard: AddressGuard, connect_timeout: float, read_timeout: float, deadline: float
    ) -> None:
        self.guard = guard
        self.timeout = (connect_timeout, read_timeout)
        self.deadline = deadline
        self._local = threading.local()
        self._urls: dict[str, str | None] = {}  # endpoint -> its prepared URL

    def session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            from ._netguard import guarded_session

            session = guarded_session(self.guard)
            self._local.session = session
        return session

    def start_afresh(self) -> None:
        """In a forked child: leave the parent's keep-alive connections to it, unused."""
        self._local = threading.local()

    def close(self) -> None:
        """Close this thread's session."""
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()
            self._local.session = None

    def _prepare(self, url: str, body: bytes, headers: dict[str, str]) -> requests.PreparedRequest:
        """A POST request; a hook posts to one endpoint every time, so its URL is prepared once."""
        request = _compat.prepare_post(url, self._urls.get(url), body, headers)
        if url not in self._urls:
            if len(self._urls) >= _PREPARED_URLS:
                self._urls.clear()
            self._urls[url] = request.url
        return request

    def post(
        self, url: str, body: bytes, headers: dict[str, str], deadline: float | None = None
    ) -> Outcome:
        """One POST within ``deadline`` seconds (default: the sender's); never raises."""
        seconds = self.deadline if deadline is None else min(deadline, self.deadline)
        # The thread's first session loads requests: the app's time, not the receiver's.
        session = self.session()
        start = time.perf_counter()
        with _deadline.limit(seconds) as attempt:
            outcome = self._post(session, url, body, headers, attempt)
        # A socket timeout cut to the time left may end it a moment before the reaper does.
        # A 2xx whose headers came in time is the receiver's acceptance, whatever became of
        # its body (cut by the deadline as by a reset): sent again, it would be a duplicate.
        if not (outcome.held_back or outcome.ok) and (attempt.expired or attempt.remaining() == 0):
            outcome = Outcome(
                False,
                outcome.status_code,
                error=f"{TIMED_OUT}: the attempt ran past "
                f"{_limit(seconds, deadline, self.deadline)}",
                body=outcome.body,
            )
        outcome.duration_ms = _since(start)
        outcome.error = storable(outcome.error)
        outcome.body = storable(outcome.body)
        return outcome

    def _post(
        self,
        session: requests.Session,
        url: str,
        body: bytes,
        headers: dict[str, str],
        attempt: _deadline.Attempt,
    ) -> Outcome:
        import requests

        try:
            request = self._prepare(url, body, headers)
            response = _compat.send_prepared(session, request, self.timeout)
        except BlockedAddress as exc:
            return Outcome(False, error=f"blocked: {exc}")
        except ResolverBusy as exc:
            return Outcome(False, error=f"not sent: {exc}", held_back=True)
        except requests.Timeout as exc:
            return Outcome(False, error=f"{TIMED_OUT}: {_short(exc)}")
        except Exception as exc:
            # RequestException and its kind, but also what a hook's stored settings can
            # provoke (a header value http.client cannot encode): recorded, never raised.
            return Outcome(False, error=f"{type(exc).__name__}: {_short(exc)}")
        if attempt.expired:  # the deadline cut the answer's headers short: none came in time
            response.close()
            return Outcome(False, response.status_code)
        try:
            # The body gets one read timeout in all, within the attempt's deadline.
            deadline = min(attempt.deadline, time.monotonic() + self.timeout[1])
            text = _read_limited(response, deadline)
        except Exception as exc:
            text = f"(response body unreadable: {type(exc).__name__}: {_short(exc)})"
        finally:
            response.close()
        code = response.status_code
        outcome = Outcome(200 <= code < 300, code, body=text)
        if outcome.ok:
            return outcome
        if 300 <= code < 400:
            where = _short(response.headers.get("Location", "(no Location)"))
            outcome.error = f"HTTP {code}: redirect to {where} not followed"
        elif code == 410:
            outcome.error = "HTTP 410 Gone: the receiver asked for this hook to stop"
            outcome.gone = True
        else:
            outcome.error = f"HTTP {code}"
            if code in (429, 503):
                outcome.retry_after = response.headers.get("Retry-After")
        return outcome


def _limit(seconds: float, given: float | None, own: float) -> str:
    """What ended an attempt at ``seconds``: its deadline, or what the writer's budget left."""
    shown = f"{round(seconds, 2):g} s"
    if given is None or given >= own:
        return f"its deadline of {shown}"
    return (
        f"the {shown} left of the writing thread's sync_budget, short of its deadline of {own:g} s"
    )


def _since(start: float) -> int:
    return round((time.perf_counter() - start) * 1000)


def _short(what: object) -> str:
    """An error's text, or a receiver's header quoted in one, cut to a size a log line takes."""
    return str(what)[:500]


def _read_limited(response: requests.Response, deadline: float) -> str:
    """Up to RESPONSE_LIMIT characters of the body, decoded with replacement.

    A body larger than that is not read to the end; closing the response then
    drops the connection rather than draining megabytes from it. Reading also
    stops at ``deadline`` (a ``time.monotonic()`` value): the read timeout
    bounds each wait, not the total, and a receiver trickling a byte at a time
    must not hold the writing thread.
    """
    read = _compat.chunk_reader(response)
    data = bytearray()
    while len(data) < _RESPONSE_BYTES and time.monotonic() < deadline:
        chunk = read(8192)
        if not chunk:
            break
        data += chunk
    return bytes(data[:_RESPONSE_BYTES]).decode("utf-8", errors="replace")[:RESPONSE_LIMIT]
