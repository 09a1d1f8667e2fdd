"""Make the 0.7 users of tests/data/archivebox-0.7.4-upgraded.sql with ArchiveBox 0.7.4's ORM.

Not part of the test suite: run once inside ArchiveBox 0.7.4's Django (Django 3.1), in a
data folder fresh from ``archivebox init``, after ``archivebox manage createsuperuser``
made ``admin`` (see tests/test_archivebox_upgraded.py for the commands):

    archivebox manage shell -c "exec(open('THIS FILE').read())"
"""

import time

from core.models import Snapshot, Tag
from django.contrib.auth import get_user_model
from django.utils import timezone

User = get_user_model()
# Two more superusers: with more than one, 0.8.5's migrations make their own "system".
User.objects.create_superuser("ops.lead", "ops@example.com", "ops-pass-1")
ex = User.objects.create_superuser("ex-admin", "ex@example.com", "ex-pass-1")
ex.is_active = False  # an inactive superuser
ex.save()
alice = User.objects.create_user("alice", "alice@example.com", "alice-pass-1")
alice.last_login = timezone.now()
alice.save()
User.objects.create_user("Alice", "alice2@example.com", "alice-pass-2")  # differs by case only
User.objects.create_user("jöhn.doe+ab@example.com", "", "john-pass-1")  # any script, _.@+-
User.objects.create_user("李雷", "", "li-pass-1")
User.objects.create_user("carol", "carol@example.com", "carol-pass-1", is_active=False)
User.objects.create_user("bob", "bob@example.com", "bob-pass-1", is_staff=True)
snapshot = Snapshot.objects.create(
    url="https://example.com/old/page", timestamp=str(time.time()), title="Old"
)
tag = Tag.objects.create(name="Old Tag")
snapshot.tags.add(tag)
