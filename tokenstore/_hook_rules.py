"""What a webhook may hold: each hook is checked before every save, whoever saves it.

The API, the CLI, the admin page, the ArchiveBox importer and a plain
``hook.save()`` all go through ``HookValidator``, so a hook in the store
always names a registered model, an endpoint the address policy allows,
headers HTTP can carry and a signing secret the Standard Webhooks libraries
accept.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import peewee

from ._abid import ABID
from ._allowlist import AllowList
from ._capture import model_ref
from ._credentials import SECRET_FORM, SECRET_PREFIX, quoted
from ._errors import InvalidABID, ValidationError
from ._inputs import check_flag, check_header_name, check_text
from ._models import OutboundWebhook, WebhookDelivery
from ._registry import Registry
from ._signing import new_signing_secret, signing_key

#: django-signal-webhooks' signal choices; an event fires every choice whose name contains its kind.
SIGNAL_CHOICES = (
    "CREATE",
    "UPDATE",
    "DELETE",
    "M2M",
    "CREATE_OR_UPDATE",
    "CREATE_OR_DELETE",
    "CREATE_OR_M2M",
    "UPDATE_OR_DELETE",
    "UPDATE_OR_M2M",
    "DELETE_OR_M2M",
    "CREATE_UPDATE_OR_DELETE",
    "CREATE_UPDATE_OR_M2M",
    "CREATE_DELETE_OR_M2M",
    "UPDATE_DELETE_OR_M2M",
    "CREATE_UPDATE_DELETE_OR_M2M",
)

#: Characters a hook's headers may hold in all, and its auth token: ArchiveBox's
#: bound on its auth token column, and within what HTTP servers take in headers.
MAX_HEADERS = 8_000

# What http.client can put in a header value: Latin-1 without controls (tab is allowed),
# and what requests sends: nothing that starts with a blank (tab, space, NBSP, NEL).
_HEADER_VALUE = re.compile(r"(?!\s)[\t\x20-\x7e\x80-\xff]*")

#: The fewest random bytes a signing secret may have (what the Standard Webhooks libraries make).
MIN_SECRET_BYTES = 24


def _header_value_ok(value: object) -> bool:
    return isinstance(value, str) and _HEADER_VALUE.fullmatch(value) is not None


def _secret_ok(secret: object) -> bool:
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        return False
    try:
        return len(signing_key(secret)) >= MIN_SECRET_BYTES
    except ValidationError:
        return False


def _spelled_as_abid(name: str) -> bool:
    """Whether ``name`` reads as a hook's ABID (in any case), as ``webhooks.get`` reads a key."""
    try:
        ABID.parse(name, prefix=OutboundWebhook.abid_prefix)
    except InvalidABID:
        return False
    return True


def _set_if_changed(hook: OutboundWebhook, name: str, value: object) -> None:
    """Normalise a field, marking it changed only if it was not normal: saves write changes."""
    if getattr(hook, name) != value:
        setattr(hook, name, value)


class HookValidator:
    """Checks a hook before every save, through the API or ``hook.save()`` alike.

    It knows the registered models (a hook's ``ref`` must name one) and the
    address guard (its endpoint must be reachable); the store binds it to
    ``OutboundWebhook`` when it opens.
    """

    def __init__(self, registry: Registry, allowlist: AllowList) -> None:
        self.registry = registry
        self.allowlist = allowlist
        self.guard = allowlist.guard

    def check_ref(self, ref: str | type[peewee.Model]) -> str:
        """The ref of the registered model ``ref`` names, if hooks may watch it."""
        model = self.registry.for_ref(ref, unlisted=(WebhookDelivery,))
        if model is WebhookDelivery:
            raise ValidationError(
                f"{model_ref(model)} cannot have webhooks: its changes are not "
                "captured (a hook on it would report its own deliveries)"
            )
        return model_ref(model)

    def __call__(self, hook: OutboundWebhook, *, judge_target: bool = True) -> None:
        """Check a hook's fields before it is saved; raise ValidationError at the first fault.

        ``judge_target=False`` leaves the ref and the endpoint to the caller: an
        import keeps a hook whose model or address is refused here, disabled.
        """
        name = check_text(hook.name, "webhook name", kept_as="a name")
        if not name.strip() or len(name) > 255:
            raise ValidationError(f"webhook name must be 1-255 characters, got {name!r}")
        stored = hook._stored or {}
        if stored.get("name") != name and _spelled_as_abid(name):  # a stored one may stay
            raise ValidationError(
                f"webhook name {name!r} is spelled as an ABID, and a hook is found by its ABID "
                "or by its name: choose a name that is not one"
            )
        if not isinstance(hook.signal, str) or hook.signal.upper() not in SIGNAL_CHOICES:
            raise ValidationError(
                f"webhook signal {quoted(hook.signal)} is not one of: {', '.join(SIGNAL_CHOICES)}"
            )
        _set_if_changed(hook, "signal", hook.signal.upper())
        # The ref and the endpoint are judged when set: another process (the CLI, say)
        # may know other models or allow other addresses, and must still be able to
        # enable or rename a hook the application made.
        if judge_target and (not stored or stored.get("ref") != hook.ref):
            _set_if_changed(hook, "ref", self.check_ref(hook.ref))
        # Counted in UTF-8 bytes: past 2047, PostgreSQL's index of (ref, endpoint) may refuse
        # the row, and percent-encoded on the wire the URL is longer still.
        if not isinstance(hook.endpoint, str):
            raise ValidationError(
                f"webhook endpoint must be a URL as a string, got {type(hook.endpoint).__name__}"
            )
        if len(hook.endpoint.encode(errors="replace")) > 2047:
            raise ValidationError(
                "webhook endpoint must be a URL of at most 2047 characters "
                "(bytes, in UTF-8: a non-ASCII character counts two to four)"
            )
        if judge_target and (not stored or stored.get("endpoint") != hook.endpoint):
            self.allowlist.refresh()
            self.guard.check_endpoint(hook.endpoint)
            check_text(hook.endpoint, "webhook endpoint")  # the guard passes allowed hosts early
        headers = {} if hook.headers is None else hook.headers
        if not isinstance(headers, Mapping):
            raise ValidationError(f"webhook headers must be a JSON object, got {quoted(headers)}")
        named: set[str] = set()
        for key, value in headers.items():
            check_header_name(key, "webhook header name")
            if key.lower() in named:  # HTTP names ignore case: the receiver would get one
                raise ValidationError(f"webhook header {key!r} is named twice (ignoring case)")
            named.add(key.lower())
            if not _header_value_ok(value):
                raise ValidationError(
                    f"webhook header {key!r} must have a string value of Latin-1 "
                    "characters without a leading blank, line breaks or other control characters"
                )
        size = sum(len(key) + len(value) for key, value in headers.items())
        if size > MAX_HEADERS:
            raise ValidationError(
                f"webhook headers must be at most {MAX_HEADERS} characters in all, "
                f"names and values, got {size}"
            )
        _set_if_changed(hook, "headers", dict(headers))
        if not _header_value_ok(hook.auth_token):
            # The value is secret: the message does not quote it.
            raise ValidationError(
                "webhook auth_token must be a string of Latin-1 characters without "
                "a leading blank, line breaks or other control characters"
            )
        if len(hook.auth_token) > MAX_HEADERS:
            raise ValidationError(
                f"webhook auth_token must be at most {MAX_HEADERS} characters, "
                f"got {len(hook.auth_token)}"
            )
        for flag in ("enabled", "keep_last_response"):
            check_flag(getattr(hook, flag), f"webhook {flag}")
        if not hook.secret:
            hook.secret = new_signing_secret()  # made like Django's Model.objects.create()
        if not _secret_ok(hook.secret) or (
            hook.previous_secret is not None and not _secret_ok(hook.previous_secret)
        ):
            raise ValidationError(
                f"webhook signing secret must be {SECRET_FORM} of at least {MIN_SECRET_BYTES} bytes"
            )
        self._refuse_duplicates(hook)

    def _refuse_duplicates(self, hook: OutboundWebhook) -> None:
        """Say which unique field clashes, also for ``hook.save()`` outside ``create``."""
        others = OutboundWebhook.select(OutboundWebhook.id).where(OutboundWebhook.id != hook.id)
        if others.where(OutboundWebhook.name == hook.name).exists():
            raise ValidationError(f"a webhook named {hook.name!r} already exists")
        same_target = (OutboundWebhook.ref == hook.ref) & (
            OutboundWebhook.endpoint == hook.endpoint
        )
        if others.where(same_target).exists():
            raise ValidationError(f"a webhook for {hook.ref} at {hook.endpoint} already exists")
