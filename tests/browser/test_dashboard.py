"""The dashboard in a real browser against the real server (issue 4).

Expected values come from the server's own API (predictions, layers, activations),
never from hard-coded outputs.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from playwright.sync_api import expect

from browser.conftest import NARROW, chromium_path, get_json, open_page, share_client

pytestmark = pytest.mark.browser

S = 224
PROJECTION = 'img[data-role="projection"]'
TILES = '[data-role="tile-grid"] [data-channel]'
PREDICTIONS = '[data-role="predictions"] li'


# ---- helpers ---------------------------------------------------------------------------
def hash_state(tab: Any) -> dict[str, str]:
    return dict(parse_qsl(tab.evaluate("location.hash").lstrip("#")))


def wait_projection(tab: Any, **want: Any) -> None:
    """Wait until the projection <img> shows the wanted layer/channel/mode/select at its natural size."""
    checks = " && ".join(f"img.dataset.proj{key.title()} === {str(value)!r}" for key, value in want.items()) or "true"
    tab.wait_for_function(
        f"""() => {{
            const img = document.querySelector('{PROJECTION}');
            return img && !img.hidden && img.complete && img.naturalWidth === {S} && img.naturalHeight === {S}
                && ({checks});
        }}"""
    )


def choose_layer(tab: Any, name: str) -> None:
    """Select a layer in the list, wherever it sits in the tree: filter for it, click it, clear the filter."""
    tab.fill('[data-role="layer-filter"]', name)
    tab.locator(f'[data-role="layer-list"] [data-layer="{name}"]').click()
    tab.fill('[data-role="layer-filter"]', "")


def projection_digest(tab: Any) -> str:
    """A digest of the projection's pixels as the browser decoded them."""
    return tab.evaluate(
        """() => {
            const img = document.querySelector('img[data-role="projection"]');
            const canvas = document.createElement('canvas');
            canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
            const ctx = canvas.getContext('2d');
            ctx.drawImage(img, 0, 0);
            const px = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
            let a = 1, b = 0;
            for (let i = 0; i < px.length; i++) { a = (a + px[i]) % 65521; b = (b + a) % 65521; }
            return `${b}:${a}`;
        }"""
    )


def tile_order(tab: Any) -> list[int]:
    return [int(c) for c in tab.eval_on_selector_all(TILES, "els => els.map(e => e.dataset.channel)")]


def pick_layer(layers: list[dict[str, Any]], max_channels: int = 200) -> dict[str, Any]:
    """A mid-network layer with a real spatial map and a modest channel count."""
    usable = [
        layer
        for layer in layers
        if layer["kind"] not in ("Identity",) and 8 <= layer["channels"] <= max_channels and layer["height"] >= 7
    ]
    return usable[len(usable) // 2]


@pytest.fixture(scope="module")
def model(server_url: str) -> dict[str, Any]:
    models = get_json(f"{server_url}/api/models")
    return next(m for m in models if m["default"])


@pytest.fixture(scope="module")
def layers(server_url: str, model: dict[str, Any]) -> list[dict[str, Any]]:
    rows = get_json(f"{server_url}/api/models/{model['name']}/layers")
    return [row for row in rows if "units" not in row]  # the layer tree lists the 4-D layers only


def expected_labels(server_url: str, model: str, image: str, page: Any = None) -> list[str]:
    """The top-5 labels from the API; asked through `page` for its uploads (they are the page's client's)."""
    path = f"/api/models/{model}/images/{image}/predictions?top=5"
    if page is not None:
        rows = page.evaluate("path => fetch(path).then(response => response.json())", path)
    else:
        rows = get_json(f"{server_url}{path}")
    return [row["label"] for row in rows]


# ---- tests -------------------------------------------------------------------------------
def test_explore_click_a_feature_map_and_walk_with_arrows(
    tab: Any, server_url: str, model: dict[str, Any], layers: list[dict[str, Any]], shoot: Any
) -> None:
    tab.goto(f"{server_url}/")
    samples = get_json(f"{server_url}/api/samples")
    sample = next((s for s in samples if s["id"] == "coffee"), samples[-1])["id"]

    # pick a sample: its five predictions, as the API gives them
    tab.locator(f'[data-sample="{sample}"]').click()
    expect(tab.locator(f'[data-sample="{sample}"]')).to_have_attribute("aria-pressed", "true")
    labels = expected_labels(server_url, model["name"], sample)
    expect(tab.locator(PREDICTIONS)).to_have_count(5)
    expect(tab.locator(f"{PREDICTIONS} .label")).to_have_text(labels)

    # choose a layer: one tile per channel
    layer = pick_layer(layers)
    choose_layer(tab, layer["name"])
    expect(tab.locator(f'[data-layer="{layer["name"]}"]')).to_have_attribute("aria-selected", "true")
    expect(tab.locator(f'[data-layer="{layer["name"]}"]')).to_be_visible()  # in the tree, its stages opened
    expect(tab.locator(TILES)).to_have_count(layer["channels"])
    assert hash_state(tab)["layer"] == layer["name"]

    # click a tile: its projection at the model's input size
    tab.locator('[data-role="tile-grid"] [data-channel="3"]').click()
    wait_projection(tab, layer=layer["name"], channel=3)
    expect(tab.locator('[data-role="tile-grid"] [data-channel="3"]')).to_have_attribute("aria-selected", "true")
    first_src = tab.get_attribute(PROJECTION, "src")
    first_pixels = projection_digest(tab)
    assert hash_state(tab)["channel"] == "3"

    # the marker sits on the receptive field of the unit the projection was seeded from
    query = f"layer={layer['name']}&channel=3&mode=deconvnet&select=max"
    with urllib.request.urlopen(f"{server_url}/api/models/{model['name']}/images/{sample}/projection?{query}") as reply:
        y, x = int(reply.headers["X-Seed-Y"]), int(reply.headers["X-Seed-X"])
    field = layer["receptive_field"]
    cx = float(tab.get_attribute('[data-role="marker"] circle', "cx"))
    cy = float(tab.get_attribute('[data-role="marker"] circle', "cy"))
    assert cx == pytest.approx(min(S, max(0, field["offset"] + x * field["stride"])), abs=0.01)
    assert cy == pytest.approx(min(S, max(0, field["offset"] + y * field["stride"])), abs=0.01)
    shoot("01-explore-projection")

    # right arrow: the next tile in the grid's order, a different projection, no reload
    tab.evaluate("window.__sameDocument = true")
    order = tile_order(tab)
    expected = order[order.index(3) + 1]
    tab.keyboard.press("ArrowRight")
    wait_projection(tab, layer=layer["name"], channel=expected)
    assert hash_state(tab)["channel"] == str(expected)
    assert tab.get_attribute(PROJECTION, "src") != first_src
    assert projection_digest(tab) != first_pixels
    assert tab.evaluate("window.__sameDocument") is True
    expect(tab.locator(f'[data-role="tile-grid"] [data-channel="{expected}"]')).to_have_attribute(
        "aria-selected", "true"
    )

    # sort by index: the grid's order becomes 0..C-1 and the arrow follows it
    tab.select_option('[data-role="maps-sort"]', "index")
    assert tile_order(tab) == list(range(layer["channels"]))
    tab.keyboard.press("ArrowRight")
    wait_projection(tab, channel=expected + 1)

    # mode and select switches re-project the same channel
    tab.locator('[data-role="mode-group"] label').filter(has=tab.locator('input[value="guided"]')).click()
    wait_projection(tab, channel=expected + 1, mode="guided", select="max")
    tab.keyboard.press("s")
    wait_projection(tab, channel=expected + 1, mode="guided", select="map")
    assert hash_state(tab)["mode"] == "guided"
    assert hash_state(tab)["select"] == "map"

    # hover: channel, max and sum
    tile = tab.locator(f'[data-role="tile-grid"] [data-channel="{expected + 1}"]')
    tile.hover()
    expect(tab.locator('[data-role="maps-hover"]')).to_contain_text(f"channel {expected + 1}")
    expect(tab.locator('[data-role="tooltip"]')).to_be_visible()
    shoot("02-explore-hover-guided-map", keep_mouse=True)

    # layers by keyboard: ↓ in the focused list selects the next visible layer
    names = tab.eval_on_selector_all(
        '[data-role="layer-list"] [data-layer]:not([hidden])', "els => els.map(e => e.dataset.layer)"
    )
    tab.locator('[data-role="layer-list"]').focus()
    tab.keyboard.press("ArrowDown")
    following = names[names.index(layer["name"]) + 1]
    expect(tab.locator(f'[data-layer="{following}"]')).to_have_attribute("aria-selected", "true")
    assert hash_state(tab)["layer"] == following
    channels = next(entry["channels"] for entry in layers if entry["name"] == following)
    expect(tab.locator(TILES)).to_have_count(channels)
    wait_projection(tab, layer=following)


# Slows chosen projection answers down in the page (the request still goes out at once,
# so cancelling it works as usual); window.__slow maps a channel to extra milliseconds.
SLOW_PROJECTIONS = """
    window.__slow = {};
    const realFetch = window.fetch.bind(window);
    window.fetch = async (input, init) => {
        const url = String(input && input.url ? input.url : input);
        const response = await realFetch(input, init);
        const match = url.includes('/projection?') && url.match(/[?&]channel=(\\d+)/);
        const delay = match ? window.__slow[match[1]] || 0 : 0;
        if (delay) await new Promise((resolve) => setTimeout(resolve, delay));
        return response;
    };
"""


def test_a_newer_click_wins_over_stale_requests(tab: Any, server_url: str, layers: list[dict[str, Any]]) -> None:
    layer = pick_layer(layers)
    tab.add_init_script(SLOW_PROJECTIONS)
    tab.goto(f"{server_url}/#image=chelsea&layer={layer['name']}&channel=0&mode=gradient")
    wait_projection(tab, layer=layer["name"], channel=0, mode="gradient")
    recon = tab.locator('[data-panel="reconstruction"]')
    expect(recon).not_to_have_attribute("aria-busy", "true")

    # channel 1 answers late, channel 2 early: the late answer must not replace the newer one
    tab.evaluate("window.__slow = {1: 2500, 2: 50}")
    tab.locator('[data-role="tile-grid"] [data-channel="1"]').click()
    expect(recon).to_have_attribute("aria-busy", "true")  # the loading indicator, after ~150 ms
    slow = int(recon.get_attribute("data-request-wanted") or 0)
    tab.locator('[data-role="tile-grid"] [data-channel="2"]').click()
    wait_projection(tab, layer=layer["name"], channel=2)
    # every request has settled (channel 1's late one too): the newest answer is still the one shown
    expect(recon).to_have_attribute("data-projections-pending", "0")
    wait_projection(tab, layer=layer["name"], channel=2)
    newest = int(recon.get_attribute("data-request-wanted") or 0)
    assert newest > slow
    assert recon.get_attribute("data-request-shown") == str(newest)
    assert hash_state(tab)["channel"] == "2"
    expect(recon).not_to_have_attribute("aria-busy", "true")

    # a burst of clicks: the last one wins, once all of them have settled
    tab.evaluate("window.__slow = {3: 600, 4: 400, 5: 200}")
    for channel in (3, 4, 5, 6):
        tab.locator(f'[data-role="tile-grid"] [data-channel="{channel}"]').click()
    wait_projection(tab, layer=layer["name"], channel=6)
    expect(recon).to_have_attribute("data-projections-pending", "0")
    wait_projection(tab, layer=layer["name"], channel=6)
    assert recon.get_attribute("data-request-shown") == recon.get_attribute("data-request-wanted")
    assert hash_state(tab)["channel"] == "6"


def test_a_keyboard_walk_prefetches_the_next_channels_in_one_batch(
    tab: Any, server_url: str, layers: list[dict[str, Any]]
) -> None:
    layer = pick_layer(layers)
    batches: list[Any] = []  # POST .../projections, each once finished
    singles: list[str] = []  # GET .../projection URLs asked for
    tab.on("requestfinished", lambda r: batches.append(r) if r.url.endswith("/projections") else None)
    tab.on("request", lambda r: singles.append(r.url) if "/projection?" in r.url else None)
    tab.goto(f"{server_url}/#image=coffee&layer={layer['name']}&channel=0&mode=guided")
    wait_projection(tab, layer=layer["name"], channel=0, mode="guided")
    expect(tab.locator(TILES)).to_have_count(layer["channels"])
    order = tile_order(tab)
    at = 0  # the first tile of the grid's order: the walk has channels ahead
    tab.locator(f'[data-role="tile-grid"] [data-channel="{order[at]}"]').click()
    wait_projection(tab, layer=layer["name"], channel=order[at], mode="guided")
    expect(tab.locator('[data-panel="reconstruction"]')).to_have_attribute("data-projections-pending", "0")
    assert not batches  # a click prefetches nothing
    with tab.expect_request_finished(lambda r: r.url.endswith("/projections")) as finished:
        tab.keyboard.press("ArrowRight")
        wait_projection(tab, layer=layer["name"], channel=order[at + 1], mode="guided")
    expect(tab.locator('[data-panel="reconstruction"]')).to_have_attribute("data-projections-pending", "0")
    assert len(batches) == 1, [r.url for r in batches]
    body = json.loads(finished.value.post_data or "{}")
    assert body["layer"] == layer["name"] and body["mode"] == "guided"
    assert [seed["channel"] for seed in body["seeds"]] == order[at + 2 : at + 6]  # the next four, one request
    # the next step is answered from the batch: no request of its own
    asked = len(singles)
    tab.keyboard.press("ArrowRight")
    wait_projection(tab, layer=layer["name"], channel=order[at + 2], mode="guided")
    assert not [url for url in singles[asked:] if f"channel={order[at + 2]}&" in url]


def test_upload_a_photo_and_a_non_image(
    tab: Any, server_url: str, model: dict[str, Any], tmp_path: Path, shoot: Any
) -> None:
    import skimage.data
    from PIL import Image

    photo = tmp_path / "my coffee.png"
    Image.fromarray(skimage.data.coffee()).save(photo)
    tab.goto(f"{server_url}/")
    expect(tab.locator(PREDICTIONS)).to_have_count(5)
    samples = {s["id"] for s in get_json(f"{server_url}/api/samples")}

    tab.set_input_files('[data-role="upload-input"]', str(photo))
    tab.wait_for_function(
        "ids => { const m = location.hash.match(/image=([^&]+)/); return m && !ids.includes(m[1]); }",
        arg=sorted(samples),
    )
    upload_id = hash_state(tab)["image"]
    expect(tab.locator(f"{PREDICTIONS} .label")).to_have_text(
        expected_labels(server_url, model["name"], upload_id, tab)
    )
    expect(tab.locator('[data-role="current-image"]')).to_have_text("my coffee.png")
    wait_projection(tab)
    tab.wait_for_function(
        "() => { const i = document.querySelector('[data-role=\"input-image\"]'); return i.complete && i.naturalWidth === 224; }"
    )
    shoot("03-uploaded-photo")

    junk = tmp_path / "notes.txt"
    junk.write_text("this is not an image\n")
    tab.set_input_files('[data-role="upload-input"]', str(junk))
    error = tab.locator('[data-role="input-error"]')
    expect(error).to_be_visible()
    expect(error).to_contain_text("notes.txt")
    expect(error).to_have_text(re.compile(r"image", re.IGNORECASE))
    assert hash_state(tab)["image"] == upload_id  # the view stays on the last good image
    shoot("04-upload-error")

    # drag-and-drop: a real File in a DataTransfer, dropped on the page
    tab.evaluate(
        """async (url) => {
            const blob = await (await fetch(url)).blob();
            const data = new DataTransfer();
            data.items.add(new File([blob], "dropped.png", { type: "image/png" }));
            for (const type of ["dragenter", "dragover", "drop"]) {
                document.body.dispatchEvent(new DragEvent(type, { dataTransfer: data, bubbles: true, cancelable: true }));
            }
        }""",
        f"{server_url}/api/samples/rocket/thumbnail.png",
    )
    tab.wait_for_function("id => !location.hash.includes('image=' + id + '&')", arg=upload_id)
    expect(tab.locator('[data-role="current-image"]')).to_have_text("dropped.png")
    expect(error).to_be_hidden()
    dropped = hash_state(tab)["image"]
    expect(tab.locator(f"{PREDICTIONS} .label")).to_have_text(expected_labels(server_url, model["name"], dropped, tab))


def test_state_in_the_hash_is_restored(tab: Any, server_url: str, layers: list[dict[str, Any]], shoot: Any) -> None:
    layer = pick_layer(layers, max_channels=120)
    channel = min(7, layer["channels"] - 1)
    tab.goto(f"{server_url}/#image=astronaut&layer={layer['name']}&channel={channel}&mode=guided&select=map")
    wait_projection(tab, layer=layer["name"], channel=channel, mode="guided", select="map")
    expect(tab.locator(f'[data-layer="{layer["name"]}"]')).to_have_attribute("aria-selected", "true")
    expect(tab.locator(f'[data-role="tile-grid"] [data-channel="{channel}"]')).to_have_attribute(
        "aria-selected", "true"
    )
    expect(tab.locator('[data-sample="astronaut"]')).to_have_attribute("aria-pressed", "true")
    expect(tab.locator('input[name="mode"][value="guided"]')).to_be_checked()
    expect(tab.locator('input[name="select"][value="map"]')).to_be_checked()
    state = hash_state(tab)
    assert (state["image"], state["layer"], state["channel"], state["mode"], state["select"]) == (
        "astronaut",
        layer["name"],
        str(channel),
        "guided",
        "map",
    )
    shoot("05-restored-from-hash")

    # a layer the model does not have: a plain-words note and a usable view
    tab.goto("about:blank")
    tab.goto(f"{server_url}/#image=astronaut&layer=no.such.layer")
    expect(tab.locator('[data-role="layers-error"]')).to_contain_text("no.such.layer")
    wait_projection(tab)

    # an image the server does not know (an old link to an upload): one plain note, and a sample instead
    tab.goto("about:blank")
    tab.goto(f"{server_url}/#image=upload-that-expired&layer={layer['name']}&channel={channel}")
    expect(tab.locator('[data-role="input-error"]')).to_contain_text("upload-that-expired")
    wait_projection(tab, layer=layer["name"], channel=channel)
    assert hash_state(tab)["image"] != "upload-that-expired"
    expect(tab.locator('[data-role="preds-error"]')).to_be_hidden()


def test_narrow_window_is_one_column(chromium: Any, server_url: str, screenshots: Path) -> None:
    with open_page(chromium, NARROW) as page:
        page.goto(f"{server_url}/#image=chelsea")
        wait_projection(page)
        boxes = {
            name: page.locator(f'[data-panel="{name}"]').bounding_box()
            for name in ("input", "predictions", "layers", "maps", "reconstruction")
        }
        lefts = {round(box["x"]) for box in boxes.values()}
        assert len(lefts) == 1, boxes
        assert all(box["width"] <= NARROW["width"] for box in boxes.values())
        assert page.evaluate("document.documentElement.scrollWidth") <= NARROW["width"]
        page.screenshot(path=str(screenshots / "06-narrow.png"), full_page=True)


def test_click_the_input_to_project_one_unit(tab: Any, server_url: str, layers: list[dict[str, Any]]) -> None:
    layer = next(
        entry for entry in layers if entry["height"] >= 14 and entry["kind"] != "Identity" and entry["height"] <= 28
    )
    tab.goto(f"{server_url}/#image=chelsea&layer={layer['name']}&channel=2")
    wait_projection(tab, layer=layer["name"], channel=2, unit="")
    stage = tab.locator('[data-role="input-stage"]')
    box = stage.bounding_box()
    field = layer["receptive_field"]
    want_y, want_x = layer["height"] // 3, layer["width"] // 2
    # the centre of unit (y, x)'s field, in page pixels
    px = box["x"] + (field["offset"] + want_x * field["stride"]) / S * box["width"]
    py = box["y"] + (field["offset"] + want_y * field["stride"]) / S * box["height"]
    tab.mouse.click(px, py)
    wait_projection(tab, layer=layer["name"], channel=2, unit=f"{want_y},{want_x}")
    assert hash_state(tab)["unit"] == f"{want_y},{want_x}"
    expect(tab.locator('[data-role="unit-chip"]')).to_be_visible()
    cx = float(tab.get_attribute('[data-role="marker"] circle', "cx"))
    assert cx == pytest.approx(min(S, field["offset"] + want_x * field["stride"]), abs=0.01)
    # the arrow keeps the unit and moves the channel; x goes back to the strongest activation
    tab.keyboard.press("ArrowRight")
    tab.wait_for_function("() => !location.hash.includes('channel=2&')")
    assert hash_state(tab)["unit"] == f"{want_y},{want_x}"
    tab.keyboard.press("x")
    wait_projection(tab, unit="")
    assert "unit" not in hash_state(tab)
    expect(tab.locator('[data-role="unit-chip"]')).to_be_hidden()


def test_webcam_capture_and_live(chromium: Any, server_url: str, model: dict[str, Any], screenshots: Path) -> None:
    """Chromium's fake camera stands in for a webcam: capture one frame, then run live for a few frames."""
    browser = chromium.browser_type.launch(
        executable_path=chromium_path(),
        args=[
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
        ],
    )
    try:
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        share_client(context)
        context.grant_permissions(["camera"], origin=server_url)
        page = context.new_page()
        page.goto(f"{server_url}/#image=chelsea")
        expect(page.locator(PREDICTIONS)).to_have_count(5)
        page.locator('[data-role="camera-open"]').click()
        expect(page.locator('[data-role="camera"]')).to_be_visible()
        page.wait_for_function("() => document.querySelector('[data-role=\"camera-video\"]').videoWidth > 0")

        page.locator('[data-role="camera-capture"]').click()
        page.wait_for_function("() => !location.hash.includes('image=chelsea')")
        first = hash_state(page)["image"]
        expect(page.locator(f"{PREDICTIONS} .label")).to_have_text(
            expected_labels(server_url, model["name"], first, page)
        )
        expect(page.locator('[data-role="current-image"]')).to_have_text("webcam frame 1")

        page.select_option('[data-role="camera-rate"]', "500")
        page.locator('[data-role="camera-live"]').click()
        page.wait_for_function(
            "() => /frame ([4-9]|\\d\\d)/.test(document.querySelector('[data-role=\"camera-stat\"]').textContent)",
            timeout=60_000,
        )
        page.locator('[data-role="camera-live"]').click()
        assert hash_state(page)["image"] != first
        expect(page.locator('[data-role="camera-live"]')).to_have_attribute("aria-pressed", "false")
        wait_projection(page)
        page.screenshot(path=str(screenshots / "07-webcam.png"))
    finally:
        browser.close()


def test_model_picker_switches_model(tab: Any, server_url: str) -> None:
    models = get_json(f"{server_url}/api/models")
    other = next(m for m in models if not m["default"])
    tab.goto(f"{server_url}/#image=chelsea")
    wait_projection(tab)
    expect(tab.locator('[data-role="model-picker"]')).to_be_visible()
    tab.select_option('[data-role="model-select"]', other["name"])
    other_layers = [row for row in get_json(f"{server_url}/api/models/{other['name']}/layers") if "units" not in row]
    expect(tab.locator('[data-role="layer-list"] [data-layer]')).to_have_count(len(other_layers))
    tab.wait_for_function("name => location.hash.includes('model=' + name + '&')", arg=other["name"])
    chosen = hash_state(tab)["layer"]
    assert chosen in {layer["name"] for layer in other_layers}
    wait_projection(tab, layer=chosen)
    channels = next(layer["channels"] for layer in other_layers if layer["name"] == chosen)
    expect(tab.locator(TILES)).to_have_count(channels)
    expect(tab.locator('[data-role="layers-error"]')).to_be_hidden()  # dropping the old layer is not an error
    if not other["pretrained"]:
        expect(tab.locator('[data-role="preds-note"]')).to_have_text("random weights")


def test_every_control_has_an_accessible_name(tab: Any, server_url: str) -> None:
    tab.goto(f"{server_url}/#image=chelsea")
    wait_projection(tab)
    unnamed = tab.evaluate(
        """() => {
            const name = (el) => {
                if (el.getAttribute('aria-label')) return el.getAttribute('aria-label');
                const by = el.getAttribute('aria-labelledby');
                if (by) return by.split(' ').map(id => document.getElementById(id)?.textContent || '').join(' ');
                if (el.labels && el.labels.length) return Array.from(el.labels).map(l => l.textContent).join(' ');
                return el.textContent || el.getAttribute('title') || el.getAttribute('alt') || '';
            };
            const controls = document.querySelectorAll(
                'button, input, select, textarea, [role=option], [role=tab], [role=listbox], [role=radiogroup], img');
            return Array.from(controls)
                .filter(el => el.getClientRects().length)
                // an <img> needs alt (alt="" marks a decorative one, e.g. inside a named button)
                .filter(el => (el.tagName === 'IMG' ? !el.hasAttribute('alt') : !name(el).trim()))
                .map(el => el.outerHTML.slice(0, 120));
        }"""
    )
    assert unnamed == []

    # the reserved Occlusion view opens as a tab (its panel is a later module) and comes back from the hash
    tab.get_by_role("tab", name="Occlusion").click()
    expect(tab.locator('[data-tab-panel="occlusion"]')).to_be_visible()
    expect(tab.locator('[data-tab-panel="explore"]')).to_be_hidden()
    assert hash_state(tab)["tab"] == "occlusion"
    tab.reload()
    expect(tab.locator('[data-tab-panel="occlusion"]')).to_be_visible()
    tab.get_by_role("tab", name="Explore").click()
    expect(tab.locator('[data-tab-panel="explore"]')).to_be_visible()


def test_auto_mode_resolves_per_layer(tab: Any, server_url: str, shoot: Any) -> None:
    """`auto` (the default) is guided backprop on EfficientNet-Lite0 (no max-pool anywhere) and on the
    ZF net's first conv (below its first pool), the deconvnet above a max-pool; the reason is one
    click away, and a deconvnet on a switchless layer says plainly that its picture ignores the image."""
    auto = tab.locator('[data-role="mode-group"] label').filter(has=tab.locator('input[value="auto"]'))
    hint = tab.locator('[data-role="mode-hint"]')
    tab.goto(f"{server_url}/#model=efficientnet_lite0&image=chelsea&layer=blocks.3&channel=2")
    wait_projection(tab, layer="blocks.3", channel=2, mode="guided", requested="auto")
    expect(tab.locator('[data-role="mode-group"] input[value="auto"]')).to_be_checked()
    expect(auto).to_have_text("auto · guided")
    expect(hint).to_be_hidden()
    reason = tab.locator('[data-role="mode-reason"]')
    expect(reason).to_be_hidden()
    tab.locator('[data-role="mode-why"]').click()
    expect(reason).to_contain_text("no max-pool")

    # deconvnet chosen by hand (a label click, as a person does): exactly the paper's, with a plain warning
    tab.locator('[data-role="mode-group"] label').filter(has=tab.locator('input[value="deconvnet"]')).click()
    wait_projection(tab, layer="blocks.3", channel=2, mode="deconvnet", requested="deconvnet")
    expect(hint).to_be_visible()
    expect(hint).to_contain_text("does not depend on the image")
    assert hash_state(tab)["mode"] == "deconvnet"
    shoot("auto-mode-deconvnet-warning")

    # a net with max-pools: auto resolves per layer
    tab.goto("about:blank")
    tab.goto(f"{server_url}/#model=zfnet&image=chelsea&layer=features.conv2&channel=1")
    wait_projection(tab, layer="features.conv2", channel=1, mode="deconvnet", requested="auto")
    expect(auto).to_have_text("auto · deconvnet")
    expect(hint).to_be_hidden()
    choose_layer(tab, "features.conv1")
    wait_projection(tab, layer="features.conv1", mode="guided", requested="auto")
    expect(auto).to_have_text("auto · guided")
