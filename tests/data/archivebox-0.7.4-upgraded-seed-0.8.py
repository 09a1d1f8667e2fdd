"""Make the 0.8 records of tests/data/archivebox-0.7.4-upgraded.sql with ArchiveBox 0.8.5rc51's ORM.

Not part of the test suite: run once inside ArchiveBox 0.8.5rc51's Django, in the data
folder ArchiveBox 0.7.4 made and 0.8.5rc51's ``archivebox init`` upgraded (see
tests/test_archivebox_upgraded.py for the commands):

    ABX_FACTS=facts.json archivebox manage shell -c "exec(open('THIS FILE').read())"

It writes what the database cannot show (the cipher key, the plaintext tokens, what the
hooks' receiver got) to the JSON file named by ABX_FACTS.
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
u = {user.username: user for user in User.objects.all()}  # made by 0.7.4, and system by the upgrade
dave = User.objects.create_user("dave", "dave@example.com", "dave-pass-1")  # made after the upgrade

now = timezone.now()
tokens = {
    "admin": APIToken.objects.create(created_by=u["admin"]),
    "alice_expired": APIToken.objects.create(
        created_by=u["alice"], created_at=now - timedelta(days=40), expires=now - timedelta(days=10)
    ),
    "Alice": APIToken.objects.create(created_by=u["Alice"], expires=now + timedelta(days=365)),
    "john": APIToken.objects.create(created_by=u["jöhn.doe+ab@example.com"]),
    "li": APIToken.objects.create(created_by=u["李雷"]),
    "carol_inactive": APIToken.objects.create(created_by=u["carol"]),
    "ex_admin_inactive": APIToken.objects.create(created_by=u["ex-admin"]),
    "system": get_or_create_api_token(u["system"]),
    "dave": APIToken.objects.create(created_by=dave),
    # ADMIN_USERNAME, which archivebox init makes a superuser without checking the name
    "jane": APIToken.objects.create(created_by=u["Jane Doe"]),
}

hooks = [
    OutboundWebhook.objects.create(
        name="token-audit",
        signal="CREATE_OR_UPDATE",
        ref="api.models.APIToken",
        endpoint=f"http://127.0.0.1:{port}/tokens",
        auth_token="Bearer audit-upgraded",
        headers={"X-Archive-Source": "archivebox"},
        keep_last_response=True,
        created_by=u["ops.lead"],
    ),
    OutboundWebhook.objects.create(
        name="user-sync",
        signal="CREATE_UPDATE_OR_DELETE",
        ref="django.contrib.auth.models.User",
        endpoint="https://sync.example.org/users",
        created_by=u["李雷"],
    ),
    OutboundWebhook.objects.create(  # no created_by: ArchiveBox picks its system user
        name="snapshot-mirror",
        signal="CREATE_OR_M2M",
        ref="core.models.Snapshot",
        endpoint=f"http://mirror:s3cr%40t@127.0.0.1:{port}/snapshots",
    ),
    OutboundWebhook.objects.create(
        name="tag-hook",
        signal="CREATE",
        ref="core.models.Tag",
        endpoint="https://tags.example.net/hooks",
        enabled=False,
        created_by=u["carol"],
    ),
]

before = set(threading.enumerate())
tokens["admin_second"] = APIToken.objects.create(
    created_by=u["admin"], expires=now + timedelta(days=30)
)
snapshot = Snapshot.objects.create(
    url="https://example.org/new/story", timestamp=str(time.time()), title="New"
)
tag = Tag.objects.create(name="New Tag", created_by=dave)
snapshot.tags.add(tag)
for thread in set(threading.enumerate()) - before:
    if thread is not threading.current_thread() and not thread.daemon:
        thread.join(timeout=30)
server.shutdown()

facts = {
    "cipher_key": CIPHER_KEY,
    "users": {user.username: user.pk for user in User.objects.order_by("pk")},
    "tokens": {
        label: {"token": t.token, "id": t.id.hex, "abid": t.abid, "created_by_id": t.created_by_id}
        for label, t in tokens.items()
    },
    "hooks": {
        h.name: {
            "id": h.id.hex,
            "abid": h.abid,
            "auth_token": h.auth_token,
            "created_by_id": h.created_by_id,
        }
        for h in OutboundWebhook.objects.order_by("created_at")
    },
    "snapshots": {s.url: {"id": s.id.hex, "abid": s.abid} for s in Snapshot.objects.all()},
    "tags": {t.slug: {"id": t.id.hex, "abid": t.abid} for t in Tag.objects.all()},
    "received": received,
}
with open(os.environ["ABX_FACTS"], "w") as out:
    json.dump(facts, out, indent=2, ensure_ascii=False)
