"""One exception hierarchy, so callers can catch everything tokenstore raises.

Every class is rooted at :class:`TokenstoreError`. Errors about bad input also
derive from :class:`ValueError` so code that already guards input keeps working.
Messages say what was wrong and where; they never contain a secret.
"""


class TokenstoreError(Exception):
    """Base class of every error tokenstore raises on purpose."""


class InvalidABID(TokenstoreError, ValueError):
    """An ABID string or one of its source values is malformed."""


class ABIDDriftError(TokenstoreError, ValueError):
    """An update would change a part of a record's ABID, and the model forbids it."""


class StoreError(TokenstoreError):
    """The store file cannot be opened or used (not SQLite, newer schema, ...)."""


class ValidationError(TokenstoreError, ValueError):
    """A value given to the API is not acceptable; nothing was written."""


class NotFound(TokenstoreError, LookupError):
    """No record matches the given identifier."""


class AuthenticationError(TokenstoreError):
    """A presented API token does not grant access."""


class InvalidToken(AuthenticationError):
    """The token is malformed, fails its checksum, or is unknown."""


class ExpiredToken(AuthenticationError):
    """The token was valid once but its expiry time has passed."""


class RevokedToken(AuthenticationError):
    """The token was revoked."""


class MissingScope(AuthenticationError):
    """The token is valid but lacks the scope the caller asked for."""


class WebhookVerificationError(TokenstoreError):
    """A received webhook request fails signature or timestamp checks."""


class BlockedAddress(TokenstoreError):
    """A webhook endpoint resolves to an address the network guard refuses."""
