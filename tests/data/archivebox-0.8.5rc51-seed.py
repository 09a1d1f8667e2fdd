"""Make the records of tests/data/archivebox-0.8.5rc51.sql with ArchiveBox's own ORM.

Not part of the test suite: run once inside ArchiveBox 0.8.5rc51's Django, in a data
folder fresh from ``archivebox init`` (see tests/test_archivebox_real.py for the
versions and commands):

    ABX_FACTS=facts.json archivebox manage shell -c "exec(open('THIS FILE').read())"

It writes what the database cannot show (the cipher key, the plaintext auth tokens,
what the hooks' receiver got) to the JSON file named by ABX_FACTS.
"""

import json
import os
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from api.auth import get_or_create_api_token
from api.models import APIToken, OutboundWebhook
from core.models import Snapshot, Tag
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test.utils import override_settings
from django.utils import timezone
from signal_webhooks.settings import webhook_settings
from signal_webhooks.utils import random_cipher_key

CIPHER_KEY = random_cipher_key(32)
override_settings(SIGNAL_WEBHOOKS={**settings.SIGNAL_WEBHOOKS, "CIPHER_KEY": CIPHER_KEY}).enable()
assert webhook_settings.CIPHER_KEY == CIPHER_KEY

received = []


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        received.append(
            {"path": self.path, "headers": dict(self.headers.items()), "body": body.decode()}
        )
        answer = f"received {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
port = server.server_address[1]
threading.Thread(target=server.serve_forever, daemon=True).start()

User = get_user_model()
system = User.objects.get(username="system")
admin = User.objects.create_superuser("admin", "admin@example.com", "admin-pass-1")
alice = User.objects.create_user("alice", "alice@example.com", "alice-pass-1")
bob = User.objects.create_user("bob", "bob@example.com", "bob-pass-1", is_staff=True)
carol = User.objects.create_user("carol", "carol@example.com", "carol-pass-1", is_active=False)

now = timezone.now()
t_admin = APIToken.objects.create(created_by=admin)  # never expires
t_alice = APIToken.objects.create(  # made 40 days ago (explicit time, microseconds kept), expired
    created_by=alice, created_at=now - timedelta(days=40), expires=now - timedelta(days=10)
)
t_bob = APIToken.objects.create(created_by=bob, expires=now + timedelta(days=365))
t_carol = APIToken.objects.create(created_by=carol)  # her account is deactivated
t_system = get_or_create_api_token(system)  # what ArchiveBox's CLI does: expires in 30 days
t_typed = APIToken.objects.create(created_by=bob, token="letmein-ci")  # as typed into the admin

snapshot_early = Snapshot.objects.create(
    url="https://example.com/articles/first", timestamp=str(time.time()), title="First"
)

h_results = OutboundWebhook.objects.create(
    name="archive-results",
    signal="CREATE",
    ref="core.models.ArchiveResult",
    endpoint="https://hooks.example.com/archivebox/results",
    created_by=admin,
)
h_tokens = OutboundWebhook.objects.create(
    name="token-audit",
    signal="CREATE_OR_UPDATE",
    ref="api.models.APIToken",
    endpoint=f"http://127.0.0.1:{port}/tokens",
    auth_token="Bearer audit-7f3c9e1a2b",
    headers={"X-Archive-Source": "archivebox"},
    keep_last_response=True,
    created_by=admin,
)
h_tags = OutboundWebhook.objects.create(
    name="tag-cleanup",
    signal="DELETE",
    ref="core.models.Tag",
    endpoint="https://tags.example.net:8443/hooks/tags?src=abx",
    enabled=False,
    created_by=alice,
)
h_users = OutboundWebhook.objects.create(
    name="user-sync",
    signal="CREATE_UPDATE_OR_DELETE",
    ref="django.contrib.auth.models.User",
    endpoint="https://sync.example.org/users",
    headers={"X-Api-Version": "2", "X-Team": "ops"},
    created_by=bob,
)
h_snapshots = OutboundWebhook.objects.create(  # no created_by: ArchiveBox picks the system user
    name="snapshot-mirror",
    signal="CREATE_OR_M2M",
    ref="core.models.Snapshot",
    endpoint=f"http://mirror:p%40ss%20w0rd@127.0.0.1:{port}/snapshots",
)
h_dead = OutboundWebhook.objects.create(  # nothing listens there: its delivery fails
    name="dead-receiver",
    signal="CREATE",
    ref="api.models.APIToken",
    endpoint="http://127.0.0.1:9/gone",
    keep_last_response=True,
    created_by=bob,
)
h_both = OutboundWebhook.objects.create(  # credentials in the URL, an auth token and a header
    name="relay-both",
    signal="CREATE",
    ref="api.models.APIToken",
    endpoint=f"http://relay:hunter2@127.0.0.1:{port}/both",
    auth_token="Token never-sent",
    headers={"Authorization": "Bearer from-headers", "X-Relay": "1"},
    keep_last_response=True,
    created_by=admin,
)
h_header = OutboundWebhook.objects.create(  # an Authorization header beside an auth token
    name="header-auth",
    signal="CREATE_OR_UPDATE",
    ref="api.models.APIToken",
    endpoint=f"http://127.0.0.1:{port}/header",
    auth_token="Bearer not-this-one",
    headers={"Authorization": "Token from-headers"},
    created_by=alice,
)
original_tag_endpoint = h_tags.endpoint

# An edit after creation (allowed drift): the ABID keeps the old endpoint's hash.
h_tags.endpoint = "https://tags.example.net:9443/hooks/tags"
h_tags.save()

# Fire the local hooks for real, through django-signal-webhooks (httpx, in threads).
before = set(threading.enumerate())
t_admin2 = APIToken.objects.create(created_by=admin, expires=now + timedelta(days=30))
snapshot = Snapshot.objects.create(
    url="https://example.org/news/2024/story", timestamp=str(time.time()), title="Story"
)
tag = Tag.objects.create(name="News Items", created_by=alice)
snapshot.tags.add(tag)
for thread in set(threading.enumerate()) - before:
    if thread is not threading.current_thread() and not thread.daemon:
        thread.join(timeout=30)
server.shutdown()


facts = {
    "cipher_key": CIPHER_KEY,
    "receiver_port": port,
    "users": {u.username: u.pk for u in User.objects.order_by("pk")},
    "tokens": {
        label: {
            "token": t.token,
            "id": t.id.hex,
            "abid": t.abid,
            "created_by_id": t.created_by_id,
        }
        for label, t in [
            ("admin", t_admin),
            ("alice_expired", t_alice),
            ("bob", t_bob),
            ("carol_inactive", t_carol),
            ("system", t_system),
            ("bob_typed", t_typed),
            ("admin_second", t_admin2),
        ]
    },
    "hooks": {
        h.name: {"id": h.id.hex, "abid": h.abid, "auth_token": h.auth_token}
        for h in OutboundWebhook.objects.order_by("created_at")
    },
    "tag_cleanup_endpoint_at_creation": original_tag_endpoint,
    "snapshots": {s.url: {"id": s.id.hex, "abid": s.abid} for s in Snapshot.objects.all()},
    "tags": {t.slug: {"id": t.id.hex, "abid": t.abid} for t in Tag.objects.all()},
    "received": received,
}
with open(os.environ["ABX_FACTS"], "w") as out:
    json.dump(facts, out, indent=2)
