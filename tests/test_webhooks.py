"""OutboundWebhook: fields, validation on save, and the ``store.webhooks`` API.

Sending is covered in test_delivery.py; here hooks point at addresses nothing
is sent to, and no app model is saved while an enabled hook matches it.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import _db
import peewee
import pytest
from conftest import Clock

import tokenstore
from tokenstore import Store
from tokenstore._errors import BlockedAddress, NotFound, ValidationError
from tokenstore._hook_rules import SIGNAL_CHOICES
from tokenstore._models import ABIDModel, OutboundWebhook, User, WebhookDelivery

URL = "http://127.0.0.1:9/hook"  # allowed by the store fixture; never reached here


class Doc(ABIDModel):
    abid_prefix = "doc_"
    title = peewee.TextField(default="")


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2024, 10, 24, 12, 0, tzinfo=UTC))


@pytest.fixture
def store(db_path: Path, clock: Clock) -> Iterator[Store]:
    """Overrides conftest's to add a fixed clock and the Doc model."""
    s = tokenstore.open(db_path, webhook_allow=["127.0.0.1/32"], clock=clock)
    s.register(Doc)
    try:
        yield s
    finally:
        s.close()


def hook_count() -> int:
    return int(OutboundWebhook.select().count())


# -- fields and defaults ------------------------------------------------------------


def test_create_fills_every_field_of_the_original_and_a_secret(store: Store) -> None:
    hook = store.webhooks.create("docs", Doc, URL)
    assert hook.abid.startswith("whk_")
    assert hook.ABID.prefix == "whk_"
    assert (hook.name, hook.signal, hook.ref, hook.endpoint) == (
        "docs",
        "CREATE_UPDATE_OR_DELETE",
        store.ref(Doc),
        URL,
    )
    assert (hook.headers, hook.auth_token, hook.enabled, hook.keep_last_response) == (
        {},
        "",
        True,
        False,
    )
    assert (hook.last_response, hook.last_success, hook.last_failure) == ("", None, None)
    assert (hook.failure_count, hook.disabled_reason) == (0, "")
    assert hook.created == hook.created_at and hook.updated == hook.modified_at

    stored = OutboundWebhook.get_by_id(hook.id)
    assert stored.secret == hook.secret
    assert stored.headers == {}
    assert stored.created.tzinfo is not None


def test_secrets_are_whsec_base64_of_24_random_bytes_per_hook(store: Store) -> None:
    secrets = {store.webhooks.create(f"h{i}", Doc, f"{URL}/{i}").secret for i in range(5)}
    assert len(secrets) == 5
    for secret in secrets:
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) >= 24


def test_the_model_can_be_created_directly_and_is_validated(store: Store) -> None:
    """As with Django's ``OutboundWebhook.objects.create(...)``: a secret is made for it."""
    hook = OutboundWebhook.create(name="direct", ref=store.ref(Doc), endpoint=URL)
    assert hook.secret.startswith("whsec_")
    with pytest.raises(ValidationError, match="scheme must be http or https"):
        OutboundWebhook.create(name="ftp", ref=store.ref(Doc), endpoint="ftp://example.com/")
    with pytest.raises(ValidationError, match="already exists"):
        OutboundWebhook.create(name="direct", ref=store.ref(Doc), endpoint=URL + "/2")
    with pytest.raises(ValidationError, match="already exists"):
        OutboundWebhook.create(name="same-target", ref=store.ref(Doc), endpoint=URL)
    assert hook_count() == 1


def test_a_bad_signing_secret_is_refused_on_save(store: Store) -> None:
    hook = store.webhooks.create("docs", Doc, URL)
    for bad in ("nope", "whsec_!!!", "whsec_" + base64.b64encode(b"short").decode()):
        hook.secret = bad
        with pytest.raises(ValidationError, match="signing secret"):
            hook.save()
    assert OutboundWebhook.get_by_id(hook.id).secret.startswith("whsec_")


# -- validation -------------------------------------------------------------------


@pytest.mark.parametrize("signal", SIGNAL_CHOICES)
def test_every_signal_choice_is_accepted_and_stored(store: Store, signal: str) -> None:
    hook = store.webhooks.create("docs", Doc, URL, signal=signal)
    assert OutboundWebhook.get_by_id(hook.id).signal == signal


def test_signal_choices_include_the_m2m_family() -> None:
    assert {"M2M", "CREATE_OR_M2M", "CREATE_UPDATE_DELETE_OR_M2M"} <= set(SIGNAL_CHOICES)
    assert len(SIGNAL_CHOICES) == 15


def test_signal_case_is_normalised_and_unknown_signals_are_refused(store: Store) -> None:
    assert store.webhooks.create("docs", Doc, URL, signal="create_or_update").signal == (
        "CREATE_OR_UPDATE"
    )
    with pytest.raises(ValidationError, match="is not one of: CREATE, UPDATE"):
        store.webhooks.create("bad", Doc, URL + "/2", signal="SAVE")


def test_ref_accepts_a_model_class_or_its_name_and_refuses_unknown_ones(store: Store) -> None:
    by_class = store.webhooks.create("a", Doc, URL + "/a")
    by_name = store.webhooks.create("b", store.ref(Doc), URL + "/b")
    assert by_class.ref == by_name.ref == f"{Doc.__module__}.Doc"
    with pytest.raises(ValidationError) as info:
        store.webhooks.create("c", "app.models.Missing", URL)
    message = str(info.value)
    assert "app.models.Missing" in message
    assert store.ref(Doc) in message and "tokenstore.APIToken" in message
    assert "WebhookDelivery" not in message  # not a ref a hook may name
    assert "store.register" in message  # what to do about it


def test_a_hook_on_the_delivery_log_is_refused(store: Store) -> None:
    with pytest.raises(ValidationError, match="not captured"):
        store.webhooks.create("loop", WebhookDelivery, URL)


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("ftp://example.com/in", "scheme must be http or https"),
        ("javascript:alert(1)", "scheme must be http or https"),
        ("example.com/in", "scheme must be http or https"),
        ("http:///in", "no host"),
        ("http://exa mple.com/", "spaces or control characters"),
        ("http://example.com:99999/", "malformed"),
        ("https://example.com/" + "a" * 2048, "at most 2047"),
        # 1,900 characters, but 5,700 bytes: past PostgreSQL's bound on an index entry
        # (2,704 bytes), and 17 kB percent-encoded on the wire.
        ("https://example.com/" + "".join(chr(0x4E00 + i * 7) for i in range(1900)), "2047"),
        ("", "URL"),
    ],
)
def test_bad_endpoints_are_refused(store: Store, endpoint: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        store.webhooks.create("docs", Doc, endpoint)
    assert hook_count() == 0


def test_https_and_hostnames_are_accepted(store: Store) -> None:
    hook = store.webhooks.create("docs", Doc, "https://hooks.example.com/in?x=1")
    assert hook.endpoint == "https://hooks.example.com/in?x=1"


def test_a_literal_private_address_is_refused_without_an_allowlist(db_path: Path) -> None:
    s = tokenstore.open(db_path)
    try:
        s.register(Doc)
        with pytest.raises(BlockedAddress, match=r"loopback.*store\.webhooks\.allow\(\)"):
            s.webhooks.create("docs", Doc, URL)
        with pytest.raises(BlockedAddress, match="metadata"):
            s.webhooks.create("docs", Doc, "http://169.254.169.254/latest/")
        assert s.webhooks.list() == []
    finally:
        s.close()


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        (["X-A", "1"], "must be a JSON object"),
        ("X-A: 1", "must be a JSON object"),
        ({"X-A": 1}, "string value"),
        ({"X-A": None}, "string value"),
        ({"X-A": "a\r\nX-Injected: 1"}, "line breaks"),
        ({"X-A": "tea \u2615"}, "Latin-1"),
        ({"X-A": "bell\x07"}, "control characters"),
        # requests refuses a value that starts with a blank: no delivery could be sent
        ({"X-A": " lead"}, "leading blank"),
        ({"X-A": "\tlead"}, "leading blank"),
        ({"X-A": "\xa0lead"}, "leading blank"),
        ({"Bad Name": "1"}, "not a valid HTTP header name"),
        ({"": "1"}, "not a valid HTTP header name"),
        ({"X-" + "a" * 8_000: "1"}, "at most 8000 characters"),
        ({"X-A": "a" * 5_000, "X-B": "b" * 5_000}, "at most 8000 characters"),
        ({f"X-{i}": "v" for i in range(2_000)}, "at most 8000 characters"),
        ({"X-Key": "1", "x-key": "2"}, "'x-key' is named twice"),  # HTTP would send one
    ],
)
def test_bad_headers_are_refused(store: Store, headers: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        store.webhooks.create("docs", Doc, URL, headers=headers)
    assert hook_count() == 0


def test_headers_and_auth_token_up_to_their_bound_are_kept(store: Store) -> None:
    headers = {"X-A": "a" * 3_000, "X-B": "b" * 4_990}  # 8,000 characters in all
    hook = store.webhooks.create("docs", Doc, URL, headers=headers, auth_token="t" * 8_000)
    assert OutboundWebhook.get_by_id(hook.id).headers == headers
    with pytest.raises(ValidationError, match=r"auth_token.*at most 8000 characters"):
        store.webhooks.update(hook, auth_token="t" * 8_001)
    assert OutboundWebhook.get_by_id(hook.id).auth_token == "t" * 8_000


def test_headers_are_stored_as_a_json_object(store: Store) -> None:
    hook = store.webhooks.create("docs", Doc, URL, headers={"X-Team": "blue", "X-Tab": "a\tb"})
    assert OutboundWebhook.get_by_id(hook.id).headers == {"X-Team": "blue", "X-Tab": "a\tb"}
    team = "json_extract(headers, '$.X-Team')" if store.path else "headers::json ->> 'X-Team'"
    row = store.db.execute_sql(f"SELECT {team} FROM tokenstore_outbound_webhook").fetchone()
    assert row == ("blue",)


@pytest.mark.parametrize("token", ["line\nbreak", "caf\u00e9 \u2615", 42, " Bearer t0k3n"])
def test_bad_auth_tokens_are_refused_without_being_quoted(store: Store, token: Any) -> None:
    with pytest.raises(ValidationError, match="auth_token") as info:
        store.webhooks.create("docs", Doc, URL, auth_token=token)
    assert str(token) not in str(info.value)


@pytest.mark.parametrize(
    ("name", "message"),
    [("", "1-255 characters"), ("   ", "1-255 characters"), ("n" * 256, "1-255 characters")],
)
def test_bad_names_are_refused(store: Store, name: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        store.webhooks.create(name, Doc, URL)


def test_names_are_unique_and_so_are_ref_and_endpoint_together(store: Store) -> None:
    store.webhooks.create("docs", Doc, URL)
    with pytest.raises(ValidationError, match="named 'docs' already exists"):
        store.webhooks.create("docs", Doc, URL + "/other")
    with pytest.raises(ValidationError, match=f"for {store.ref(Doc)} at {URL} already exists"):
        store.webhooks.create("docs-2", Doc, URL)
    store.webhooks.create("tokens", "tokenstore.APIToken", URL)  # another model: fine
    assert hook_count() == 2


def test_a_duplicate_that_only_the_database_catches_is_still_named(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes may both pass the check before either saves: the unique index decides."""
    store.webhooks.create("docs", Doc, URL)
    monkeypatch.setattr(OutboundWebhook, "validator", None)
    with store.atomic():
        with pytest.raises(ValidationError, match="named 'docs' already exists"):
            store.webhooks.create("docs", Doc, URL + "/other")
        with pytest.raises(ValidationError, match=f"for {store.ref(Doc)} at {URL} already"):
            store.webhooks.create("docs-2", Doc, URL)
        store.webhooks.create("docs-3", Doc, URL + "/third")  # the transaction goes on
    assert hook_count() == 2


def test_flags_must_be_booleans(store: Store) -> None:
    hook = store.webhooks.create("docs", Doc, URL)
    with pytest.raises(ValidationError, match="enabled must be true or false"):
        store.webhooks.update(hook, enabled="yes")
    with pytest.raises(ValidationError, match="keep_last_response must be true or false"):
        store.webhooks.update(hook, keep_last_response=1)


# -- the API ------------------------------------------------------------------------


def test_list_get_by_abid_or_name(store: Store) -> None:
    a = store.webhooks.create("a", Doc, URL + "/a")
    b = store.webhooks.create("b", Doc, URL + "/b", signal="CREATE")
    # oldest first; two made in the same millisecond go by ABID
    oldest_first = sorted([a, b], key=lambda h: (h.created_at, h.abid))
    assert [h.name for h in store.webhooks.list()] == [h.name for h in oldest_first]
    store.webhooks.disable(b)
    assert [h.name for h in store.webhooks.list(enabled=True)] == ["a"]
    assert [h.name for h in store.webhooks.list(enabled=False)] == ["b"]
    assert store.webhooks.get(a.abid).id == a.id
    assert store.webhooks.get(a.abid.lower()).id == a.id
    assert store.webhooks.get("b").id == b.id
    with pytest.raises(NotFound, match="'nope'"):
        store.webhooks.get("nope")
    with pytest.raises(NotFound):
        store.webhooks.get("whk_01M8BBKATK13B00F815ESVYW7G")


def test_hooks_made_in_one_millisecond_are_listed_in_one_order_on_both_backends(
    store: Store,
) -> None:
    """Ties in ``created_at`` go by ABID, as tokens do: PostgreSQL returns tied rows in the
    order it finds them, which an update changes; SQLite in the order they were inserted."""
    for i in range(12):
        store.webhooks.create(f"h{i:02}", Doc, f"{URL}/{i}")
    OutboundWebhook.update(created_at=datetime(2030, 1, 1, tzinfo=UTC)).execute()
    for i in range(0, 12, 3):
        store.webhooks.update(f"h{i:02}", endpoint=f"{URL}/moved/{i}")
    by_abid = sorted(store.webhooks.list(), key=lambda h: h.abid)
    assert [h.name for h in store.webhooks.list()] == [h.name for h in by_abid]
    enabled = [h.name for h in store.webhooks.list(enabled=True)]
    assert enabled == [h.name for h in by_abid]


def test_a_secret_pasted_where_a_hook_or_delivery_is_named_is_not_repeated(store: Store) -> None:
    """Lookups and allowlist entries never quote back a token or signing secret given by mistake."""
    _, token = store.tokens.create()
    signing = store.webhooks.create("docs", Doc, URL).secret
    legacy = "0123456789abcdef0123456789abcdef"  # an ArchiveBox key
    lookups = (store.webhooks.get, store.webhooks.delivery, store.webhooks.redeliver,
               lambda given: store.webhooks.deliveries(before=given))  # fmt: skip
    # As pasted: with its line end, blanks, quotes, a full stop, an Authorization header's scheme.
    pasted = ("{}", "{}\n", " {} ", "'{}'", "{}.", "Bearer {}")
    for given in (form.format(secret) for secret in (token, signing, legacy) for form in pasted):
        for call in lookups:
            with pytest.raises(NotFound) as caught:
                call(given)
            assert given.strip(" '.\n")[-30:-4] not in str(caught.value), str(caught.value)
        for entry_call in (store.webhooks.allow, store.webhooks.disallow):
            with pytest.raises(ValidationError, match="looks like a secret") as refused:
                entry_call(given)
            assert given.strip(" '.\n")[-30:-4] not in str(refused.value).lower()
    assert store.webhooks.allowlist() == ["127.0.0.1/32"]  # no secret kept in the file


def test_a_secret_given_as_a_username_hook_name_or_reason_is_refused_not_stored(
    store: Store,
) -> None:
    """Usernames, hook names and disable reasons are kept in clear and printed, as token
    names are: a secret pasted there is refused without being quoted, and nothing is written."""
    _, token = store.tokens.create()
    hook = store.webhooks.create("docs", Doc, URL)
    legacy = "0123456789abcdef0123456789abcdef"  # an ArchiveBox key
    before = (User.select().count(), [(h.name, h.disabled_reason) for h in store.webhooks.list()])
    for secret in (token, hook.secret, legacy):
        for call, what in (
            (partial(store.users.create, secret), "username"),
            (partial(store.webhooks.create, f"ci {secret}", Doc, URL + "/2"), "webhook name"),
            (partial(store.webhooks.update, hook, name=secret), "webhook name"),
            (partial(store.webhooks.disable, hook, f"key={secret}"), "reason"),
        ):
            with pytest.raises(ValidationError, match=f"{what} looks like a secret") as refused:
                call()
            assert secret[-20:] not in str(refused.value)
    after = (User.select().count(), [(h.name, h.disabled_reason) for h in store.webhooks.list()])
    assert after == before
    assert store.users.create("tsk_fan").username == "tsk_fan"  # no secret: a name


def test_a_hook_may_not_be_named_like_a_hook_s_abid(store: Store) -> None:
    """Hooks are found by ABID or by name: a name spelled as an ABID would name two hooks,
    or none by its name, and another one once the ABID's hook is deleted."""
    b = store.webhooks.create("b", Doc, URL + "/b")
    for name in (b.abid, b.abid.lower(), "whk_01HNZ2X4ZG0000000000000001"):
        with pytest.raises(ValidationError, match=r"webhook name '.*' is spelled as an ABID"):
            store.webhooks.create(name, Doc, URL + "/impostor")
        with pytest.raises(ValidationError, match="spelled as an ABID"):
            store.webhooks.update(b, name=name)
    assert [h.name for h in store.webhooks.list()] == ["b"]
    store.webhooks.update(b, name="whk_notes")  # not an ABID: a name like any other
    assert store.webhooks.get("whk_notes").id == b.id


def test_an_abid_names_its_own_hook_even_if_another_is_named_like_it(store: Store) -> None:
    """Deleting by ABID must not delete a hook renamed like it by hand (the sqlite3 shell)."""
    b = store.webhooks.create("b", Doc, URL + "/b")
    impostor = store.webhooks.create("impostor", Doc, URL + "/impostor")
    lower = store.webhooks.create("lower", Doc, URL + "/lower")
    for hook, name in ((impostor, b.abid), (lower, b.abid.lower())):
        OutboundWebhook.update(name=name).where(OutboundWebhook.id == hook.id).execute()
    for key in (b.abid, b.abid.lower()):
        assert store.webhooks.get(key).id == b.id
    assert store.webhooks.get(impostor.abid).id == impostor.id
    store.webhooks.delete(b.abid)
    assert sorted(h.id for h in store.webhooks.list()) == sorted([impostor.id, lower.id])


def test_update_changes_fields_all_or_nothing(store: Store) -> None:
    hook = store.webhooks.create("docs", Doc, URL)
    updated = store.webhooks.update(
        "docs",
        name="renamed",
        signal="DELETE",
        endpoint=URL + "/v2",
        headers={"X-V": "2"},
        auth_token="Bearer t",
        keep_last_response=True,
    )
    stored = OutboundWebhook.get_by_id(hook.id)
    assert (stored.name, stored.signal, stored.endpoint, stored.headers) == (
        "renamed",
        "DELETE",
        URL + "/v2",
        {"X-V": "2"},
    )
    assert (stored.auth_token, stored.keep_last_response) == ("Bearer t", True)
    assert updated.abid == hook.abid  # the ABID is issued once, drift is allowed

    with pytest.raises(ValidationError, match="scheme"):
        store.webhooks.update(stored, name="half", endpoint="gopher://x/")
    assert OutboundWebhook.get_by_id(hook.id).name == "renamed"
    assert (stored.name, stored.endpoint) == ("renamed", URL + "/v2")  # the caller's copy too
    with pytest.raises(
        ValidationError, match="cannot update failure_count, secret; editable fields: name"
    ):
        store.webhooks.update(stored, secret="whsec_x", failure_count=0)


def test_delete_removes_the_hook_and_its_deliveries(store: Store) -> None:
    hook = store.webhooks.create("docs", Doc, URL)
    other = store.webhooks.create("other", Doc, URL + "/2")
    store.webhooks.disable(other)
    for h in (hook, other):
        WebhookDelivery.create(hook=h.id, event_type="doc.created", payload="{}")
    store.webhooks.delete(hook)
    assert [h.name for h in store.webhooks.list()] == ["other"]
    assert [d.hook_id for d in store.webhooks.deliveries()] == [other.id]
    with pytest.raises(NotFound):
        store.webhooks.delete("docs")


def test_deliveries_filter_by_hook_and_status(store: Store, clock: Clock) -> None:
    a = store.webhooks.create("a", Doc, URL + "/a")
    b = store.webhooks.create("b", Doc, URL + "/b")
    made = []
    for i, (hook, status) in enumerate([(a, "delivered"), (a, "dead"), (b, "delivered")]):
        made.append(
            WebhookDelivery.create(
                hook=hook.id,
                event_type="doc.created",
                payload="{}",
                status=status,
                created_at=clock.now + timedelta(seconds=i),
            )
        )
    assert [d.abid for d in store.webhooks.deliveries()] == [d.abid for d in reversed(made)]
    assert [d.abid for d in store.webhooks.deliveries(hook=a)] == [made[1].abid, made[0].abid]
    assert [d.abid for d in store.webhooks.deliveries(hook="b")] == [made[2].abid]
    assert [d.abid for d in store.webhooks.deliveries(status="delivered")] == [
        made[2].abid,
        made[0].abid,
    ]
    assert [d.abid for d in store.webhooks.deliveries(hook=a, status="dead")] == [made[1].abid]
    assert store.webhooks.delivery(made[0].abid.lower()).id == made[0].id
    with pytest.raises(ValidationError, match="is not one of: pending, failed"):
        store.webhooks.deliveries(status="sent")
    with pytest.raises(NotFound):
        store.webhooks.delivery("msg_nope")


def test_rotate_secret_keeps_the_old_one_for_the_grace_period(store: Store, clock: Clock) -> None:
    hook = store.webhooks.create("docs", Doc, URL)
    old = hook.secret
    store.webhooks.rotate_secret("docs")
    stored = OutboundWebhook.get_by_id(hook.id)
    assert stored.secret != old and stored.secret.startswith("whsec_")
    assert stored.previous_secret == old
    assert stored.previous_secret_expires == clock.now + timedelta(hours=24)
    second = stored.secret
    store.webhooks.rotate_secret(stored, grace=timedelta(minutes=5))
    again = OutboundWebhook.get_by_id(hook.id)
    assert again.previous_secret == second
    assert again.previous_secret_expires == clock.now + timedelta(minutes=5)

    store.webhooks.deliver_due()
    assert OutboundWebhook.get_by_id(hook.id).previous_secret == second  # still in grace
    clock.now += timedelta(minutes=5)
    store.webhooks.deliver_due()
    erased = OutboundWebhook.get_by_id(hook.id)
    assert (erased.previous_secret, erased.previous_secret_expires) == (None, None)
    conn = store.db.connection()
    count = "SELECT count(*) FROM tokenstore_outbound_webhook WHERE previous_secret = ?"
    assert conn.execute(store.db.sql(count), (second,)).fetchone() == (0,)


def test_disable_and_enable(store: Store) -> None:
    hook = store.webhooks.create("docs", Doc, URL)
    pending = WebhookDelivery.create(hook=hook.id, event_type="doc.created", payload="{}")
    store.webhooks.disable(hook, reason="maintenance")
    stored = OutboundWebhook.get_by_id(hook.id)
    assert (stored.enabled, stored.disabled_reason) == (False, "maintenance")
    given_up = WebhookDelivery.get_by_id(pending.id)
    assert (given_up.status, given_up.last_error) == ("dead", "hook disabled: maintenance")
    stored.failure_count = 4
    stored.save()
    store.webhooks.enable("docs")
    stored = OutboundWebhook.get_by_id(hook.id)
    assert (stored.enabled, stored.disabled_reason, stored.failure_count) == (True, "", 0)


def test_saving_a_stale_copy_does_not_re_enable_a_disabled_hook(store: Store) -> None:
    hook = store.webhooks.create("stale", Doc, "https://example.com/stale")
    store.webhooks.disable(hook.abid, "the receiver answered 410")
    store.webhooks.update(hook, keep_last_response=True)  # ``hook`` was read before that
    stored = OutboundWebhook.get_by_id(hook.id)
    assert stored.keep_last_response is True
    assert stored.enabled is False
    assert stored.disabled_reason == "the receiver answered 410"


def test_saving_only_some_fields_is_still_validated(store: Store) -> None:
    hook = store.webhooks.create("partial", Doc, "https://example.com/partial")
    hook.signal = "bogus"
    with pytest.raises(ValidationError, match="signal 'bogus'"):
        hook.save(only=[OutboundWebhook.signal])
    hook.signal = "CREATE"
    hook.endpoint = "http://169.254.169.254/latest/meta-data"
    with pytest.raises(BlockedAddress, match="link-local"):
        hook.save(only=[OutboundWebhook.endpoint])
    assert OutboundWebhook.get_by_id(hook.id).endpoint == "https://example.com/partial"


def test_a_creator_that_is_not_in_the_store_is_refused(store: Store) -> None:
    ghost = User(id=999, username="ghost")  # deleted, or read from another store
    with pytest.raises(NotFound, match="999"):
        store.webhooks.create("ghostly", Doc, URL, created_by=ghost)
    assert store.webhooks.list() == []


# -- objects whose row is gone --------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda s, h: s.webhooks.update(h, name="back"),
        lambda s, h: s.webhooks.enable(h),
        lambda s, h: s.webhooks.disable(h),
        lambda s, h: s.webhooks.rotate_secret(h),
        lambda s, h: s.webhooks.ping(h),
        lambda s, h: s.webhooks.delete(h),
        lambda s, h: s.webhooks.deliveries(h),
    ],
)
def test_a_hook_object_whose_row_is_gone_is_not_found(store: Store, call: Any) -> None:
    """Another process (or this one) deleted it: saving the copy would change nothing."""
    hook = store.webhooks.create("gone", "tokenstore.User", URL)
    store.webhooks.delete("gone")
    never_saved = OutboundWebhook(name="never", ref="tokenstore.User", endpoint=URL)
    for stale in (hook, never_saved):
        with pytest.raises(NotFound, match="no webhook"):
            call(store, stale)
    assert hook_count() == 0 and WebhookDelivery.select().count() == 0


def test_redelivering_a_delivery_object_whose_row_is_gone_is_not_found(store: Store) -> None:
    hook = store.webhooks.create("gone", "tokenstore.User", URL)
    delivery = store.webhooks.ping(hook)
    store.webhooks.delete(hook)  # and its delivery log with it
    with pytest.raises(NotFound, match="no delivery"):
        store.webhooks.redeliver(delivery)
    assert WebhookDelivery.select().count() == 0


@pytest.mark.parametrize("wrong", [5, None, b"msg_01J00000000000000000000000", ["msg_"]])
def test_a_delivery_looked_up_by_no_text_at_all_is_a_validation_error(
    store: Store, wrong: Any
) -> None:
    """A webhook-id is text: anything else is a wrong type (docs/api.md's ValidationError),
    as tokens.get and webhooks.get say, not "no delivery" (NotFound)."""
    calls = [
        store.webhooks.delivery,
        store.webhooks.redeliver,
        lambda value: store.webhooks.deliveries(before=value),
    ]
    for call in calls[: 2 if wrong is None else 3]:  # before=None is the first page
        with pytest.raises(ValidationError, match="msg_") as raised:
            call(wrong)
        assert not isinstance(raised.value, NotFound)


def test_redelivering_a_delivery_object_never_saved_is_not_found(store: Store) -> None:
    """Its hook is no hook: looking that up raised an AttributeError from deep inside."""
    hook = store.webhooks.create("kept", "tokenstore.User", URL)
    for never_saved in (WebhookDelivery(), WebhookDelivery(hook=hook, payload="{}")):
        with pytest.raises(NotFound, match="no delivery"):
            store.webhooks.redeliver(never_saved)
    assert WebhookDelivery.select().count() == 0


def test_two_threads_rotating_one_hooks_secret_keep_both_secrets_in_the_chain(
    store: Store,
) -> None:
    """Each rotation's new secret was handed to a receiver: the later rotation must keep
    it as the previous secret. Both read the secret before either wrote, and the later
    kept the one before both, so the first rotation's secret never signed anything."""
    hook = store.webhooks.create("docs", Doc, "http://127.0.0.1:9/hooks")
    secrets = _db.one_after_another(store, lambda: store.webhooks.rotate_secret(hook.name).secret)
    assert all(isinstance(s, str) for s in secrets.values()), secrets
    now = store.webhooks.get(hook.name)
    assert (now.previous_secret, now.secret) == (secrets["first"], secrets["second"])


def test_rotating_with_the_secret_version_seen_rotates_once_however_often_it_is_sent(
    store: Store,
) -> None:
    """A form sent twice (a double click, a replay) names the version it was shown; the
    second rotation, even one racing the first, finds another version and changes nothing."""
    hook = store.webhooks.create("docs", Doc, "http://127.0.0.1:9/hooks")
    seen, original = hook.secret_version, hook.secret
    assert original not in seen and len(seen) == 16
    outcome = _db.one_after_another(
        store, lambda: store.webhooks.rotate_secret(hook.name, expected=seen).secret
    )
    refused = [value for value in outcome.values() if isinstance(value, ValidationError)]
    assert len(refused) == 1, outcome
    assert "rotated meanwhile" in str(refused[0]) and "docs" in str(refused[0])
    now = store.webhooks.get(hook.name)
    assert now.previous_secret == original and now.secret in outcome.values()
    assert now.secret_version != seen
    assert store.webhooks.rotate_secret(hook.name, expected=now.secret_version).secret != now.secret


def test_an_update_from_a_stale_copy_is_refused_when_asked(store: Store) -> None:
    """Two editors read the hook, each saves a change: the later one, saying which version it
    read, is refused rather than silently putting back what the first changed."""
    hook = store.webhooks.create("docs", Doc, "http://127.0.0.1:9/hooks")
    seen = hook.modified_at
    time.sleep(0.01)  # the version is modified_at, in milliseconds
    outcome = _db.one_after_another(
        store,
        lambda: store.webhooks.update(hook.name, unchanged_since=seen, signal="UPDATE").signal,
    )
    refused = [value for value in outcome.values() if isinstance(value, ValidationError)]
    assert len(refused) == 1 and "UPDATE" in outcome.values(), outcome
    assert "changed meanwhile" in str(refused[0]) and "docs" in str(refused[0])
    stale = store.webhooks.get("docs")
    with pytest.raises(ValidationError, match="changed meanwhile"):
        store.webhooks.update(stale, unchanged_since=seen, name="renamed")
    assert stale.name == "docs" and store.webhooks.get("docs").signal == "UPDATE"
    renamed = store.webhooks.update(stale, unchanged_since=stale.modified_at, name="renamed")
    assert store.webhooks.get("renamed").modified_at == renamed.modified_at


@pytest.mark.sqlite_only
@pytest.mark.parametrize("given", ["User", "user", "models.User", "tokenstore.user", "Usr"])
def test_a_ref_given_by_its_class_name_asks_if_the_full_ref_was_meant(
    store: Store, given: str
) -> None:
    """'unknown model ref 'User'; registered models: ...' left the user to spot the form."""
    with pytest.raises(ValidationError, match=r"did you mean 'tokenstore\.User'\?"):
        store.webhooks.create("h", given, "http://127.0.0.1:9/")


@pytest.mark.sqlite_only
def test_a_ref_like_no_registered_model_is_not_given_a_guess(store: Store) -> None:
    with pytest.raises(ValidationError, match="unknown model ref 'Invoice'") as caught:
        store.webhooks.create("h", "Invoice", "http://127.0.0.1:9/")
    assert "did you mean" not in str(caught.value)
    assert "(a ref is 'module.ClassName')" in str(caught.value)


@pytest.mark.sqlite_only
@pytest.mark.parametrize(
    ("entry", "meant"),
    [
        ("localhost:8000", "'localhost'"),
        ("127.0.0.1:8000", "'127.0.0.1'"),
        ("[::1]:8000", "'::1'"),
        ("http://localhost:8000/hooks", "'localhost'"),
        ("https://u:SEKRIT@hooks.internal/x", "'hooks.internal'"),
    ],
)
def test_an_allowlist_entry_with_a_port_or_a_scheme_names_the_host_meant(
    store: Store, entry: str, meant: str
) -> None:
    """'localhost:8000' was 'its label 'localhost:8000' is not 1-63 letters, digits, ...',
    and a URL 'not a valid CIDR network': an entry allows a host whatever the port."""
    with pytest.raises(ValidationError, match=f"did you mean {re.escape(meant)}") as caught:
        store.webhooks.allow(entry)
    assert "whatever the port" in str(caught.value) and "KRIT" not in str(caught.value)


@pytest.mark.sqlite_only
def test_a_ref_to_a_model_not_registered_names_the_app_option_that_would_register_it(
    store: Store,
) -> None:
    """The message said '--app MODULE', and the user had to work out MODULE from the ref."""
    with pytest.raises(
        ValidationError, match=r"registers its module's models with --app app\.models\)"
    ):
        store.webhooks.create("h", "app.models.Snapshot", "http://127.0.0.1:9/")
