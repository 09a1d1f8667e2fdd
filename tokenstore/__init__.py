"""API tokens and outbound webhooks for applications that embed SQLite.

    store = tokenstore.open("app.sqlite3")
    token, secret = store.tokens.create(store.users.create("alice"))
    store.tokens.authenticate(secret)

Everything public is importable from here, and only from here: the modules
whose names start with an underscore are private and may change at any time.
``tokenstore.signals`` holds the blinker signals.
"""

from . import signals
from ._abid import ABID, DEFAULT_ABID_URI_SALT, abid_from_values
from ._capture import ChangeEvent
from ._credentials import looks_like_token
from ._errors import (
    ABIDDriftError,
    AuthenticationError,
    BlockedAddress,
    DamagedRow,
    ExpiredToken,
    InvalidABID,
    InvalidToken,
    MissingScope,
    NotFound,
    RevokedToken,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreIOError,
    StoreLocked,
    StoreReadOnly,
    TokenstoreError,
    ValidationError,
    WebhookVerificationError,
)
from ._migrate import migrate
from ._models import ABIDModel, APIToken, OutboundWebhook, User, WebhookDelivery
from ._options import Options
from ._receiver import make_receiver
from ._request_token import token_from_request
from ._retry_thread import RetryThread
from ._signing import verify_webhook
from ._store import Store, open
from ._tokens import Tokens
from ._users import Users
from ._version import __version__
from ._webhooks import Webhooks
from ._wsgi import TokenAuthMiddleware

__all__ = [
    "ABID",
    "DEFAULT_ABID_URI_SALT",
    "ABIDDriftError",
    "ABIDModel",
    "APIToken",
    "AuthenticationError",
    "BlockedAddress",
    "ChangeEvent",
    "DamagedRow",
    "ExpiredToken",
    "InvalidABID",
    "InvalidToken",
    "MissingScope",
    "NotFound",
    "Options",
    "OutboundWebhook",
    "RetryThread",
    "RevokedToken",
    "Store",
    "StoreCorrupt",
    "StoreError",
    "StoreFull",
    "StoreIOError",
    "StoreLocked",
    "StoreReadOnly",
    "TokenAuthMiddleware",
    "Tokens",
    "TokenstoreError",
    "User",
    "Users",
    "ValidationError",
    "WebhookDelivery",
    "WebhookVerificationError",
    "Webhooks",
    "__version__",
    "abid_from_values",
    "looks_like_token",
    "make_receiver",
    "migrate",
    "open",
    "signals",
    "token_from_request",
    "verify_webhook",
]
