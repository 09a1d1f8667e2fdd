"""Baseline b of bench/webhooks.py: Django with django-signal-webhooks 0.3.1.

Runs with ``bench/.venv-django/bin/python`` (Django is not a dependency of
tokenstore); bench/webhooks.py starts it. Usage:
``_django_webhooks.py URL DB_PATH SAVES``; prints one JSON line with the best
saves/s of three rounds.

Django is configured in-process: an SQLite file with tokenstore's pragmas
(WAL, synchronous=normal, foreign keys, busy timeout), a one-model app
written to a temporary folder, and one hook for it with the library's
synchronous task handler, so each save returns after its webhook was sent,
as tokenstore's do.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

APP_MODELS = """
from django.db import models


class Note(models.Model):
    text = models.TextField(default="")
"""


def main() -> None:
    url, db_path, saves = sys.argv[1], sys.argv[2], int(sys.argv[3])
    app_dir = Path(tempfile.mkdtemp())
    (app_dir / "benchapp").mkdir()
    (app_dir / "benchapp" / "__init__.py").write_text("")
    (app_dir / "benchapp" / "models.py").write_text(APP_MODELS)
    sys.path.insert(0, str(app_dir))

    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        INSTALLED_APPS=["django.contrib.contenttypes", "signal_webhooks", "benchapp"],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": db_path,
                "OPTIONS": {
                    "init_command": (
                        "PRAGMA journal_mode=wal; PRAGMA synchronous=normal; "
                        "PRAGMA foreign_keys=1; PRAGMA busy_timeout=10000;"
                    ),
                    "transaction_mode": "IMMEDIATE",
                },
            }
        },
        SIGNAL_WEBHOOKS={
            "HOOKS": {"benchapp.models.Note": ...},
            "TASK_HANDLER": "signal_webhooks.handlers.sync_task_handler",
        },
    )
    django.setup()

    from benchapp.models import Note  # type: ignore[import-not-found]
    from django.core.management import call_command
    from signal_webhooks.models import Webhook
    from signal_webhooks.typing import SignalChoices

    call_command("migrate", run_syncdb=True, verbosity=0)
    hook = Webhook.objects.create(
        name="notes",
        signal=SignalChoices.CREATE_UPDATE_OR_DELETE,
        ref="benchapp.models.Note",
        endpoint=url,
    )
    for i in range(20):  # warm-up
        Note.objects.create(text=f"note {i}")
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for i in range(saves):
            Note.objects.create(text=f"note {i}")
        best = min(best, time.perf_counter() - start)
    hook.refresh_from_db()
    if hook.last_success is None or hook.last_failure is not None:
        sys.exit(f"webhooks were not all delivered: {hook.last_success=} {hook.last_failure=}")

    from importlib.metadata import version

    print(
        json.dumps(
            {
                "saves_per_second": saves / best,
                "django": version("django"),
                "signal_webhooks": version("django-signal-webhooks"),
            }
        )
    )


if __name__ == "__main__":
    main()
