"""WSGI middleware: only requests with a valid API token reach the application.

The token is read where ArchiveBox reads it (see ``tokens.token_from_request``)
and the authenticated ``APIToken`` is handed on as
``environ["tokenstore.token"]``. Refusals are JSON, so API clients can show
the reason: 401 when the token is missing, unknown, expired or revoked, 403
when it is valid but lacks the required scope (RFC 6750's codes).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from ._errors import AuthenticationError, MissingScope, ValidationError
from ._inputs import check_header_name
from ._request_token import ARCHIVEBOX_API_KEY_HEADER, token_in
from ._store import Store
from ._tokens import _check_scope

ENVIRON_KEY = "tokenstore.token"


class TokenAuthMiddleware:
    """Wrap ``app`` so that it only sees requests carrying a token of ``store``.

    With ``scope``, the token must also grant that scope (tokens issued
    without scopes grant all). ``header`` defaults to the store's
    ``api_key_header``. Safe under threaded servers: each thread
    authenticates on its own connection.
    """

    def __init__(
        self,
        app: WSGIApplication,
        store: Store,
        scope: str | None = None,
        header: str | None = None,
    ) -> None:
        # Fail at startup, not on the first request.
        if not callable(app):
            raise ValidationError(f"app must be a WSGI application, got {type(app).__name__}")
        if not isinstance(store, Store):
            raise ValidationError(f"store must be a tokenstore.Store, got {type(store).__name__}")
        if header is None:
            header = store.tokens.header
        if scope is not None:
            _check_scope(scope)
        check_header_name(header, "header")
        self.app = app
        self.store = store
        self.scope = scope
        self.header = header
        # Where each header token_in reads sits in a WSGI environ.
        self._environ_keys = {
            name: _environ_key(name)
            for name in (header, ARCHIVEBOX_API_KEY_HEADER, "Authorization")
        }

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        headers = {
            name: value
            for name, key in self._environ_keys.items()
            if isinstance(value := environ.get(key), str)
        }
        query = environ.get("QUERY_STRING")
        secret = token_in(headers, query if isinstance(query, str) else "", self.header)
        if secret is None:
            return _refuse(
                start_response,
                "401 Unauthorized",
                f"API token required: send it in the {self.header} header, as "
                "'Authorization: Bearer <token>', or as the api_key query parameter",
                "Bearer",
            )
        try:
            token = self.store.tokens.authenticate(secret, self.scope)
        except MissingScope as exc:
            return _refuse(
                start_response,
                "403 Forbidden",
                str(exc),
                f'Bearer error="insufficient_scope", scope="{self.scope}"',
            )
        except AuthenticationError as exc:
            return _refuse(
                start_response, "401 Unauthorized", str(exc), 'Bearer error="invalid_token"'
            )
        environ[ENVIRON_KEY] = token
        return self.app(environ, start_response)


def _environ_key(header: str) -> str:
    """The CGI name a WSGI server gives a request header."""
    return "HTTP_" + header.upper().replace("-", "_")


def _refuse(
    start_response: StartResponse, status: str, message: str, challenge: str
) -> list[bytes]:
    body = json.dumps({"error": message}).encode("utf-8")
    start_response(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("WWW-Authenticate", challenge),
            ("Cache-Control", "no-store"),
        ],
    )
    return [body]
