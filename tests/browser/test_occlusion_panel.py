"""The Occlusion view (paper Fig. 7) in a real browser against the real server.

Expected values come from the server's own occlusion API, fetched by the test for
the same request, never from hard-coded outputs.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any
from urllib.parse import quote

import pytest
from playwright.sync_api import expect

from browser.conftest import get_json

pytestmark = pytest.mark.browser

PANEL = '[data-tab-panel="occlusion"]'
SIZE, STRIDE = 64, 32  # 6 × 6 positions on a 224 input: answered directly, a few seconds on a CPU
MAPS = ("probability", "top_label", "activity")

# the page's own jobs: jobs belong to the client (cookie) that started them (issue 19)
PAGE_JOBS = "() => fetch('/api/jobs').then(response => response.json())"


def post_json(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST", headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.status, json.loads(response.read())


@pytest.fixture(scope="module")
def model(server_url: str) -> dict[str, Any]:
    return next(m for m in get_json(f"{server_url}/api/models") if m["default"])


def open_panel(tab: Any, server_url: str, model: str) -> None:
    tab.goto(f"{server_url}/#model={model}&image=chelsea&tab=occlusion")
    tab.wait_for_selector(f'{PANEL}[data-ready="true"]')
    # the 1000 class names are searchable in the target field
    tab.wait_for_function("document.querySelectorAll('#occlusion-labels option').length === 1000")


def cell_centre(tab: Any, name: str, row: int, col: int, side: int) -> tuple[float, float]:
    box = tab.locator(f'[data-map="{name}"] .occ-stage').bounding_box()
    scale = box["width"] / side
    return box["x"] + (col * STRIDE + SIZE / 2) * scale, box["y"] + (row * STRIDE + SIZE / 2) * scale


def test_occlusion_panel_renders_the_three_maps(tab: Any, server_url: str, model: dict[str, Any], shoot: Any) -> None:
    name, side = model["name"], model["input_size"]
    status, expected = post_json(
        f"{server_url}/api/models/{quote(name)}/images/chelsea/occlusion", {"size": SIZE, "stride": STRIDE}
    )
    assert status == 200
    rows, cols = expected["rows"], expected["cols"]
    assert (rows, cols) == ((side - SIZE) // STRIDE + 1,) * 2

    open_panel(tab, server_url, name)
    panel = tab.locator(PANEL)
    # bad input is explained inline, without a request
    tab.fill('[data-role="occlusion-size"]', "0")
    tab.click('[data-role="occlusion-run"]')
    expect(tab.locator('[data-role="occlusion-error"]')).to_contain_text("at least 1")
    tab.fill('[data-role="occlusion-size"]', str(SIZE))
    tab.fill('[data-role="occlusion-stride"]', str(STRIDE))
    tab.fill('[data-role="occlusion-target"]', "no such animal")
    tab.click('[data-role="occlusion-run"]')
    expect(tab.locator('[data-role="occlusion-error"]')).to_contain_text("No class is called")
    tab.fill('[data-role="occlusion-target"]', "")
    # the method defaults to auto (exact); the approximate options are behind their own labelled control
    assert tab.locator('[data-role="occlusion-method"]').input_value() == "auto"
    approx_panel = tab.locator('[data-role="occlusion-approx-panel"]')
    assert approx_panel.get_attribute("open") is None
    expect(approx_panel.locator("summary")).to_contain_text("not exact")
    approx_panel.locator("summary").click()
    tab.fill('[data-role="occlusion-approx"]', "2")
    tab.click('[data-role="occlusion-run"]')
    expect(tab.locator('[data-role="occlusion-error"]')).to_contain_text("at most 1")
    tab.fill('[data-role="occlusion-approx"]', "0.5")
    tab.select_option('[data-role="occlusion-method"]', "dense")
    tab.click('[data-role="occlusion-run"]')
    expect(tab.locator('[data-role="occlusion-error"]')).to_contain_text("needs the incremental")
    tab.select_option('[data-role="occlusion-method"]', "auto")
    tab.fill('[data-role="occlusion-approx"]', "")
    # the server's refusal comes back in plain words (1 × 1 squares: more positions than it allows)
    tab.fill('[data-role="occlusion-size"]', "1")
    tab.fill('[data-role="occlusion-stride"]', "1")
    tab.click('[data-role="occlusion-run"]')
    expect(tab.locator('[data-role="occlusion-error"]')).to_contain_text("more than the limit")
    expect(panel).to_have_attribute("data-state", "failed")
    tab.fill('[data-role="occlusion-size"]', str(SIZE))
    tab.fill('[data-role="occlusion-stride"]', str(STRIDE))
    expect(tab.locator('[data-role="occlusion-estimate"]')).to_contain_text(
        f"{rows} × {cols} = {rows * cols} positions"
    )

    tab.click('[data-role="occlusion-run"]')
    expect(panel).to_have_attribute("data-state", "done", timeout=90_000)
    expect(tab.locator('[data-role="occlusion-error"]')).to_be_hidden()

    # three maps, each a rows × cols grid of painted cells over the input
    for map_name in MAPS:
        figure = tab.locator(f'[data-map="{map_name}"]')
        assert (figure.get_attribute("data-rows"), figure.get_attribute("data-cols")) == (str(rows), str(cols))
        size, alpha = figure.locator("canvas").evaluate(
            """c => [[c.width, c.height],
                     Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data).filter((v, i) => i % 4 === 3)]"""
        )
        assert size == [cols, rows]
        assert alpha == [255] * (rows * cols), f"{map_name}: not every cell is painted"
        assert figure.locator("img.occ-input").evaluate("img => img.complete && img.naturalWidth") == side

    # the probability legend spans the map's values; lower probability is drawn darker (inferno)
    probability = [p for row in expected["probability"] for p in row]
    legend = tab.locator('[data-role="occlusion-legend"][data-legend="probability"]')
    assert float(legend.get_attribute("data-min")) == pytest.approx(min(probability), abs=1e-5)
    assert float(legend.get_attribute("data-max")) == pytest.approx(max(probability), abs=1e-5)
    low, high = probability.index(min(probability)), probability.index(max(probability))
    luminance = tab.locator('[data-map="probability"] canvas').evaluate(
        """(c, cells) => cells.map(([y, x]) => { const d = c.getContext('2d').getImageData(x, y, 1, 1).data;
                                                return 0.2126 * d[0] + 0.7152 * d[1] + 0.0722 * d[2]; })""",
        [[low // cols, low % cols], [high // cols, high % cols]],
    )
    assert luminance[0] < luminance[1]
    activity = [a for row in expected["feature"]["activity"] for a in row]
    legend = tab.locator('[data-role="occlusion-legend"][data-legend="activity"]')
    assert float(legend.get_attribute("data-max")) == pytest.approx(max(activity), rel=1e-3, abs=1e-3)
    # the label legend lists exactly the labels that occur
    occurring = {label for row in expected["top_label"] for label in row}
    shown = tab.eval_on_selector_all(
        '[data-legend="top_label"] li[data-label]', "els => els.map(e => Number(e.dataset.label))"
    )
    others = tab.locator('[data-legend="top_label"] li.occ-other').count()
    assert set(shown) <= occurring and (set(shown) == occurring or others == 1)
    expect(tab.locator('[data-role="occlusion-summary"]')).to_contain_text(expected["feature"]["layer"])
    # which method ran (the server's choice for auto), exact, its time and planned speed-up
    ran = tab.locator('[data-role="occlusion-method-ran"]')
    expect(ran).to_be_visible()
    assert ran.get_attribute("data-method") == expected["method"]
    assert ran.get_attribute("data-approximate") == "false"
    expect(ran).to_contain_text("exact")
    expect(ran).to_contain_text(" s on the server")
    assert float(ran.get_attribute("data-seconds")) > 0
    assert float(ran.get_attribute("data-planned-ratio")) == pytest.approx(expected["planned_ratio"], rel=1e-6)
    expect(ran).to_contain_text(f"{expected['planned_ratio'] * 100:.1f} %")

    # hover the most damaging occluder position: its numbers
    row, col = low // cols, low % cols
    tab.mouse.move(*cell_centre(tab, "activity", row, col, side))
    readout = tab.locator('[data-role="occlusion-hover"]')
    expect(readout).to_have_attribute("data-row", str(row))
    expect(readout).to_have_attribute("data-col", str(col))
    value = lambda field: readout.locator(f'[data-field="{field}"]').get_attribute("data-value")  # noqa: E731
    assert value("position") == f"{row * STRIDE},{col * STRIDE}"
    assert float(value("probability")) == pytest.approx(expected["probability"][row][col], abs=1e-5)
    assert int(value("label")) == expected["top_label"][row][col]
    assert float(value("activity")) == pytest.approx(expected["feature"]["activity"][row][col], rel=1e-3, abs=1e-3)
    label = expected["top_label_names"][str(expected["top_label"][row][col])].split(",")[0]
    expect(readout).to_contain_text(label)
    expect(readout).to_contain_text(f"y {row * STRIDE}, x {col * STRIDE}")
    # the occluder square is drawn on every map at that position
    square = tab.locator('[data-map="probability"] .occ-square')
    assert [square.get_attribute(k) for k in ("x", "y", "width", "visibility")] == [
        str(col * STRIDE),
        str(row * STRIDE),
        str(SIZE),
        "visible",
    ]

    # the projection of the chosen feature map (Fig. 7c) loads next to the maps
    projection = tab.locator('img[data-role="occlusion-projection"]')
    expect(projection).to_be_visible(timeout=90_000)
    tab.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=projection.element_handle())
    assert projection.evaluate("img => img.naturalWidth") == side
    assert projection.get_attribute("data-proj-layer") == expected["feature"]["layer"]
    assert projection.get_attribute("data-proj-channel") == str(expected["feature"]["channel"])
    shoot("occlusion-panel", keep_mouse=True)

    # the maps are for one image: choosing another marks them out of date (no automatic re-run)
    tab.evaluate("location.hash = location.hash.replace('image=chelsea', 'image=astronaut')")
    expect(tab.locator('[data-role="occlusion-stale"]')).to_be_visible()
    assert panel.get_attribute("data-state") == "done"


def test_occlusion_approximate_run_is_labelled(tab: Any, server_url: str, model: dict[str, Any]) -> None:
    name = model["name"]
    body = {"size": SIZE, "stride": STRIDE, "approx": 0.5}
    status, expected = post_json(f"{server_url}/api/models/{quote(name)}/images/chelsea/occlusion", body)
    assert status == 200 and expected["approximate"] is True
    open_panel(tab, server_url, name)
    tab.fill('[data-role="occlusion-size"]', str(SIZE))
    tab.fill('[data-role="occlusion-stride"]', str(STRIDE))
    tab.locator('[data-role="occlusion-approx-panel"] summary').click()
    tab.fill('[data-role="occlusion-approx"]', "0.5")
    tab.click('[data-role="occlusion-run"]')
    expect(tab.locator(PANEL)).to_have_attribute("data-state", "done", timeout=90_000)
    ran = tab.locator('[data-role="occlusion-method-ran"]')
    assert ran.get_attribute("data-method") == expected["method"] == "incremental"
    assert ran.get_attribute("data-approximate") == "true"
    expect(tab.locator('[data-role="occlusion-approximate"]')).to_be_visible()
    expect(ran).to_contain_text("cap τ = 0.5")
    probability = [p for row in expected["probability"] for p in row]
    legend = tab.locator('[data-role="occlusion-legend"][data-legend="probability"]')
    assert float(legend.get_attribute("data-min")) == pytest.approx(min(probability), abs=1e-5)


def test_occlusion_job_shows_progress_and_cancels(tab: Any, server_url: str, model: dict[str, Any]) -> None:
    open_panel(tab, server_url, model["name"])
    # stride 4 on 224: 49 × 49 positions, more than the server answers directly, so it runs as a job
    tab.fill('[data-role="occlusion-size"]', "32")
    tab.fill('[data-role="occlusion-stride"]', "4")
    expect(tab.locator('[data-role="occlusion-estimate"]')).to_contain_text("49 × 49 = 2,401 positions")
    tab.click('[data-role="occlusion-run"]')
    expect(tab.locator(PANEL)).to_have_attribute("data-state", "running")
    expect(tab.locator('[data-role="occlusion-progress"]')).to_be_visible()
    expect(tab.locator('[data-role="occlusion-progress-text"]')).to_contain_text("/ 2,401 positions", timeout=30_000)
    tab.click('[data-role="occlusion-cancel"]')
    expect(tab.locator(PANEL)).to_have_attribute("data-state", "cancelled", timeout=60_000)
    expect(tab.locator('[data-role="occlusion-error"]')).to_contain_text("Cancelled")
    expect(tab.locator('[data-role="occlusion-progress"]')).to_be_hidden()
    jobs = [job for job in tab.evaluate(PAGE_JOBS) if job["kind"] == "occlusion" and job["total"] == 2401]
    assert jobs and jobs[-1]["state"] == "cancelled"
