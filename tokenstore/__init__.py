"""API tokens and outbound webhooks for applications that embed SQLite.

    store = tokenstore.open("app.sqlite3")
    token, secret = store.tokens.create(store.users.create("alice"))
    store.tokens.authenticate(secret)

Everything public is importable from here; ``tokenstore.signals`` holds the
blinker signals.
"""

__version__ = "0.1.0"

from . import signals
from .abid import ABID, DEFAULT_ABID_URI_SALT, abid_from_values
from .changes import ChangeEvent
from .credentials import looks_like_token
from .errors import (
    ABIDDriftError,
    AuthenticationError,
    BlockedAddress,
    ExpiredToken,
    InvalidABID,
    InvalidToken,
    MissingScope,
    NotFound,
    RevokedToken,
    StoreError,
    TokenstoreError,
    ValidationError,
    WebhookVerificationError,
)
from .models import ABIDModel, APIToken, OutboundWebhook, User, WebhookDelivery
from .signing import verify_webhook
from .store import Store, open

__all__ = [
    "ABID",
    "DEFAULT_ABID_URI_SALT",
    "ABIDDriftError",
    "ABIDModel",
    "APIToken",
    "AuthenticationError",
    "BlockedAddress",
    "ChangeEvent",
    "ExpiredToken",
    "InvalidABID",
    "InvalidToken",
    "MissingScope",
    "NotFound",
    "OutboundWebhook",
    "RevokedToken",
    "Store",
    "StoreError",
    "TokenstoreError",
    "User",
    "ValidationError",
    "WebhookDelivery",
    "WebhookVerificationError",
    "__version__",
    "abid_from_values",
    "looks_like_token",
    "open",
    "signals",
    "verify_webhook",
]
