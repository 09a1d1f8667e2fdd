-- tokenstore schema, version 2 (PRAGMA user_version = 2).
--
-- The canonical DDL of tokenstore's own tables. tokenstore applies it to a new
-- file; a test checks that the peewee models in tokenstore/_models.py agree.
-- Times are ISO-8601 UTC text with milliseconds: 2024-10-24T12:00:00.123Z.
-- UUIDs are 32 hex digits. JSON columns hold compact JSON text.

-- Owners of tokens and hooks. The 'system' user is created with the store.
CREATE TABLE "tokenstore_user" (
  "id" INTEGER NOT NULL PRIMARY KEY,
  "username" TEXT NOT NULL,
  "is_superuser" INTEGER NOT NULL,
  "created_at" TEXT NOT NULL
);
CREATE UNIQUE INDEX "tokenstore_user_username" ON "tokenstore_user" ("username");

-- API tokens. The secret is never stored: token_digest is its SHA-256 (hex),
-- token_hint its last four characters, for display.
CREATE TABLE "tokenstore_api_token" (
  "id" TEXT NOT NULL PRIMARY KEY,
  "abid" VARCHAR(30) NOT NULL,
  "created_by_id" INTEGER NOT NULL,
  "created_at" TEXT NOT NULL,
  "modified_at" TEXT NOT NULL,
  "name" TEXT,
  "token_digest" VARCHAR(64) NOT NULL,
  "token_hint" VARCHAR(8) NOT NULL,
  "expires" TEXT,
  "revoked_at" TEXT,
  "last_used_at" TEXT,
  "scopes" TEXT NOT NULL,
  FOREIGN KEY ("created_by_id") REFERENCES "tokenstore_user" ("id") ON DELETE CASCADE
);
CREATE UNIQUE INDEX "tokenstore_api_token_abid" ON "tokenstore_api_token" ("abid");
CREATE INDEX "tokenstore_api_token_created_by_id" ON "tokenstore_api_token" ("created_by_id");
CREATE UNIQUE INDEX "tokenstore_api_token_token_digest" ON "tokenstore_api_token" ("token_digest");
-- Revocation is for good, whoever writes (a stale copy, the sqlite3 shell).
CREATE TRIGGER "tokenstore_api_token_revocation_is_final"
BEFORE UPDATE OF "revoked_at" ON "tokenstore_api_token"
WHEN OLD."revoked_at" IS NOT NULL AND NEW."revoked_at" IS NOT OLD."revoked_at"
BEGIN
  SELECT RAISE(ABORT, 'API token revocation is final: revoked_at cannot be changed');
END;

-- Outbound webhooks: the fields of django-signal-webhooks, plus a Standard
-- Webhooks signing secret (and the previous one, during a rotation) and
-- failure bookkeeping.
CREATE TABLE "tokenstore_outbound_webhook" (
  "id" TEXT NOT NULL PRIMARY KEY,
  "abid" VARCHAR(30) NOT NULL,
  "created_by_id" INTEGER NOT NULL,
  "created_at" TEXT NOT NULL,
  "modified_at" TEXT NOT NULL,
  "name" VARCHAR(255) NOT NULL,
  "signal" VARCHAR(64) NOT NULL,
  "ref" VARCHAR(1023) NOT NULL,
  "endpoint" VARCHAR(2047) NOT NULL,
  "headers" TEXT NOT NULL,
  "auth_token" TEXT NOT NULL,
  "enabled" INTEGER NOT NULL,
  "keep_last_response" INTEGER NOT NULL,
  "last_response" TEXT NOT NULL,
  "last_success" TEXT,
  "last_failure" TEXT,
  "secret" TEXT NOT NULL,
  "previous_secret" TEXT,
  "previous_secret_expires" TEXT,
  "failure_count" INTEGER NOT NULL,
  "failing_since" TEXT,
  "disabled_reason" TEXT NOT NULL,
  FOREIGN KEY ("created_by_id") REFERENCES "tokenstore_user" ("id") ON DELETE CASCADE
);
CREATE UNIQUE INDEX "tokenstore_outbound_webhook_abid" ON "tokenstore_outbound_webhook" ("abid");
CREATE INDEX "tokenstore_outbound_webhook_created_by_id" ON "tokenstore_outbound_webhook" ("created_by_id");
CREATE UNIQUE INDEX "tokenstore_outbound_webhook_name" ON "tokenstore_outbound_webhook" ("name");
CREATE UNIQUE INDEX "tokenstore_outbound_webhook_ref_endpoint" ON "tokenstore_outbound_webhook" ("ref", "endpoint");

-- One row per hook per event: the signed message and what became of it.
-- Its abid is the webhook-id header, the same on every retry.
-- status: pending (not tried yet), failed (will retry at next_attempt_at),
-- delivered, dead (out of attempts, or the hook was disabled or gone).
CREATE TABLE "tokenstore_webhook_delivery" (
  "id" TEXT NOT NULL PRIMARY KEY,
  "abid" VARCHAR(30) NOT NULL,
  "created_at" TEXT NOT NULL,
  "modified_at" TEXT NOT NULL,
  "created_by_id" INTEGER NOT NULL,
  "hook_id" TEXT NOT NULL,
  "event_id" INTEGER,
  "event_type" VARCHAR(255) NOT NULL,
  "payload" TEXT NOT NULL,
  "status" VARCHAR(16) NOT NULL CHECK ("status" IN ('pending', 'failed', 'delivered', 'dead')),
  "attempts" INTEGER NOT NULL,
  "next_attempt_at" TEXT,
  "last_attempt_at" TEXT,
  "last_status_code" INTEGER,
  "last_error" TEXT NOT NULL,
  "duration_ms" INTEGER,
  "delivered_at" TEXT,
  FOREIGN KEY ("created_by_id") REFERENCES "tokenstore_user" ("id") ON DELETE CASCADE,
  FOREIGN KEY ("hook_id") REFERENCES "tokenstore_outbound_webhook" ("id") ON DELETE CASCADE
);
CREATE UNIQUE INDEX "tokenstore_webhook_delivery_abid" ON "tokenstore_webhook_delivery" ("abid");
-- The log's order, newest first, for all hooks and for one (with a cursor).
CREATE INDEX "tokenstore_webhook_delivery_created_at_abid" ON "tokenstore_webhook_delivery" ("created_at", "abid");
CREATE INDEX "tokenstore_webhook_delivery_hook_id_created_at_abid" ON "tokenstore_webhook_delivery" ("hook_id", "created_at", "abid");
CREATE INDEX "tokenstore_webhook_delivery_due" ON "tokenstore_webhook_delivery" ("next_attempt_at")
  WHERE "status" IN ('pending', 'failed');

-- Captured row changes: a queue of events not yet fired, written by the
-- triggers below (and by the triggers tokenstore creates for each registered
-- application model) in the same transaction as the change. claimed_by names
-- the process that fires an event; claims counts how often it was claimed
-- (more than once only when its first claimant died). Fired events are
-- deleted, so the table holds only what is pending and needs no index.
CREATE TABLE "tokenstore_change_event" (
  "id" INTEGER PRIMARY KEY,
  "table_name" TEXT NOT NULL,
  "op" TEXT NOT NULL CHECK ("op" IN ('INSERT', 'UPDATE', 'DELETE')),
  "row_pk" TEXT,
  "old_row" TEXT,
  "new_row" TEXT,
  "created_at" TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
  "claimed_by" TEXT,
  "claimed_at" TEXT,
  "claims" INTEGER NOT NULL DEFAULT 0
);

-- Processes that listen for change signals (a store with blinker receivers
-- connected registers itself before its first write, and leaves on close).
-- The capture triggers record rows only while a listener is registered or an
-- enabled hook watches the table; otherwise a write costs their check alone.
-- Listeners whose process has died, or that have not claimed anything for the
-- store's listener_timeout (seen is when they last did), are removed by the
-- next dispatch in any process.
CREATE TABLE "tokenstore_listener" (
  "claimant" TEXT NOT NULL PRIMARY KEY,
  "since" TEXT NOT NULL,
  "seen" TEXT
);

-- Hosts and networks webhooks may reach although the address guard refuses
-- them by default (loopback, private ranges). Every process that opens the
-- file applies the same list, so they agree on what is blocked.
CREATE TABLE "tokenstore_webhook_allow" (
  "entry" TEXT NOT NULL PRIMARY KEY,
  "added_at" TEXT NOT NULL
);

-- What happened to each webhook message, for people reading the file.
CREATE VIEW "tokenstore_delivery_log" AS
SELECT d.abid AS webhook_id, h.name AS hook, h.endpoint, d.event_type, d.status,
       d.attempts, d.last_status_code, d.last_error, d.duration_ms,
       d.created_at, d.last_attempt_at, d.next_attempt_at, d.delivered_at
FROM tokenstore_webhook_delivery AS d
JOIN tokenstore_outbound_webhook AS h ON h.id = d.hook_id
ORDER BY d.created_at;

-- The hooks without their secrets, for people reading the file: the raw
-- tokenstore_outbound_webhook table holds the signing secrets, the auth token
-- and header values, which let anyone who reads them forge or impersonate.
-- header_names lists the headers' names only.
CREATE VIEW "tokenstore_webhook_overview" AS
SELECT abid, name, signal, ref, endpoint,
       (SELECT json_group_array(key) FROM json_each(headers)) AS header_names,
       auth_token != '' AS has_auth_token, enabled, disabled_reason, keep_last_response,
       created_at, modified_at, last_success, last_failure, failure_count, failing_since,
       CASE WHEN previous_secret IS NOT NULL THEN previous_secret_expires END
         AS secret_rotating_until
FROM tokenstore_outbound_webhook
ORDER BY created_at;

-- Change capture, as tokenstore/_sqlite.py capture_triggers() writes it; private
-- columns (token_digest, auth_token, secret, previous_secret, headers) are never
-- recorded, and an UPDATE of only bookkeeping columns records nothing.

CREATE TRIGGER "tokenstore_user_capture_insert" AFTER INSERT ON "tokenstore_user"
WHEN (EXISTS (SELECT 1 FROM tokenstore_listener) OR EXISTS (SELECT 1 FROM tokenstore_outbound_webhook WHERE ref = 'tokenstore.User' AND enabled))
BEGIN
  INSERT INTO tokenstore_change_event (table_name, op, row_pk, old_row, new_row)
  VALUES ('tokenstore_user', 'INSERT', NEW."id", NULL, json_object('id', NEW."id", 'username', NEW."username", 'is_superuser', NEW."is_superuser", 'created_at', NEW."created_at"));
END;

CREATE TRIGGER "tokenstore_user_capture_update" AFTER UPDATE OF "id", "username", "is_superuser", "created_at" ON "tokenstore_user"
WHEN (EXISTS (SELECT 1 FROM tokenstore_listener) OR EXISTS (SELECT 1 FROM tokenstore_outbound_webhook WHERE ref = 'tokenstore.User' AND enabled))
  AND (OLD."id" IS NOT NEW."id" OR OLD."username" IS NOT NEW."username" OR OLD."is_superuser" IS NOT NEW."is_superuser" OR OLD."created_at" IS NOT NEW."created_at")
BEGIN
  INSERT INTO tokenstore_change_event (table_name, op, row_pk, old_row, new_row)
  VALUES ('tokenstore_user', 'UPDATE', NEW."id", json_object('id', OLD."id", 'username', OLD."username", 'is_superuser', OLD."is_superuser", 'created_at', OLD."created_at"), json_object('id', NEW."id", 'username', NEW."username", 'is_superuser', NEW."is_superuser", 'created_at', NEW."created_at"));
END;

CREATE TRIGGER "tokenstore_user_capture_delete" AFTER DELETE ON "tokenstore_user"
WHEN (EXISTS (SELECT 1 FROM tokenstore_listener) OR EXISTS (SELECT 1 FROM tokenstore_outbound_webhook WHERE ref = 'tokenstore.User' AND enabled))
BEGIN
  INSERT INTO tokenstore_change_event (table_name, op, row_pk, old_row, new_row)
  VALUES ('tokenstore_user', 'DELETE', OLD."id", json_object('id', OLD."id", 'username', OLD."username", 'is_superuser', OLD."is_superuser", 'created_at', OLD."created_at"), NULL);
END;

CREATE TRIGGER "tokenstore_api_token_capture_insert" AFTER INSERT ON "tokenstore_api_token"
WHEN (EXISTS (SELECT 1 FROM tokenstore_listener) OR EXISTS (SELECT 1 FROM tokenstore_outbound_webhook WHERE ref = 'tokenstore.APIToken' AND enabled))
BEGIN
  INSERT INTO tokenstore_change_event (table_name, op, row_pk, old_row, new_row)
  VALUES ('tokenstore_api_token', 'INSERT', NEW."id", NULL, json_object('id', NEW."id", 'abid', NEW."abid", 'created_by_id', NEW."created_by_id", 'created_at', NEW."created_at", 'modified_at', NEW."modified_at", 'name', NEW."name", 'token_hint', NEW."token_hint", 'expires', NEW."expires", 'revoked_at', NEW."revoked_at", 'last_used_at', NEW."last_used_at", 'scopes', NEW."scopes"));
END;

CREATE TRIGGER "tokenstore_api_token_capture_update" AFTER UPDATE OF "id", "abid", "created_by_id", "created_at", "name", "token_digest", "token_hint", "expires", "revoked_at", "scopes" ON "tokenstore_api_token"
WHEN (EXISTS (SELECT 1 FROM tokenstore_listener) OR EXISTS (SELECT 1 FROM tokenstore_outbound_webhook WHERE ref = 'tokenstore.APIToken' AND enabled))
  AND (OLD."id" IS NOT NEW."id" OR OLD."abid" IS NOT NEW."abid" OR OLD."created_by_id" IS NOT NEW."created_by_id" OR OLD."created_at" IS NOT NEW."created_at" OR OLD."name" IS NOT NEW."name" OR OLD."token_digest" IS NOT NEW."token_digest" OR OLD."token_hint" IS NOT NEW."token_hint" OR OLD."expires" IS NOT NEW."expires" OR OLD."revoked_at" IS NOT NEW."revoked_at" OR OLD."scopes" IS NOT NEW."scopes")
BEGIN
  INSERT INTO tokenstore_change_event (table_name, op, row_pk, old_row, new_row)
  VALUES ('tokenstore_api_token', 'UPDATE', NEW."id", json_object('id', OLD."id", 'abid', OLD."abid", 'created_by_id', OLD."created_by_id", 'created_at', OLD."created_at", 'modified_at', OLD."modified_at", 'name', OLD."name", 'token_hint', OLD."token_hint", 'expires', OLD."expires", 'revoked_at', OLD."revoked_at", 'last_used_at', OLD."last_used_at", 'scopes', OLD."scopes"), json_object('id', NEW."id", 'abid', NEW."abid", 'created_by_id', NEW."created_by_id", 'created_at', NEW."created_at", 'modified_at', NEW."modified_at", 'name', NEW."name", 'token_hint', NEW."token_hint", 'expires', NEW."expires", 'revoked_at', NEW."revoked_at", 'last_used_at', NEW."last_used_at", 'scopes', NEW."scopes"));
END;

CREATE TRIGGER "tokenstore_api_token_capture_delete" AFTER DELETE ON "tokenstore_api_token"
WHEN (EXISTS (SELECT 1 FROM tokenstore_listener) OR EXISTS (SELECT 1 FROM tokenstore_outbound_webhook WHERE ref = 'tokenstore.APIToken' AND enabled))
BEGIN
  INSERT INTO tokenstore_change_event (table_name, op, row_pk, old_row, new_row)
  VALUES ('tokenstore_api_token', 'DELETE', OLD."id", json_object('id', OLD."id", 'abid', OLD."abid", 'created_by_id', OLD."created_by_id", 'created_at', OLD."created_at", 'modified_at', OLD."modified_at", 'name', OLD."name", 'token_hint', OLD."token_hint", 'expires', OLD."expires", 'revoked_at', OLD."revoked_at", 'last_used_at', OLD."last_used_at", 'scopes', OLD."scopes"), NULL);
END;

CREATE TRIGGER "tokenstore_outbound_webhook_capture_insert" AFTER INSERT ON "tokenstore_outbound_webhook"
WHEN (EXISTS (SELECT 1 FROM tokenstore_listener) OR EXISTS (SELECT 1 FROM tokenstore_outbound_webhook WHERE ref = 'tokenstore.OutboundWebhook' AND enabled))
BEGIN
  INSERT INTO tokenstore_change_event (table_name, op, row_pk, old_row, new_row)
  VALUES ('tokenstore_outbound_webhook', 'INSERT', NEW."id", NULL, json_object('id', NEW."id", 'abid', NEW."abid", 'created_by_id', NEW."created_by_id", 'created_at', NEW."created_at", 'modified_at', NEW."modified_at", 'name', NEW."name", 'signal', NEW."signal", 'ref', NEW."ref", 'endpoint', NEW."endpoint", 'enabled', NEW."enabled", 'keep_last_response', NEW."keep_last_response", 'last_response', NEW."last_response", 'last_success', NEW."last_success", 'last_failure', NEW."last_failure", 'previous_secret_expires', NEW."previous_secret_expires", 'failure_count', NEW."failure_count", 'failing_since', NEW."failing_since", 'disabled_reason', NEW."disabled_reason"));
END;

CREATE TRIGGER "tokenstore_outbound_webhook_capture_update" AFTER UPDATE OF "id", "abid", "created_by_id", "created_at", "name", "signal", "ref", "endpoint", "headers", "auth_token", "enabled", "keep_last_response", "secret", "previous_secret", "previous_secret_expires", "disabled_reason" ON "tokenstore_outbound_webhook"
WHEN (EXISTS (SELECT 1 FROM tokenstore_listener) OR EXISTS (SELECT 1 FROM tokenstore_outbound_webhook WHERE ref = 'tokenstore.OutboundWebhook' AND enabled))
  AND (OLD."id" IS NOT NEW."id" OR OLD."abid" IS NOT NEW."abid" OR OLD."created_by_id" IS NOT NEW."created_by_id" OR OLD."created_at" IS NOT NEW."created_at" OR OLD."name" IS NOT NEW."name" OR OLD."signal" IS NOT NEW."signal" OR OLD."ref" IS NOT NEW."ref" OR OLD."endpoint" IS NOT NEW."endpoint" OR OLD."headers" IS NOT NEW."headers" OR OLD."auth_token" IS NOT NEW."auth_token" OR OLD."enabled" IS NOT NEW."enabled" OR OLD."keep_last_response" IS NOT NEW."keep_last_response" OR OLD."secret" IS NOT NEW."secret" OR OLD."previous_secret" IS NOT NEW."previous_secret" OR OLD."previous_secret_expires" IS NOT NEW."previous_secret_expires" OR OLD."disabled_reason" IS NOT NEW."disabled_reason")
BEGIN
  INSERT INTO tokenstore_change_event (table_name, op, row_pk, old_row, new_row)
  VALUES ('tokenstore_outbound_webhook', 'UPDATE', NEW."id", json_object('id', OLD."id", 'abid', OLD."abid", 'created_by_id', OLD."created_by_id", 'created_at', OLD."created_at", 'modified_at', OLD."modified_at", 'name', OLD."name", 'signal', OLD."signal", 'ref', OLD."ref", 'endpoint', OLD."endpoint", 'enabled', OLD."enabled", 'keep_last_response', OLD."keep_last_response", 'last_response', OLD."last_response", 'last_success', OLD."last_success", 'last_failure', OLD."last_failure", 'previous_secret_expires', OLD."previous_secret_expires", 'failure_count', OLD."failure_count", 'failing_since', OLD."failing_since", 'disabled_reason', OLD."disabled_reason"), json_object('id', NEW."id", 'abid', NEW."abid", 'created_by_id', NEW."created_by_id", 'created_at', NEW."created_at", 'modified_at', NEW."modified_at", 'name', NEW."name", 'signal', NEW."signal", 'ref', NEW."ref", 'endpoint', NEW."endpoint", 'enabled', NEW."enabled", 'keep_last_response', NEW."keep_last_response", 'last_response', NEW."last_response", 'last_success', NEW."last_success", 'last_failure', NEW."last_failure", 'previous_secret_expires', NEW."previous_secret_expires", 'failure_count', NEW."failure_count", 'failing_since', NEW."failing_since", 'disabled_reason', NEW."disabled_reason"));
END;

CREATE TRIGGER "tokenstore_outbound_webhook_capture_delete" AFTER DELETE ON "tokenstore_outbound_webhook"
WHEN (EXISTS (SELECT 1 FROM tokenstore_listener) OR EXISTS (SELECT 1 FROM tokenstore_outbound_webhook WHERE ref = 'tokenstore.OutboundWebhook' AND enabled))
BEGIN
  INSERT INTO tokenstore_change_event (table_name, op, row_pk, old_row, new_row)
  VALUES ('tokenstore_outbound_webhook', 'DELETE', OLD."id", json_object('id', OLD."id", 'abid', OLD."abid", 'created_by_id', OLD."created_by_id", 'created_at', OLD."created_at", 'modified_at', OLD."modified_at", 'name', OLD."name", 'signal', OLD."signal", 'ref', OLD."ref", 'endpoint', OLD."endpoint", 'enabled', OLD."enabled", 'keep_last_response', OLD."keep_last_response", 'last_response', OLD."last_response", 'last_success', OLD."last_success", 'last_failure', OLD."last_failure", 'previous_secret_expires', OLD."previous_secret_expires", 'failure_count', OLD."failure_count", 'failing_since', OLD."failing_since", 'disabled_reason', OLD."disabled_reason"), NULL);
END;
