"""The "Top 9" panel (paper Fig. 2) in a real browser against the real server and its bundled scan.

Expected values come from the server's scan API, never from hard-coded outputs.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qsl, quote

import pytest
from playwright.sync_api import expect

from browser.conftest import get_json

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


def wait_tiles(tab: Any, count: int, timeout: float = 120_000) -> None:
    tab.wait_for_function(
        """(count) => ['top9-projections', 'top9-crops'].every((role) => {
            const imgs = [...document.querySelectorAll(`[data-role="${role}"] img`)];
            return imgs.length === count && imgs.every((img) => img.complete && img.naturalWidth > 0);
        })""",
        arg=count,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def model(server_url: str) -> str:
    return next(m["name"] for m in get_json(f"{server_url}/api/models") if m["default"])


def test_top9_shows_the_bundled_scan_and_opens_an_image(tab: Any, server_url: str, model: str, shoot: Any) -> None:
    scan = bundled_scan(server_url, model)
    layer = scan["layers"][len(scan["layers"]) // 2]
    channel = min(5, layer["channels"] - 1)
    expected = get_json(f"{server_url}{scan['url']}/top?layer={quote(layer['name'])}&channel={channel}")["entries"]
    assert len(expected) == 9

    tab.goto(f"{server_url}/#image=chelsea&layer={layer['name']}&channel={channel}")
    wait_tiles(tab, 9)
    for selector in (PROJECTIONS, CROPS):
        shown = tab.eval_on_selector_all(selector, "els => els.map(e => [e.dataset.image, Number(e.dataset.value)])")
        assert shown == [[e["image"]["id"], pytest.approx(e["value"])] for e in expected]
    sizes = tab.eval_on_selector_all(f"{CROPS} img", "els => els.map(e => [e.naturalWidth, e.naturalHeight])")
    assert sizes == [[e["box"][3] - e["box"][1], e["box"][2] - e["box"][0]] for e in expected]
    expect(tab.locator('[data-role="top9-note"]')).to_contain_text("sample photos")

    # hover: the value (and where, and which image)
    first = tab.locator(PROJECTIONS).first
    first.hover()
    expect(tab.locator('[data-role="top9-hover"]')).to_contain_text(expected[0]["image"]["id"])
    assert f"({expected[0]['y']}, {expected[0]['x']})" in tab.locator('[data-role="top9-hover"]').inner_text()
    assert expected[0]["image"]["id"] in (first.get_attribute("title") or "")
    shoot("top9-panel", keep_mouse=True)

    # click: that image opens in the main view at the same layer and channel
    rank = next(i for i, e in enumerate(expected) if e["image"]["id"] != "chelsea")
    tab.locator(CROPS).nth(rank).click()
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
