"""The admin page end to end: real headless Chromium against `tokenstore serve` on 127.0.0.1.

Outside CI (CI unset) the test skips when Chromium or Playwright is missing;
with CI=true it runs and fails if they are. Set TOKENSTORE_ADMIN_SCREENSHOT=1
to write the screenshot to docs/admin.png (the README shows it).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _admin_helpers import Received, receiving, serving

import tokenstore

CHROMIUM = "/usr/bin/chromium"
# Headless as root, and none of Chromium's own calls home (the network here is closed).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "admin.png"


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is not installed"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed"
    return None


if _missing() and not os.environ.get("CI"):
    pytest.skip(f"browser test outside CI: {_missing()}", allow_module_level=True)


@pytest.fixture
def receiver() -> Iterator[tuple[str, Received, list[int]]]:
    with receiving() as endpoint:
        yield endpoint


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    db = tmp_path / "admin.sqlite3"
    with serving(db, tmp_path / "serve.log") as url:
        yield url, db


def test_sign_in_tokens_webhooks_and_deliveries_in_chromium(
    served: tuple[str, Path], receiver: tuple[str, Received, list[int]], tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    url, db = served
    endpoint, received, answer = receiver
    with tokenstore.open(db) as store:
        root = store.users.create("root")
        _, admin_secret = store.tokens.create(root, name="admin", scopes=["admin"])
    dialogs: list[str] = []

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            posts: list[Any] = []
            page.on("request", lambda r: posts.append(r) if r.method == "POST" else None)

            # Signed out, every page leads to the sign-in form, and signing in back to it.
            page.goto(f"{url}/tokens")
            assert page.url == f"{url}/login?next=%2Ftokens"
            page.fill("#token", admin_secret)
            page.click("button[type=submit]")
            assert page.url == f"{url}/tokens" and page.text_content("h1") == "API tokens"
            (cookie,) = page.context.cookies()
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert cookie["expires"] > time.time()

            # A token: its secret shown once, with a copy button; then revoked.
            page.click("nav >> text=Tokens")
            page.select_option("select[name=user]", label="root")
            page.fill("input[name=name]", "<img src=x onerror=alert(1)>")
            page.fill("input[name=scopes]", "reports:read")
            page.click("text=Create token")
            secret = page.input_value("#secret")
            page.wait_for_selector("button.copy", state="visible", timeout=5000)  # the script ran
            with tokenstore.open(db) as store:
                token = store.tokens.authenticate(secret)
            assert token.scopes == ["reports:read"]
            row = page.locator(f"tr#{token.abid}")
            assert "<img src=x onerror=alert(1)>" in row.inner_text()
            page.reload()
            assert page.locator("#secret").count() == 0
            assert secret not in page.content()
            row.locator("text=Revoke…").click()
            page.click("#confirm")
            assert "revoked" in page.locator(f"tr#{token.abid}").inner_text()
            with tokenstore.open(db) as store:
                assert store.tokens.get(token.abid).revoked_at is not None

            # A hook to a loopback receiver: ping it, open the delivery, redeliver it.
            page.click("nav >> text=Webhooks")
            page.fill("input[name=name]", "receiver")
            page.select_option("select[name=ref]", "tokenstore.User")
            page.fill("input[name=endpoint]", endpoint)
            page.fill("input[name=auth_token]", "Bearer not-for-the-page")
            page.click("text=Add webhook")
            assert page.text_content("h1") == "Webhook receiver"
            signing_secret = page.input_value("#secret")
            assert signing_secret.startswith("whsec_")
            page.click("#ping")
            assert page.text_content("#status") == "delivered"
            assert len(received) == 1
            headers, body = received[0]
            tokenstore.verify_webhook(signing_secret, headers, body)
            assert headers["webhook-id"] in page.text_content("h1")
            assert "not-for-the-page" not in page.content()
            page.click("#redeliver")
            assert "Redelivered: delivered." in page.text_content(".notice")
            assert "after 2 attempt(s)" in page.inner_text("dl")
            assert len(received) == 2 and received[1][0]["webhook-id"] == headers["webhook-id"]

            # A receiver in trouble: the ping fails, and the hook's health says so.
            answer[0] = 500
            page.click("text=receiver")
            page.click("#ping")
            assert page.text_content("#status") == "failed"
            assert page.text_content("#response-status") == "500"
            page.click("text=receiver")
            assert "1 failures in a row" in page.inner_text("dl")

            # Every form the page sent carried its origin and address (Referrer-Policy:
            # same-origin), which a browser without Sec-Fetch-Site is judged by.
            assert len(posts) == 7  # sign in, create, revoke, add, ping, redeliver, ping
            for post in posts:
                sent = post.all_headers()
                assert sent.get("origin") == url, (post.url, sent)
                assert sent.get("referer", "").startswith(f"{url}/"), (post.url, sent)

            page.click("nav >> text=Overview")
            assert page.locator("svg.chart rect.delivered").count() == 1
            assert page.locator("svg.chart rect.failed").count() == 1
            shot = tmp_path / "admin.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
            if os.environ.get("TOKENSTORE_ADMIN_SCREENSHOT"):
                SCREENSHOT.parent.mkdir(exist_ok=True)
                shutil.copyfile(shot, SCREENSHOT)
        finally:
            browser.close()
    assert dialogs == []  # nothing injected ran
