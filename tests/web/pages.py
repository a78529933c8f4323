"""What a person does in the web app, as Playwright steps (sync API)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from playwright.sync_api import expect

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def sign_in(ctx: Any, node: Any, user: str) -> Any:
    """A new tab opened on the sign-in link of `user`, once connected."""
    page = ctx.new_page()
    page.errors = []  # uncaught page errors and console errors, checked by tests that care
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.goto(node.link(user))
    expect(page.get_by_test_id("me")).to_have_text(user)
    connected(page)
    return page


def connected(page: Any) -> None:
    expect(page.get_by_test_id("status")).to_have_text("", timeout=20_000)


def open_chat(page: Any, user: str) -> None:
    page.get_by_role("button", name="New chat").click()
    page.locator("#new-chat-user").fill(user)
    page.locator("#new-chat-user").press("Enter")
    expect(page.get_by_test_id("conv-title")).to_have_text(user)


def open_listed(page: Any, title: str) -> None:
    page.get_by_test_id("chat-list").locator("a.chat", has_text=title).first.click()
    expect(page.get_by_test_id("conv-title")).to_have_text(title)


def say(page: Any, text: str) -> None:
    box = page.get_by_label("message", exact=True)
    box.fill(text)
    box.press("Enter")


def bubbles(page: Any) -> Any:
    return page.get_by_test_id("messages").locator("li.msg:not(.event) .body")


def mine(page: Any, text: str) -> Any:
    """My message with exactly this text."""
    body = page.locator(".body", has_text=re.compile(f"^{re.escape(text)}$"))
    return page.get_by_test_id("messages").locator("li.msg.mine", has=body)


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
