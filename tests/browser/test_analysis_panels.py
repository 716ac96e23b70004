"""The analysis views (issue 8) in a real browser against the real server and the default model.

Each panel runs its study through the UI; the numbers it shows are checked against an
independent request to the API (never against hard-coded outputs).
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from browser.conftest import NARROW, get_json, open_page

pytestmark = pytest.mark.browser

MODEL = "efficientnet_lite0"

# the page's own jobs: jobs belong to the client (cookie) that started them (issue 19)
PAGE_JOBS = "() => fetch('/api/jobs').then(response => response.json())"


def post_job(server_url: str, path: str, body: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
    """Run a study through the API directly (POST, then poll the job) and return its result.

    One cookie jar for both: a job belongs to the client (cookie) that started it."""
    import http.cookiejar

    session = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    request = urllib.request.Request(
        f"{server_url}{path}", data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with session.open(request, timeout=60) as response:
        assert response.status == 202
        job = json.loads(response.read())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session.open(f"{server_url}{job['url']}", timeout=60) as response:
            job = json.loads(response.read())
        if job["state"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.3)
    assert job["state"] == "succeeded", job
    return dict(job["result"])


def open_tab(tab: Any, server_url: str, name: str) -> Any:
    tab.goto(f"{server_url}/#image=chelsea&tab={name}")
    panel = tab.locator(f'[data-tab-panel="{name}"]')
    expect(panel).to_have_attribute("data-ready", "true", timeout=60_000)
    return panel


def run_analysis(tab: Any, panel: Any, name: str, run_role: str) -> dict[str, Any]:
    """Click the panel's Run button; the JSON body it POSTs to /analyses/{name}."""
    with tab.expect_request(lambda r: r.method == "POST" and r.url.endswith(f"/analyses/{name}")) as sent:
        panel.locator(f'[data-role="{run_role}"]').click()
    body: dict[str, Any] = json.loads(sent.value.post_data)
    return body


def test_invariance_panel_draws_three_curves_per_image(tab: Any, server_url: str, shoot: Any) -> None:
    panel = open_tab(tab, server_url, "invariance")
    expect(tab.get_by_role("tab", name="Invariance")).to_have_attribute("aria-selected", "true")
    panel.locator('[data-role="inv-images"] [data-image="grace_hopper"]').click()
    expect(panel.locator('[data-role="inv-images"] [aria-pressed="true"]')).to_have_count(2)
    panel.locator('[data-role="inv-steps"]').fill("3")
    body = run_analysis(tab, panel, "invariance", "inv-run")
    assert body["images"] == ["chelsea", "grace_hopper"]
    assert (body["transform"], body["start"], body["stop"], body["steps"]) == ("translation", -60, 60, 3)
    expect(panel).to_have_attribute("data-state", "done", timeout=300_000)

    for role in ("inv-chart-low", "inv-chart-high", "inv-chart-prob"):
        expect(panel.locator(f'[data-role="{role}"] path[data-series]')).to_have_count(2)
    expected = post_job(server_url, f"/api/models/{MODEL}/analyses/invariance", body)
    legend = panel.locator('[data-role="inv-legend"] li')
    expect(legend).to_have_text([f"{img['image']}: {img['target_label']}" for img in expected["images"]])
    top1 = get_json(f"{server_url}/api/models/{MODEL}/images/chelsea/predictions?top=1")[0]["label"]
    assert expected["images"][0]["target_label"] == top1

    # hover the right end of the probability chart: the read-out shows every image's values at +60 px
    chart = panel.locator('[data-role="inv-chart-prob"]').bounding_box()
    tab.mouse.move(chart["x"] + chart["width"] - 12, chart["y"] + chart["height"] / 2)
    readout = panel.locator('[data-role="inv-readout"]')
    expect(readout).to_have_attribute("data-index", "2")
    for image in expected["images"]:
        row = readout.locator(f'tr[data-image="{image["image"]}"]')
        expect(row.locator('[data-col="probability"]')).to_have_text(f"{image['probability'][2]:.4f}")
        low, high = image["relative_distance"]["low"][2], image["relative_distance"]["high"][2]
        assert abs(float(row.locator('[data-col="low"]').inner_text()) - low) <= 0.01 * low
        assert abs(float(row.locator('[data-col="high"]').inner_text()) - high) <= 0.01 * high
        assert high < low  # the paper's finding, as the page shows it
    preview = panel.locator('[data-role="inv-preview"]')
    expect(preview).to_have_attribute("src", re.compile(r"transform=translation&value=60"))
    tab.wait_for_function(
        "() => { const i = document.querySelector('[data-role=\"inv-preview\"]'); return i.complete && i.naturalWidth === 224; }"
    )
    shoot("analysis-invariance", keep_mouse=True)


def test_correspondence_panel_draws_boxes_and_shows_table_1(tab: Any, server_url: str, shoot: Any) -> None:
    panel = open_tab(tab, server_url, "correspondence")
    demo = get_json(f"{server_url}/api/models/{MODEL}/analyses/correspondence/demo")
    expect(panel.locator(".cor-stage")).to_have_count(len(demo["images"]))
    expect(panel.locator('[data-role="cor-parts"] [data-part]')).to_have_count(len(demo["parts"]))

    # two faces, the left eye from the demo, and a new part drawn with the mouse on each image
    panel.locator('[data-role="cor-images"] [data-image="chelsea"]').click()
    for part in demo["parts"]:
        if part != "left_eye":
            panel.locator(f'[data-role="cor-parts"] [data-part="{part}"] button').click()
    panel.locator('[data-role="cor-new-part"]').fill("mouth")
    panel.get_by_role("button", name="Add part").click()
    expect(panel.locator('[data-role="cor-parts"] [data-part="mouth"]')).to_have_attribute("aria-checked", "true")
    expect(panel.locator(".cor-stage figcaption .missing")).to_have_count(2)
    drawn = {"astronaut": (0.40, 0.25, 0.52, 0.31), "grace_hopper": (0.44, 0.40, 0.58, 0.46)}
    for image, (x0, y0, x1, y1) in drawn.items():
        canvas = panel.locator(f'canvas[data-image="{image}"]').bounding_box()
        tab.mouse.move(canvas["x"] + x0 * canvas["width"], canvas["y"] + y0 * canvas["height"])
        tab.mouse.down()
        tab.mouse.move(canvas["x"] + x1 * canvas["width"], canvas["y"] + y1 * canvas["height"], steps=5)
        tab.mouse.up()
    expect(panel.locator(".cor-stage figcaption .missing")).to_have_count(0)
    panel.locator('[data-role="cor-draws"]').fill("1")
    body = run_analysis(tab, panel, "correspondence", "cor-run")
    assert body["images"] == ["astronaut", "grace_hopper"]
    assert body["parts"]["left_eye"] == [demo["parts"]["left_eye"][i] for i in body["images"]]
    for (image, (x0, y0, x1, y1)), box in zip(drawn.items(), body["parts"]["mouth"], strict=True):
        assert abs(box[0] - x0 * 224) <= 2 and abs(box[1] - y0 * 224) <= 2, (image, box)
        assert abs(box[0] + box[2] - x1 * 224) <= 2 and abs(box[1] + box[3] - y1 * 224) <= 2, (image, box)
    expect(panel).to_have_attribute("data-state", "done", timeout=300_000)

    expected = post_job(server_url, f"/api/models/{MODEL}/analyses/correspondence", body)
    rows = panel.locator('[data-role="cor-result"] tbody tr')
    expect(rows).to_have_count(3)
    for index, row in enumerate(expected["table"]):
        cells = rows.nth(index).locator("td")
        expect(cells.nth(0)).to_have_text(row["occlusion"])
        for column, layer in enumerate(expected["layers"], start=1):
            cell = row["delta"][layer]
            text = f"{cell['mean']:.4f}" + ("" if cell["std"] is None else f" ± {cell['std']:.4f}")
            expect(cells.nth(column)).to_have_text(text)
    headers = panel.locator('[data-role="cor-result"] thead th')
    expect(headers).to_have_text(["occlusion", *[f"Δ {layer}" for layer in expected["layers"]]])
    shoot("analysis-correspondence")


def test_architecture_panel_shows_filters_bands_and_dead_channels(tab: Any, server_url: str, shoot: Any) -> None:
    panel = open_tab(tab, server_url, "architecture")
    filters = get_json(f"{server_url}/api/models/{MODEL}/filters")
    freq = filters["frequency"]
    expect(panel.locator('[data-role="arch-facts"]')).to_contain_text(filters["layer"])
    expect(panel.locator('[data-role="arch-bands"] [data-filter]')).to_have_count(freq["channels"])
    tab.wait_for_function(
        "() => { const i = document.querySelector('[data-role=\"arch-mosaic\"]'); return i.complete && i.naturalWidth > 0; }"
    )
    # hover the first tile of the mosaic: its frequency shares, as the API computes them
    mosaic = panel.locator('[data-role="arch-mosaic"]').bounding_box()
    tab.mouse.move(mosaic["x"] + 6, mosaic["y"] + 6)
    low, mid, high = (100 * v for v in freq["per_filter"][0])
    expect(panel.locator('[data-role="arch-readout"]')).to_have_text(
        f"filter 0: low {low:.1f}% · mid {mid:.1f}% · high {high:.1f}%"
    )

    expect(panel).to_have_attribute("data-dead", "done", timeout=300_000)
    jobs = [job for job in tab.evaluate(PAGE_JOBS) if job["kind"] == "dead-channels" and job["result"]]
    result = jobs[-1]["result"]
    samples = get_json(f"{server_url}/api/samples")
    assert result["images"] == [sample["id"] for sample in samples]
    summary = panel.locator('[data-role="arch-dead-summary"]')
    expect(summary).to_contain_text(f"{result['total_dead']} of {result['total_channels']} channels dead")
    shown = [row for row in result["layers"] if row["dead"] > 0]
    rows = panel.locator('[data-role="arch-dead"] tbody tr')
    expect(rows).to_have_count(len(shown))
    for index, row in enumerate(shown[:5]):
        expect(rows.nth(index)).to_have_attribute("data-layer", row["layer"])
        expect(rows.nth(index).locator("td").nth(3)).to_have_text(str(row["dead"]))
    panel.locator('[data-role="arch-only-dead"]').uncheck()
    expect(rows).to_have_count(len(result["layers"]))
    shoot("analysis-architecture", full_page=True)


def test_analysis_views_fit_a_narrow_window(chromium: Any, server_url: str, screenshots: Path) -> None:
    with open_page(chromium, NARROW) as page:
        page.goto(f"{server_url}/#image=chelsea&tab=invariance")
        expect(page.locator('[data-tab-panel="invariance"]')).to_have_attribute("data-ready", "true", timeout=60_000)
        wide = page.evaluate(
            """() => Array.from(document.querySelectorAll('body *'))
                .filter(e => e.getClientRects().length && e.getBoundingClientRect().right > 421
                             && !e.closest('[role=tablist]'))
                .map(e => `${e.tagName}.${e.className} ${Math.round(e.getBoundingClientRect().right)}`)"""
        )
        assert page.evaluate("document.documentElement.scrollWidth") <= NARROW["width"], wide
        page.screenshot(path=str(screenshots / "analysis-narrow.png"))
