"""The "Top 9" panel (paper Fig. 2) in a real browser against the real server and its bundled scan.

Expected values come from the server's scan API, never from hard-coded outputs.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

import pytest
from playwright.sync_api import expect

from browser.conftest import SCAN_ROOT, get_json

pytestmark = pytest.mark.browser

PROJECTIONS = '[data-role="top9-projections"] .top9-tile'
CROPS = '[data-role="top9-crops"] .top9-tile'


def hash_state(tab: Any) -> dict[str, str]:
    return dict(parse_qsl(tab.evaluate("location.hash").lstrip("#")))


def bundled_scan(server_url: str, model: str, timeout: float = 180.0) -> dict[str, Any]:
    """The server's start-up scan of the sample photos, once complete."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        scans = get_json(f"{server_url}/api/models/{quote(model)}/scans")
        done = [scan for scan in scans if scan["id"] == "samples" and scan["status"] == "complete"]
        if done:
            return done[0]
        time.sleep(0.5)
    raise AssertionError("the server did not finish scanning its sample photos")


def wait_tiles(tab: Any, count: int, mode: str | None = None, timeout: float = 120_000) -> None:
    """Wait until both lists hold `count` loaded tiles (of projections in `mode`, when given)."""
    tab.wait_for_function(
        """([count, mode]) => ['top9-projections', 'top9-crops'].every((role) => {
            const imgs = [...document.querySelectorAll(`[data-role="${role}"] img`)];
            return imgs.length === count && imgs.every((img) => img.complete && img.naturalWidth > 0
                && img.closest('.top9-tile').dataset.state === 'ready')
                && (!mode || document.querySelector('[data-panel="top9"]').dataset.mode === mode);
        })""",
        arg=[count, mode],
        timeout=timeout,
    )


def projection_pixels(tab: Any) -> list[str]:
    """A digest of each projection tile's pixels as the browser decoded them."""
    return tab.eval_on_selector_all(
        '[data-role="top9-projections"] img',
        """imgs => imgs.map((img) => {
            const c = document.createElement('canvas');
            c.width = img.naturalWidth; c.height = img.naturalHeight;
            const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
            const px = ctx.getImageData(0, 0, c.width, c.height).data;
            let a = 1, b = 0;
            for (let i = 0; i < px.length; i++) { a = (a + px[i]) % 65521; b = (b + a) % 65521; }
            return `${b}:${a}`;
        })""",
    )


@pytest.fixture(scope="module")
def model(server_url: str) -> str:
    return next(m["name"] for m in get_json(f"{server_url}/api/models") if m["default"])


def test_top9_shows_the_bundled_scan_and_opens_an_image(tab: Any, server_url: str, model: str, shoot: Any) -> None:
    scan = bundled_scan(server_url, model)
    layer = scan["layers"][len(scan["layers"]) // 2]
    channel = min(5, layer["channels"] - 1)
    query = f"layer={quote(layer['name'])}&channel={channel}"
    expected = get_json(f"{server_url}{scan['url']}/top?{query}&mode=auto")["entries"]
    assert len(expected) == 9

    finished: list[str] = []  # every request the page completed
    tab.on("requestfinished", lambda request: finished.append(request.url))
    tab.goto(f"{server_url}/#image=chelsea&layer={layer['name']}&channel={channel}")
    wait_tiles(tab, 9)
    # the projections are in the page's (auto-resolved) mode; tiles are at least 96 px
    shown_mode = tab.get_attribute('[data-panel="top9"]', "data-mode")
    assert shown_mode == get_json(f"{server_url}{scan['url']}/top?{query}&mode=auto")["mode"]
    modes = tab.eval_on_selector_all(PROJECTIONS, "els => els.map(e => e.dataset.mode)")
    assert modes == [shown_mode] * 9
    # the nine projections came in one request (the batch), none one by one
    batches = [url for url in finished if "/top/projections?" in url and f"mode={shown_mode}" in url]
    assert len(batches) == 1, batches
    assert not [url for url in finished if re.search(r"/top/\d+/projection\.png", url)]
    sides = tab.eval_on_selector_all(PROJECTIONS, "els => els.map(e => e.getBoundingClientRect().width)")
    assert min(sides) >= 96
    for selector in (PROJECTIONS, CROPS):
        shown = tab.eval_on_selector_all(selector, "els => els.map(e => [e.dataset.image, Number(e.dataset.value)])")
        assert shown == [[e["image"]["id"], pytest.approx(e["value"])] for e in expected]
    sizes = tab.eval_on_selector_all(f"{CROPS} img", "els => els.map(e => [e.naturalWidth, e.naturalHeight])")
    assert sizes == [[e["box"][3] - e["box"][1], e["box"][2] - e["box"][0]] for e in expected]
    expect(tab.locator('[data-role="top9-dataset"]')).to_have_value("the bundled sample photos")
    # projection and patch of each activation side by side: the patch starts where its projection ends
    pairs = tab.evaluate(
        """() => {
            const p = [...document.querySelectorAll('[data-role="top9-projections"] .top9-tile')];
            const c = [...document.querySelectorAll('[data-role="top9-crops"] .top9-tile')];
            return p.map((tile, i) => [tile.getBoundingClientRect(), c[i].getBoundingClientRect()])
                .map(([a, b]) => Math.abs(a.top - b.top) < 1 && b.left > a.left && b.left - a.right < 8);
        }"""
    )
    assert all(pairs), pairs
    # a patch past the image border keeps its true position: the outside part is drawn, the edge marked
    for rank, entry in enumerate(expected):
        top, left, bottom, right = entry["box"]
        outside = top < 0 or left < 0 or bottom > 224 or right > 224
        tile = tab.locator(CROPS).nth(rank)
        expect(tile).to_have_attribute("data-outside", "true" if outside else "false")
        expect(tile.locator(".top9-edge")).to_have_count(1 if outside else 0)

    # hover: the value (and where, and which image)
    first = tab.locator(PROJECTIONS).first
    first.hover()
    expect(tab.locator('[data-role="top9-hover"]')).to_contain_text(expected[0]["image"]["id"])
    assert f"({expected[0]['y']}, {expected[0]['x']})" in tab.locator('[data-role="top9-hover"]').inner_text()
    assert expected[0]["image"]["id"] in (first.get_attribute("title") or "")
    shoot("top9-panel", keep_mouse=True)

    # click: the pair enlarges (the full receptive field); its button opens the image in the main view
    rank = next(i for i, e in enumerate(expected) if e["image"]["id"] != "chelsea")
    tab.locator(CROPS).nth(rank).click()
    zoom = tab.locator('[data-role="top9-zoom"]')
    expect(zoom).to_be_visible()
    expect(tab.locator('[data-role="top9-zoom-caption"]')).to_contain_text(expected[rank]["image"]["id"])
    assert (tab.locator('[data-role="top9-zoom-patch"]').bounding_box() or {}).get("width", 0) >= 200
    shoot("top9-zoom")
    tab.locator('[data-role="top9-open"]').click()
    expect(zoom).to_be_hidden()
    expect(tab.locator(f'[data-sample="{expected[rank]["image"]["id"]}"]')).to_have_attribute("aria-pressed", "true")
    state = hash_state(tab)
    assert (state["image"], state["layer"], state["channel"]) == (
        expected[rank]["image"]["id"],
        layer["name"],
        str(channel),
    )
    tab.wait_for_function(
        """() => { const img = document.querySelector('img[data-role="projection"]');
                   return img && !img.hidden && img.complete && img.naturalWidth > 0; }"""
    )
    wait_tiles(tab, 9)  # same channel: the panel stays


def test_a_layer_outside_the_bundled_scan_is_scanned_on_demand(tab: Any, server_url: str, model: str) -> None:
    bundled_scan(server_url, model)
    scans_url = f"{server_url}/api/models/{quote(model)}/scans"
    scanned = {layer["name"] for scan in get_json(scans_url) for layer in scan["layers"]}
    layers = get_json(f"{server_url}/api/models/{quote(model)}/layers")
    name = next(
        info["name"]
        for info in layers
        if info["name"] not in scanned and info["height"] >= 7 and info["kind"] not in ("Identity", "Dropout")
    )
    tab.goto(f"{server_url}/#image=coffee&layer={name}&channel=0")
    wait_tiles(tab, 9)
    after = get_json(scans_url)
    assert any(scan["status"] == "complete" and name in [info["name"] for info in scan["layers"]] for scan in after)


def test_top9_follows_the_mode_and_shows_placeholders(tab: Any, server_url: str, model: str) -> None:
    """Switching the mode re-projects the tiles; while their pictures are on the way, each tile is a
    visible placeholder (the pictures are held back here until the placeholders have been seen)."""
    scan = bundled_scan(server_url, model)
    layer = scan["layers"][len(scan["layers"]) // 2]
    tab.goto(f"{server_url}/#image=chelsea&layer={layer['name']}&channel=1&mode=guided")
    wait_tiles(tab, 9, mode="guided")
    guided = projection_pixels(tab)

    held: list[Any] = []
    tab.route("**/top/projections?*", lambda route: held.append(route))  # the nine come in one request
    tab.locator('[data-role="mode-group"] label').filter(has=tab.locator('input[value="gradient"]')).click()
    loading = tab.locator('[data-role="top9-projections"] .top9-tile[data-state="loading"]')
    expect(loading).to_have_count(9)
    expect(loading.first).to_be_visible()
    expect(tab.locator('[data-role="top9-progress"]')).to_contain_text("loading")
    deadline = time.monotonic() + 60
    while not held and time.monotonic() < deadline:  # the pictures were asked for, and held
        tab.wait_for_timeout(50)
    assert len(held) == 1 and "mode=gradient" in held[0].request.url
    for route in held:
        route.continue_()
    tab.unroute("**/top/projections?*")
    wait_tiles(tab, 9, mode="gradient")
    modes = tab.eval_on_selector_all(PROJECTIONS, "els => els.map(e => e.dataset.mode)")
    assert modes == ["gradient"] * 9
    assert projection_pixels(tab) != guided
    expect(tab.locator('[data-role="top9-montage"]')).to_have_attribute("href", re.compile("mode=gradient"))


def test_dataset_picker_scans_a_folder_from_the_page(tab: Any, server_url: str, model: str, shoot: Any) -> None:
    """A folder of real photos under the server's scan root, scanned from the page with a progress bar;
    the picker then switches between its top 9 and the sample photos'."""
    import skimage.data
    from PIL import Image

    bundled_scan(server_url, model)
    name = f"mine-{uuid.uuid4().hex[:8]}"
    folder: Path = SCAN_ROOT / name
    folder.mkdir(parents=True)
    photos = ("astronaut", "coffee", "chelsea", "rocket", "camera")
    for photo in photos:
        Image.fromarray(getattr(skimage.data, photo)()).convert("RGB").save(folder / f"{photo}.jpg")
    layer = "blocks.3"
    tab.goto(f"{server_url}/#image=coffee&layer={layer}&channel=2")
    wait_tiles(tab, 9)
    tab.select_option('[data-role="top9-dataset"]', label="Scan a folder…")
    target = f"{SCAN_ROOT.name}/{name}"
    expect(tab.locator(f'[data-role="top9-folder"] option[value="{target}"]')).to_have_count(1)
    tab.select_option('[data-role="top9-folder"]', target)
    tab.locator('[data-role="top9-scan-start"]').click()
    expect(tab.locator('[data-role="top9-scan-progress"]')).to_be_visible()
    expect(tab.locator('[data-panel="top9"]')).to_have_attribute("data-scan", "done", timeout=180_000)
    wait_tiles(tab, len(photos))  # five photos: the top 9 holds five
    expect(tab.locator('[data-role="top9-dataset"]')).to_have_value(target)
    shown = {i.split("/")[-1] for i in tab.eval_on_selector_all(PROJECTIONS, "els => els.map(e => e.dataset.image)")}
    assert shown == {f"{photo}.jpg" for photo in photos}
    shoot("top9-folder-scan")

    tab.select_option('[data-role="top9-dataset"]', "the bundled sample photos")
    wait_tiles(tab, 9)
    samples = {s["id"] for s in get_json(f"{server_url}/api/samples")}
    assert set(tab.eval_on_selector_all(PROJECTIONS, "els => els.map(e => e.dataset.image)")) <= samples


def test_the_montage_link_follows_its_job_then_opens_the_png(tab: Any, server_url: str, model: str) -> None:
    scan = bundled_scan(server_url, model)
    layer = scan["layers"][0]
    tab.goto(f"{server_url}/#image=chelsea&layer={layer['name']}&channel=0")
    wait_tiles(tab, 9)
    link = tab.locator('[data-role="top9-montage"]')
    expect(link).to_be_visible()
    with tab.context.expect_page() as opened:
        link.click()
    expect(link).to_have_attribute("data-state", "ready", timeout=120_000)  # the montage job finished
    montage = opened.value
    montage.wait_for_url(re.compile(r".*/montage\.png\?.*"), timeout=60_000)  # about:blank until the job is done
    montage.wait_for_load_state()
    # the tab shows the rendered PNG (the server answers it now, no longer a 202 job)
    size = montage.evaluate(
        "() => { const img = document.querySelector('img'); return img && [img.naturalWidth, img.naturalHeight]; }"
    )
    assert size is not None and size[0] > 0 and size[1] > 0
