"""The web app in real headless Chromium against a real node: what two or three people see."""

from __future__ import annotations

import re
from typing import Any

from playwright.sync_api import expect

from chatd.auth import make_token

from .pages import bubbles, connected, mine, open_chat, open_listed, say, shot, sign_in

PAYLOAD = '<img src=x onerror="window.__pwned=1">'


def test_alice_and_bob_exchange_messages_and_ticks_turn_read(node: Any, contexts: Any) -> None:
    alice = sign_in(contexts(), node, "alice")
    bob = sign_in(contexts(), node, "bob")
    open_chat(alice, "bob")
    say(alice, "hello bob")
    tick = mine(alice, "hello bob")
    # bob's device has it (he has the app open, on his chat list): delivered
    expect(tick).to_have_attribute("data-status", "delivered")
    listed = bob.get_by_test_id("chat-list").locator("a.chat", has_text="alice")
    expect(listed.get_by_test_id("unread")).to_have_text("1")
    shot(bob, "web-chat-list")
    listed.click()
    expect(bubbles(bob)).to_have_text(["hello bob"])
    expect(tick).to_have_attribute("data-status", "read")  # bob looked at it
    expect(tick.locator(".tick")).to_have_text("✓✓")
    expect(listed.get_by_test_id("unread")).to_have_count(0)
    say(bob, "hi alice")
    expect(bubbles(alice)).to_have_text(["hello bob", "hi alice"])
    expect(mine(bob, "hi alice")).to_have_attribute("data-status", "read")
    shot(alice, "web-conversation")
    assert alice.errors == [] and bob.errors == []


def test_a_click_on_a_chat_is_not_lost_to_a_message_arriving_during_it(
        node: Any, contexts: Any) -> None:
    """The app draws itself again for every event. A message arriving between the press and
    the release of a click on a chat in the list: the drawing replaced the pressed link, the
    release fell on its copy, and the click was lost (the chat did not open; seen once in a
    full-suite run). What arrives during a press is now drawn after it. The press here lasts
    over a second on purpose: a one-second limit on that wait lost the click in CI, where the
    round trip below took long enough on a busy machine."""
    alice = sign_in(contexts(), node, "alice")
    bob = sign_in(contexts(), node, "bob")
    open_chat(alice, "bob")
    say(alice, "one")
    link = bob.get_by_test_id("chat-list").locator("a.chat", has_text="alice")
    expect(link.get_by_test_id("unread")).to_have_text("1")
    box = link.bounding_box()
    bob.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    bob.mouse.down()
    say(alice, "two")
    expect(mine(alice, "two")).to_have_attribute("data-status", "delivered")  # bob's app has it
    bob.wait_for_timeout(1_200)  # (drawings come within 40 ms of an event)
    bob.mouse.up()
    expect(bob.get_by_test_id("conv-title")).to_have_text("alice")
    expect(bubbles(bob)).to_have_text(["one", "two"])


def test_bob_offline_then_back_gets_everything_in_order(node: Any, contexts: Any) -> None:
    bob_ctx = contexts()
    bob = sign_in(bob_ctx, node, "bob")
    bob.close()  # gone: his tab is closed
    alice = sign_in(contexts(), node, "alice")
    open_chat(alice, "bob")
    sent = [f"while you were away {i}" for i in range(1, 6)]
    for text in sent:
        say(alice, text)
    for text in sent:
        expect(mine(alice, text)).to_have_attribute("data-status", "sent")
    bob = sign_in(bob_ctx, node, "bob")  # the same browser, a new tab
    expect(bob.get_by_test_id("chat-list").get_by_test_id("unread")).to_have_text("5")
    open_listed(bob, "alice")
    expect(bubbles(bob)).to_have_text(sent)
    expect(mine(alice, sent[-1])).to_have_attribute("data-status", "read")


def test_a_group_of_three(node: Any, contexts: Any) -> None:
    alice = sign_in(contexts(), node, "alice")
    bob = sign_in(contexts(), node, "bob")
    carol = sign_in(contexts(), node, "carol")
    alice.get_by_role("button", name="New group").click()
    alice.locator("#new-group-name").fill("Trio")
    alice.locator("#new-group-members").fill("bob, carol")
    alice.get_by_role("button", name="Create").click()
    expect(alice.get_by_test_id("conv-title")).to_have_text("Trio")
    say(alice, "dinner at 8?")
    for page in (bob, carol):
        open_listed(page, "Trio")
        expect(bubbles(page)).to_have_text(["dinner at 8?"])
    say(carol, "yes")
    expect(bubbles(alice)).to_have_text(["dinner at 8?", "yes"])
    expect(bubbles(bob)).to_have_text(["dinner at 8?", "yes"])
    # both read it: "read by" says so, and the tick is read
    expect(mine(alice, "dinner at 8?")).to_have_attribute("data-status", "read")
    mine(alice, "dinner at 8?").click()
    expect(alice.get_by_test_id("read-by")).to_contain_text("Read by: bob, carol")
    # rename, add, remove: everyone sees it
    alice.get_by_role("button", name="Info").click()
    expect(alice.get_by_test_id("members")).to_contain_text("alice (admin)")
    alice.get_by_label("group name").fill("Dinner")
    alice.get_by_role("button", name="Rename").click()
    expect(bob.get_by_test_id("conv-title")).to_have_text("Dinner")
    alice.get_by_label("add members").fill("dave")
    alice.get_by_role("button", name="Add").click()
    expect(alice.get_by_test_id("members")).to_contain_text("dave")
    alice.get_by_role("button", name="remove carol").click()
    expect(carol.get_by_test_id("presence")).to_have_text("you are no longer a member")
    expect(carol.get_by_test_id("messages")).to_contain_text("alice removed carol")
    shot(alice, "web-group")
    # bob leaves
    bob.get_by_role("button", name="Info").click()
    bob.get_by_role("button", name="Leave group").click()
    expect(alice.get_by_test_id("messages")).to_contain_text("bob left")
    expect(alice.get_by_test_id("members")).not_to_contain_text("bob")


def test_a_message_typed_while_the_server_is_down_goes_out_once_after_restart(
        node: Any, contexts: Any) -> None:
    alice = sign_in(contexts(), node, "alice")
    open_chat(alice, "bob")
    say(alice, "before")
    expect(mine(alice, "before")).to_have_attribute("data-status", "sent")
    node.stop()
    expect(alice.get_by_test_id("status")).to_contain_text("offline")
    say(alice, "typed while the server was down")
    pending = mine(alice, "typed while the server was down")
    expect(pending).to_have_attribute("data-status", "pending")
    shot(alice, "web-offline-outbox")
    node.start()
    connected(alice)
    expect(pending).to_have_attribute("data-status", "sent", timeout=30_000)
    bob = sign_in(contexts(), node, "bob")
    open_listed(bob, "alice")
    expect(bubbles(bob)).to_have_text(["before", "typed while the server was down"])
    bob.wait_for_timeout(500)  # (a second copy would have come with the first)
    expect(bubbles(bob)).to_have_count(2)


def test_last_seen_appears_when_bob_closes_his_tab(node: Any, contexts: Any) -> None:
    bob = sign_in(contexts(), node, "bob")
    alice = sign_in(contexts(), node, "alice")
    open_chat(alice, "bob")
    expect(alice.get_by_test_id("presence")).to_have_text("online")
    bob.close()
    expect(alice.get_by_test_id("presence")).to_contain_text("last seen today at")


def test_markup_in_bodies_titles_and_names_renders_as_text(node: Any, contexts: Any) -> None:
    alice = sign_in(contexts(), node, "alice")
    bob = sign_in(contexts(), node, "bob")
    alice.get_by_role("button", name="New group").click()
    alice.locator("#new-group-name").fill(PAYLOAD)
    alice.locator("#new-group-members").fill("bob")
    alice.get_by_role("button", name="Create").click()
    expect(alice.get_by_test_id("conv-title")).to_have_text(PAYLOAD)
    say(alice, PAYLOAD + "<script>window.__pwned=2</script>")
    open_listed(bob, PAYLOAD)
    expect(bubbles(bob)).to_have_text([PAYLOAD + "<script>window.__pwned=2</script>"])
    expect(bob.get_by_test_id("chat-list")).to_contain_text(PAYLOAD)
    # a user name: the app refuses it as one (the protocol allows only A-Z a-z 0-9 _ . -)
    bob.get_by_role("button", name="New chat").click()
    bob.locator("#new-chat-user").fill(PAYLOAD)
    bob.locator("#new-chat-user").press("Enter")
    expect(bob.get_by_test_id("alert")).to_contain_text(PAYLOAD)
    for page in (alice, bob):
        assert page.evaluate("window.__pwned") is None
        assert page.locator("main img").count() == 0
        assert page.locator("main script").count() == 0
    shot(bob, "web-markup-as-text")


def test_a_protocol_error_is_shown_to_the_user(node: Any, contexts: Any) -> None:
    page = contexts().new_page()
    expired = make_token(node.secret, "alice", ttl=-60)
    page.goto(f"{node.url}#token={expired}")
    alert = page.get_by_test_id("alert")
    expect(alert).to_contain_text("UNAUTHENTICATED")
    expect(alert).to_contain_text("expired")
    expect(page.get_by_role("button", name="Sign in again")).to_be_visible()
    shot(page, "web-protocol-error")
    page.get_by_role("button", name="Sign in again").click()
    expect(page.get_by_label("Token")).to_be_visible()  # and the bad token is forgotten


def test_a_server_that_breaks_the_protocol_is_reported_not_a_blank_page(
        node: Any, contexts: Any) -> None:
    """The node's WebSocket answered, through the real connection, with bytes that are not a
    frame (here put in by the browser's WebSocket routing, in place of the node's Welcome)."""
    page = contexts().new_page()

    def garble(ws: Any) -> None:
        server = ws.connect_to_server()
        server.on_message(lambda message: ws.send(b"\x81\xa1t\x63"))  # {"t": 99}: no such frame

    page.route_web_socket(re.compile(r".*/ws$"), garble)
    page.goto(node.link("alice"))
    alert = page.get_by_test_id("alert")
    expect(alert).to_contain_text("protocol error")
    expect(alert).to_contain_text("unknown frame type 99")
    expect(page.get_by_test_id("status")).to_have_text("signed out")


def test_the_token_leaves_the_address_bar_and_stays_in_the_tab(node: Any, contexts: Any) -> None:
    ctx = contexts()
    token = node.token("alice")
    page = ctx.new_page()
    page.goto(f"{node.url}#token={token}")
    connected(page)
    assert "token" not in page.url
    assert page.evaluate("sessionStorage.getItem('chatd.token')") == token
    assert page.evaluate("localStorage.getItem('chatd.token')") is None
    page.reload()
    expect(page.get_by_test_id("me")).to_have_text("alice")
    other = ctx.new_page()  # another tab: not signed in
    other.goto(node.url)
    expect(other.get_by_label("Token")).to_be_visible()


def test_readable_on_a_phone(node: Any, contexts: Any) -> None:
    alice = sign_in(contexts(width=390, height=800), node, "alice")
    open_chat(alice, "bob")
    say(alice, "from my phone, a long line that has to wrap inside the bubble on a narrow screen")
    expect(alice.locator("li.msg.mine")).to_have_attribute("data-status", "sent")
    assert alice.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    expect(alice.get_by_test_id("chat-list")).to_be_hidden()  # one pane at a time
    shot(alice, "web-phone")
    alice.get_by_label("back to chats").click()
    expect(alice.get_by_test_id("chat-list")).to_be_visible()
    alice.get_by_test_id("chat-list").locator("a.chat").first.click()
    expect(alice.get_by_test_id("chat-list")).to_be_hidden()
    alice.keyboard.press("Escape")  # keyboard: Escape goes back too
    expect(alice.get_by_test_id("chat-list")).to_be_visible()
