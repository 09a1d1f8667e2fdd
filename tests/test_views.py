"""The SQL views people read the file through show what they promise and no secret."""

from __future__ import annotations

from tokenstore import OutboundWebhook
from tokenstore._store import Store


def test_webhook_overview_shows_every_hook_field_but_the_private_ones(store: Store) -> None:
    hook = store.webhooks.create(
        "overview",
        "tokenstore.User",
        "http://127.0.0.1:9/hook",
        headers={"X-Api-Key": "header-credential-value"},
        auth_token="Bearer auth-credential-value",
    )
    store.webhooks.rotate_secret(hook)
    conn = store.db.connection()
    cursor = conn.execute("SELECT * FROM tokenstore_webhook_overview")
    columns = [c[0] for c in cursor.description]
    (row,) = cursor.fetchall()
    shown = dict(zip(columns, row, strict=True))

    private = set(OutboundWebhook.private_fields)
    bookkeeping = {"id", "created_by", "previous_secret_expires", "last_response"}
    expected = {f.column_name for f in OutboundWebhook._meta.sorted_fields} - {
        OutboundWebhook._meta.fields[name].column_name for name in private | bookkeeping
    }
    assert set(columns) == expected | {"header_names", "has_auth_token", "secret_rotating_until"}
    assert shown["header_names"] == '["X-Api-Key"]' and shown["has_auth_token"] == 1
    assert shown["secret_rotating_until"] is not None and shown["name"] == "overview"

    secrets = (hook.secret, hook.previous_secret, "header-credential-value", "auth-credential")
    text = repr(row)
    assert all(secret and secret not in text for secret in secrets)
