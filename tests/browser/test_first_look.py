"""What a new user sees (issue 16): the Explore view at a phone's and a desktop's width, scale and
colour of the maps, zoom, and the first-run strip. Expected values come from the server's API."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from browser.conftest import get_json

pytestmark = pytest.mark.browser

PROJECTION = 'img[data-role="projection"]'
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1440, "height": 900}

# Elements of the Explore view whose text is cut off: content wider than the box (scroll
# containers that are meant to scroll are left out), measured in the page.
OVERFLOWING = """() => {
    const scrolls = (el) => ['auto', 'scroll'].includes(getComputedStyle(el).overflowX);
    const out = [];
    for (const el of document.querySelectorAll('[data-tab-panel="explore"] *, .topbar *')) {
        if (!el.getClientRects().length || scrolls(el)) continue;
        if (getComputedStyle(el).visibility === 'hidden') continue;
        const text = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
        if (!text) continue;
        if (el.scrollWidth > el.clientWidth + 1) out.push(`${el.tagName.toLowerCase()}.${el.className}: ${el.textContent.trim().slice(0, 40)}`);
    }
    return out;
}"""


def wait_projection(page: Any) -> None:
    page.wait_for_function(
        """() => { const img = document.querySelector('img[data-role="projection"]');
                   return img && !img.hidden && img.complete && img.naturalWidth > 0; }"""
    )


def wait_tiles(page: Any) -> None:
    page.wait_for_function("() => document.querySelectorAll('[data-role=\"tile-grid\"] .tile').length > 0")


@pytest.fixture
def phone(chromium: Any, server_url: str) -> Any:
    context = chromium.new_context(viewport=PHONE, device_scale_factor=1, has_touch=True, is_mobile=True)
    context.set_default_timeout(60_000)
    try:
        yield context.new_page()
    finally:
        context.close()


def test_phone_opens_at_the_top_and_a_tap_shows_the_reconstruction(
    phone: Any, server_url: str, screenshots: Any
) -> None:
    phone.goto(f"{server_url}/#image=chelsea")
    wait_projection(phone)
    wait_tiles(phone)
    assert phone.evaluate("scrollY") == 0
    phone.screenshot(path=str(screenshots / "phone-first-screen.png"))

    # a tap on a map far below: the reconstruction (of that channel) comes into the viewport
    tile = phone.locator('[data-role="tile-grid"] .tile').nth(3)
    tile.scroll_into_view_if_needed()
    channel = tile.get_attribute("data-channel")
    tile.tap()
    phone.wait_for_function(
        "c => document.querySelector('img[data-role=\"projection\"]').dataset.projChannel === c", arg=channel
    )
    box = phone.locator('[data-role="projection-stage"]').bounding_box()
    assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= PHONE["height"]

    # a tooltip does not stay pinned: scrolling dismisses it
    tooltip = phone.locator('[data-role="tooltip"]')
    other = phone.locator('[data-role="tile-grid"] .tile').nth(1)
    other.scroll_into_view_if_needed()
    # the scroll's own events come a frame later (and dismiss tooltips): let them pass first
    phone.evaluate("() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))")
    other.hover()
    expect(tooltip).to_be_visible()
    phone.mouse.wheel(0, 300)
    expect(tooltip).to_be_hidden()


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["390px", "1440px"])
def test_no_text_is_cut_off(chromium: Any, server_url: str, viewport: dict[str, int]) -> None:
    context = chromium.new_context(viewport=viewport, device_scale_factor=1)
    context.set_default_timeout(60_000)
    try:
        page = context.new_page()
        page.goto(f"{server_url}/#image=chelsea")
        wait_projection(page)
        wait_tiles(page)
        page.wait_for_function("() => document.querySelectorAll('[data-role=\"predictions\"] li').length === 5")
        overflowing = page.evaluate(OVERFLOWING)
        assert overflowing == [], overflowing
    finally:
        context.close()


def test_negative_values_get_a_two_sided_colour_bar(tab: Any, server_url: str) -> None:
    model = next(m["name"] for m in get_json(f"{server_url}/api/models") if m["default"])
    layers = get_json(f"{server_url}/api/models/{model}/layers")
    signed, positive = None, None
    for layer in layers:
        if layer["height"] < 7 or layer["kind"] == "Identity":
            continue
        stats = get_json(f"{server_url}/api/models/{model}/images/chelsea/activations?layer={layer['name']}")
        if min(stats["min"]) < 0 and signed is None:
            signed = (layer, stats)
        if min(stats["min"]) >= 0 and positive is None:
            positive = (layer, stats)
        if signed and positive:
            break
    assert signed and positive
    legend = tab.locator('[data-role="maps-legend"]')
    tab.goto(f"{server_url}/#image=chelsea&layer={signed[0]['name']}")
    wait_tiles(tab)
    expect(legend).to_have_attribute("data-signed", "true")
    bound = max(max(signed[1]["max"]), -min(signed[1]["min"]))
    low, high = tab.inner_text('[data-role="maps-legend-min"]'), tab.inner_text('[data-role="maps-legend-max"]')
    assert low.startswith("−") and high.startswith("+")
    assert float(high[1:].rstrip("k")) == pytest.approx(bound if bound < 1e4 else bound / 1e3, rel=0.01)

    tab.goto("about:blank")
    tab.goto(f"{server_url}/#image=chelsea&layer={positive[0]['name']}")
    wait_tiles(tab)
    expect(legend).to_have_attribute("data-signed", "false")
    expect(tab.locator('[data-role="maps-legend-min"]')).to_have_text("0")


def test_reconstruction_is_large_and_zooms(tab: Any, server_url: str, shoot: Any) -> None:
    tab.set_viewport_size(DESKTOP)
    model = next(m["name"] for m in get_json(f"{server_url}/api/models") if m["default"])
    layers = get_json(f"{server_url}/api/models/{model}/layers")
    small = next(layer for layer in layers if layer["receptive_field"]["size"] < 40 and layer["channels"] > 8)
    tab.goto(f"{server_url}/#image=chelsea&layer={small['name']}&channel=1")
    wait_projection(tab)
    box = tab.locator(PROJECTION).bounding_box()
    assert box is not None and box["width"] >= 400
    tab.locator('[data-role="projection-stage"]').click()
    zoom = tab.locator('[data-role="recon-zoom"]')
    expect(zoom).to_be_visible()
    # a small field opens zoomed to the field: both patches enlarged side by side
    expect(zoom).to_have_attribute("data-view", "field")
    a = tab.locator('[data-role="zoom-input"]').bounding_box()
    b = tab.locator('[data-role="zoom-projection"]').bounding_box()
    assert a and b and a["width"] >= 300 and abs(a["y"] - b["y"]) < 1 and b["x"] > a["x"]
    shoot("recon-zoom-field")
    tab.locator('[data-role="zoom-view"] label').filter(has=tab.locator('input[value="whole"]')).click()
    expect(zoom).to_have_attribute("data-view", "whole")
    tab.locator('[data-role="zoom-close"]').click()
    expect(zoom).to_be_hidden()


def test_first_run_strip_layer_stages_and_uploads(tab: Any, server_url: str, tmp_path: Any, shoot: Any) -> None:
    """The start strip until dismissed (then never again); the layer tree opens on the main stages;
    uploads get thumbnails that bring them back; a tiny upload is accepted with a visible warning."""
    import skimage.data
    from PIL import Image

    tab.set_viewport_size(DESKTOP)
    tab.goto(f"{server_url}/#image=chelsea")
    wait_projection(tab)
    strip = tab.locator('[data-role="start-strip"]')
    expect(strip).to_be_visible()
    expect(strip).to_contain_text("click a feature map")
    shoot("first-run")
    tab.locator('[data-role="start-dismiss"]').click()
    expect(strip).to_be_hidden()
    tab.reload()
    wait_projection(tab)
    expect(strip).to_be_hidden()

    # the layer tree: the main stages first, a stage's ▸ shows its parts
    model = next(m["name"] for m in get_json(f"{server_url}/api/models") if m["default"])
    layers = get_json(f"{server_url}/api/models/{model}/layers")
    rows = tab.locator('[data-role="layer-list"] [data-layer]:not([hidden])')
    shown = rows.count()
    assert 5 <= shown <= 31 < len(layers)
    stage = tab.locator('[data-role="layer-list"] li:not([hidden]):has(.twisty[aria-expanded="false"])').first
    name = stage.get_attribute("data-layer")
    parts = [layer["name"] for layer in layers if layer["name"].startswith(f"{name}.")]
    stage.locator(".twisty").click()
    expect(tab.locator(f'[data-role="layer-list"] [data-layer="{parts[0]}"]')).to_be_visible()
    assert rows.count() > shown
    assert tab.evaluate("location.hash").find(f"layer={name}&") < 0  # opening a stage does not select it

    # uploads: a thumbnail each, the newest first; clicking one goes back to it
    photo = tmp_path / "coffee.png"
    Image.fromarray(skimage.data.coffee()).save(photo)
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (12, 9), (200, 40, 40)).save(tiny)
    tab.set_input_files('[data-role="upload-input"]', str(photo))
    first = tab.locator('[data-role="uploads"] [data-upload]')
    expect(first).to_have_count(1)
    coffee_id = first.get_attribute("data-upload")
    tab.wait_for_function("id => location.hash.includes('image=' + id)", arg=coffee_id)
    warning = tab.locator('[data-role="input-warning"]')
    expect(warning).to_be_hidden()
    tab.set_input_files('[data-role="upload-input"]', str(tiny))
    expect(first).to_have_count(2)
    tiny_id = tab.locator('[data-role="uploads"] [data-upload]').first.get_attribute("data-upload")
    tab.wait_for_function("id => location.hash.includes('image=' + id)", arg=tiny_id)
    expect(warning).to_be_visible()
    expect(warning).to_contain_text("12×9")
    expect(tab.locator('[data-role="predictions"] li')).to_have_count(5)  # accepted and classified
    tab.locator(f'[data-role="uploads"] [data-upload="{coffee_id}"]').click()
    tab.wait_for_function("id => location.hash.includes('image=' + id)", arg=coffee_id)
    expect(tab.locator(f'[data-upload="{coffee_id}"]')).to_have_attribute("aria-pressed", "true")
    expect(warning).to_be_hidden()
