"""The "Unit" view in a real browser against a real server: reconstruction, Top 9 and the
optimised image side by side; the optimised image is computed on demand (a job with
progress) and comes from the server's cache after, also through the "unit card" link.

A server of its own (EfficientNet-Lite0, ImageNet weights), with empty scan and
feature-visualisation folders, so nothing is cached from an earlier run."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import pytest

from browser.conftest import ARTIFACTS, SCREENSHOTS, get_json, open_page, running_server
from convscope.featvis.atlas import build_atlas
from fixtures.nets import make_engine, zf_shaped

pytestmark = pytest.mark.browser
MODEL = "efficientnet_lite0"
LAYER = "blocks.2"  # one of the start-up scan's layers
CHANNEL = 3
TOP_PROJECTION_PNG = re.compile(r"/top/\d+/projection\.png")  # one top-k projection, one request


@pytest.fixture(scope="module")
def unit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("unit-page")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    atlas = root / "atlas"  # a tiny atlas (the ZF fixture net) for the dashboard's atlas link
    build_atlas(
        make_engine(zf_shaped(size=112), 112, name="zf-shaped"), atlas, layers=["features.conv2"], channels="0", steps=2
    )
    settings = {
        "CONVSCOPE_ATLAS_DIR": str(atlas),
        "CONVSCOPE_DEVICE": "cpu",
        "CONVSCOPE_MODELS": MODEL,
        "CONVSCOPE_SCAN_DIR": str(root / "scans"),
        "CONVSCOPE_FEATVIS_DIR": str(root / "featvis"),
    }
    with running_server(settings, ARTIFACTS / "unit-page-server.log") as base:
        deadline = time.monotonic() + 180
        while not any(s["status"] == "complete" for s in get_json(f"{base}/api/models/{MODEL}/scans")):
            assert time.monotonic() < deadline, "the start-up scan did not finish"
            time.sleep(0.5)
        yield base


def images_loaded(page: Any, selector: str) -> list[int]:
    return page.eval_on_selector_all(selector, "els => els.map(e => (e.complete ? e.naturalWidth : 0))")


def projections_url(top: dict[str, Any]) -> str:
    """The URL of a top answer's projections all in one answer (`top/projections`, in its mode)."""
    query = urlencode({"layer": top["layer"], "channel": top["channel"], "mode": top["mode"]})
    return f"/api/models/{MODEL}/scans/{top['scan']}/top/projections?{query}"


def test_unit_page(chromium: Any, unit_server: str) -> None:
    url = f"{unit_server}/#model={MODEL}&image=chelsea&layer={LAYER}&channel={CHANNEL}&tab=unit"
    expected = get_json(
        f"{unit_server}/api/models/{MODEL}/scans/samples/top?layer={quote(LAYER)}&channel={CHANNEL}&mode=auto"
    )
    with open_page(chromium) as page:
        page.goto(url)
        page.wait_for_selector('[data-role="unit-page"][data-state="ready"]', timeout=120_000)
        assert page.text_content('[data-role="unit-title"]') == f"{LAYER} · channel {CHANNEL}"
        page.wait_for_selector('a[data-role="atlas-link"]:visible')
        assert page.get_attribute('a[data-role="atlas-link"]', "href") == "/api/atlas/index.html"
        # the reconstruction on the current image
        page.wait_for_selector('img[data-role="unit-projection"][data-loaded="true"]')
        src = page.get_attribute('img[data-role="unit-projection"]', "src")
        assert "/images/chelsea/projection?" in src and f"channel={CHANNEL}" in src
        # its Top 9, in the scan's order
        assert page.get_attribute('[data-role="unit-page"]', "data-top9") == "ready"
        page.wait_for_function(
            "() => [...document.querySelectorAll('[data-role=unit-page] .top9-grid img')].every(i => i.complete)"
        )
        assert all(w > 0 for w in images_loaded(page, '[data-role="unit-top9-projections"] img'))
        assert len(images_loaded(page, '[data-role="unit-top9-crops"] img')) == 9
        srcs = page.eval_on_selector_all(
            '[data-role="unit-top9-projections"] img', "els => els.map(e => e.getAttribute('src'))"
        )
        batch = get_json(f"{unit_server}{projections_url(expected)}")
        assert [item["rank"] for item in batch] == [entry["rank"] for entry in expected["entries"]]
        assert srcs == [item["png"] for item in batch]  # the data URLs of the one request
        # the optimised image: not cached yet, computed on demand with progress
        assert page.get_attribute('[data-role="unit-page"]', "data-featvis") == "idle"
        assert page.is_hidden('img[data-role="unit-featvis"]')
        with page.expect_popup() as popup:  # the atlas link opens the atlas the server serves
            page.click('a[data-role="atlas-link"]')
        atlas = popup.value
        atlas.wait_for_selector("html[data-ready=true]")
        assert atlas.eval_on_selector_all('[data-role="atlas-unit"]', "els => els.length") == 1
        atlas.close()
        page.select_option('[data-role="featvis-steps"]', "64")
        page.wait_for_selector('[data-role="unit-page"][data-featvis="idle"]')
        page.click('[data-role="featvis-compute"]')
        page.wait_for_selector('[data-role="unit-page"][data-featvis="running"]')
        page.wait_for_selector('[data-role="featvis-progress"]:visible')
        page.wait_for_selector('[data-role="unit-page"][data-featvis="ready"]', timeout=300_000)
        page.wait_for_function("() => document.querySelector('img[data-role=unit-featvis]').naturalWidth > 0")
        assert images_loaded(page, 'img[data-role="unit-featvis"]') == [224]
        value = float(page.get_attribute('img[data-role="unit-featvis"]', "data-value"))
        stored = get_json(
            f"{unit_server}/api/models/{MODEL}/visualizations?layer={quote(LAYER)}&channel={CHANNEL}&steps=64"
        )
        assert stored["cached"] is True and stored["value"] == pytest.approx(value)
        unnamed = page.evaluate(
            """() => [...document.querySelectorAll('[data-role=unit-page] :is(button, select, input, img, a)')]
                .filter((el) => el.getClientRects().length)
                .filter((el) => (el.tagName === 'IMG' ? !el.getAttribute('alt')
                    : !(el.textContent.trim() || el.getAttribute('aria-label') || el.getAttribute('title'))))
                .map((el) => el.outerHTML.slice(0, 120))"""
        )
        assert unnamed == []
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "unit-page.png"))
        card = page.get_attribute('[data-role="unit-card-link"]', "href")
    params = dict(parse_qsl(card.lstrip("#")))
    assert params == {
        "model": MODEL,
        "image": "chelsea",
        "layer": LAYER,
        "channel": str(CHANNEL),
        "mode": "auto",  # the dashboard's default mode (resolved per layer)
        "select": "max",
        "tab": "unit",
    }
    # the unit card in a fresh page: the optimised image comes from the cache, no job
    with open_page(chromium) as page:
        posts: list[str] = []
        page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
        page.goto(f"{unit_server}/{card}")
        page.wait_for_selector('[data-role="unit-page"][data-state="ready"]', timeout=120_000)
        page.select_option('[data-role="featvis-steps"]', "64")
        page.wait_for_selector('[data-role="unit-page"][data-featvis="ready"]')
        page.wait_for_function("() => document.querySelector('img[data-role=unit-featvis]').naturalWidth > 0")
        assert "from the server's cache" in page.text_content('[data-role="featvis-note"]')
        assert not posts
        # another channel through the hash: the view follows
        page.evaluate(f"location.hash = location.hash.replace('channel={CHANNEL}', 'channel={CHANNEL + 1}')")
        page.wait_for_function(
            f"() => document.querySelector('[data-role=unit-title]').textContent.endsWith('channel {CHANNEL + 1}')"
        )
        page.wait_for_selector('[data-role="unit-page"][data-featvis="idle"]')


def test_unit_top9_projections_come_in_one_request(chromium: Any, unit_server: str) -> None:
    """Opening a unit: its nine Top 9 projections come in one request (top/projections, data URLs), none
    one by one (top/<rank>/projection.png). The page opens on the Explore view and waits for its own Top 9
    panel first, so every request counted after the click on the Unit tab is the unit view's. The Top 9
    then stays while only the image changes; another channel's is drawn from one request again."""
    top_url = f"{unit_server}/api/models/{MODEL}/scans/samples/top?layer={quote(LAYER)}"
    pictures = '[data-role="unit-top9-projections"] img'
    sent: list[str] = []  # the requests the page made since the last clear()

    def batches() -> list[dict[str, str]]:
        return [dict(parse_qsl(urlsplit(url).query)) for url in sent if "/top/projections?" in url]

    def one_by_one() -> list[str]:
        return [url for url in sent if TOP_PROJECTION_PNG.search(url)]

    def assert_drawn(page: Any, top: dict[str, Any]) -> None:
        """The nine projections on the page are the one-request answer's, in the scan's order, loaded."""
        assert len(top["entries"]) == 9
        assert all(width > 0 for width in images_loaded(page, pictures))
        alts = page.eval_on_selector_all(pictures, "els => els.map(e => e.alt)")
        assert alts == [f"projection {e['rank'] + 1}: {e['image']['id']}" for e in top["entries"]]
        srcs = page.eval_on_selector_all(pictures, "els => els.map(e => e.getAttribute('src'))")
        assert srcs == [item["png"] for item in get_json(f"{unit_server}{projections_url(top)}")]

    with open_page(chromium) as page:
        page.on("request", lambda request: sent.append(request.url))
        page.goto(f"{unit_server}/#model={MODEL}&image=chelsea&layer={LAYER}&channel={CHANNEL}&tab=explore")
        page.wait_for_function(  # the Explore view's Top 9 panel has drawn its eighteen pictures
            """() => ['top9-projections', 'top9-crops'].every((role) => {
                const tiles = [...document.querySelectorAll(`[data-role="${role}"] .top9-tile`)];
                return tiles.length === 9 && tiles.every((t) => t.dataset.state === 'ready');
            })""",
            timeout=120_000,
        )
        sent.clear()
        page.click("#tabbtn-unit")
        page.wait_for_selector('[data-role="unit-page"][data-top9="ready"]', timeout=120_000)
        top = get_json(f"{top_url}&channel={CHANNEL}&mode=auto")
        assert batches() == [{"layer": LAYER, "channel": str(CHANNEL), "mode": top["mode"]}]
        assert one_by_one() == []
        assert_drawn(page, top)
        # another image: the reconstruction follows, the Top 9 (the scan's, not the image's) stays
        sent.clear()
        page.evaluate("location.hash = location.hash.replace('image=chelsea', 'image=astronaut')")
        page.wait_for_selector('img[data-role="unit-projection"][data-loaded="true"][src*="/images/astronaut/"]')
        assert page.get_attribute('[data-role="unit-page"]', "data-top9") == "ready"
        assert [url for url in sent if "/top" in url] == []
        # another channel: the unit view draws its nine, again none of them one by one
        page.evaluate(f"location.hash = location.hash.replace('channel={CHANNEL}', 'channel={CHANNEL + 1}')")
        page.wait_for_function(
            """(channel) => document.querySelector('[data-role=unit-title]').textContent.endsWith(`channel ${channel}`)
                && document.querySelector('[data-role=unit-page]').dataset.top9 === 'ready'""",
            arg=CHANNEL + 1,
            timeout=120_000,
        )
        top = get_json(f"{top_url}&channel={CHANNEL + 1}&mode=auto")
        assert {"layer": LAYER, "channel": str(CHANNEL + 1), "mode": top["mode"]} in batches()
        assert one_by_one() == []
        assert_drawn(page, top)


def test_unit_top9_falls_back_to_one_request_per_projection(chromium: Any, unit_server: str) -> None:
    """Should the one request fail (here the server's answer is replaced by a 500), each of the nine
    projections is asked for on its own (api.topProjections' fallback) and the Top 9 is still drawn."""
    top = get_json(
        f"{unit_server}/api/models/{MODEL}/scans/samples/top?layer={quote(LAYER)}&channel={CHANNEL}&mode=auto"
    )
    pictures = '[data-role="unit-top9-projections"] img'
    with open_page(chromium) as page:
        failed: list[str] = []

        def fail(route: Any) -> None:
            failed.append(route.request.url)
            route.fulfill(status=500, json={"detail": "refused by the test"})

        page.route("**/top/projections?*", fail)
        page.goto(f"{unit_server}/#model={MODEL}&image=chelsea&layer={LAYER}&channel={CHANNEL}&tab=unit")
        page.wait_for_selector('[data-role="unit-page"][data-top9="ready"]', timeout=120_000)
        assert failed  # the one request was made, and failed
        srcs = page.eval_on_selector_all(pictures, "els => els.map(e => e.getAttribute('src'))")
        assert srcs == [entry["projection_url"] for entry in top["entries"]]
        assert len(srcs) == 9 and all(width > 0 for width in images_loaded(page, pictures))


def test_unit_view_is_ready_when_the_steps_change_while_it_loads(chromium: Any, unit_server: str) -> None:
    """A steps change while the first loads are on their way: the view still says ready once the
    newest loads are done (it used to wait for a superseded load and never said it)."""
    url = f"{unit_server}/#model={MODEL}&image=chelsea&layer={LAYER}&channel={CHANNEL}&tab=unit"
    with open_page(chromium) as page:
        held: list[Any] = []

        def hold(route: Any) -> None:  # the Top 9 waits until the steps have changed
            held.append(route)

        page.route("**/top/projections?*", hold)
        page.goto(url)
        page.wait_for_selector('[data-role="unit-page"][data-top9="loading"]', timeout=120_000)
        page.wait_for_function("() => document.querySelector('[data-role=featvis-steps]') !== null")
        with page.expect_response(lambda r: "/visualizations?" in r.url and "steps=64" in r.url):
            page.select_option('[data-role="featvis-steps"]', "64")  # the optimised image is looked up again
        assert page.get_attribute('[data-role="unit-page"]', "data-state") != "ready"  # the Top 9 is still held
        for route in held:
            route.continue_()
        page.unroute("**/top/projections?*", hold)
        page.wait_for_selector('[data-role="unit-page"][data-top9="ready"]', timeout=60_000)
        page.wait_for_selector('[data-role="unit-page"][data-state="ready"]', timeout=60_000)
