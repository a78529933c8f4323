"""A photo round trip in real Chromium: picked, compressed in the browser, uploaded through
an upload slot to the node, shown to the other side as its inline preview, full size on
click."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.sync_api import expect

from tests.media.images import photo

from .pages import open_chat, open_listed, shot, sign_in


def test_a_photo_goes_from_alice_to_bob(node: Any, contexts: Any, tmp_path: Path) -> None:
    picture = tmp_path / "view.jpg"
    picture.write_bytes(photo(3000, 2000))
    alice = sign_in(contexts(), node, "alice")
    bob = sign_in(contexts(), node, "bob")
    open_chat(alice, "bob")
    alice.get_by_label("attach a photo").set_input_files(str(picture))
    sent = alice.locator("li.msg.mine[data-status]").filter(has=alice.locator(".thumb"))
    expect(sent).to_have_attribute("data-status", "delivered", timeout=30_000)
    open_listed(bob, "alice")
    thumb = bob.get_by_test_id("messages").locator(".thumb img")
    expect(thumb).to_have_count(1)
    assert thumb.get_attribute("src").startswith("blob:")
    expect(thumb).to_have_js_property("complete", True)
    assert 0 < thumb.evaluate("img => img.naturalWidth") <= 320  # the preview
    bob.get_by_role("button", name="open the photo").click()
    full = bob.get_by_test_id("viewer").locator("img")
    expect(full).to_have_js_property("complete", True)
    # compressed in the browser (at most 2560 px), then re-encoded by the node
    width, height = full.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert 320 < height <= 2560, height
    assert width < height  # the photo's EXIF orientation (turn 90 degrees) was applied
    shot(bob, "web-photo")
    bob.keyboard.press("Escape")
    expect(bob.get_by_test_id("viewer")).to_have_count(0)
    expect(sent).to_have_attribute("data-status", "read")
    # a TEMPORARY chat: bob's only device (this browser, named in its download) has the
    # photo, so the node forgot it (had the download counted for another device, it would
    # keep it until the 30-day expiry)
    blobs = node.data_dir / "media" / "blob"
    for _ in range(100):
        if not [p for p in blobs.rglob("*") if p.is_file()]:
            break
        bob.wait_for_timeout(100)
    assert not [p for p in blobs.rglob("*") if p.is_file()]
