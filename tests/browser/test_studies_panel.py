"""The Studies view (issue 9) in Debian's Chromium against a real server whose studies
folder holds small real finished studies (training, Fig. 4, Table 3, Table 7)."""

from __future__ import annotations

import io
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from browser.conftest import ROOT, get_json, open_page, running_server
from studies.helpers import ABLATION_VARIANTS, EVOLUTION_COLS, EVOLUTION_ROWS, make_studies

pytestmark = pytest.mark.browser


def studies_server(folder: Path) -> AbstractContextManager[str]:
    """`convscope serve` with CONVSCOPE_STUDIES_DIR=folder and a tiny model (this view needs none)."""
    settings = {
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
        "CONVSCOPE_DEVICE": "cpu",
        "CONVSCOPE_MODELS": "fixtures.custom_models:small_zfnet",
        "CONVSCOPE_SCAN_ON_STARTUP": "false",
        "CONVSCOPE_STUDIES_DIR": str(folder),
    }
    return running_server(settings, folder.parent / "server.log")


@pytest.fixture(scope="module")
def studies_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`convscope serve` with CONVSCOPE_STUDIES_DIR set (and a tiny model: this view needs none)."""
    folder = make_studies(tmp_path_factory.mktemp("browser-studies") / "studies")
    with studies_server(folder) as base:
        yield base


def test_studies_view_shows_tables_and_steps_through_epochs(chromium: Any, studies_url: str, screenshots: Path) -> None:
    listing = get_json(f"{studies_url}/api/studies")["studies"]
    with open_page(chromium) as page:
        page.goto(f"{studies_url}/#tab=studies")
        panel = page.locator('[data-tab-panel="studies"]')
        expect(panel).to_have_attribute("data-ready", "true")
        expect(page.get_by_role("tab", name="Studies")).to_have_attribute("aria-selected", "true")
        items = panel.locator('[data-role="study-item"]')
        expect(items).to_have_count(len(listing))
        assert [items.nth(i).get_attribute("data-id") for i in range(len(listing))] == [s["id"] for s in listing]

        # Table 3: one row per variant, the numbers the API holds
        ablation = get_json(f"{studies_url}/api/studies/faces-ablation~ablation")
        panel.locator('[data-role="study-item"][data-kind="ablation"]').click()
        rows = panel.locator('[data-role="ablation-table"] tbody tr')
        expect(rows).to_have_count(len(ABLATION_VARIANTS.split(";")))
        for i, variant in enumerate(ablation["variants"]):
            cells = rows.nth(i).locator("td")
            expect(cells.nth(0)).to_have_text(variant["label"])
            expect(cells.nth(3)).to_have_text(f"{100 * (1 - variant['val_top1']['mean']):.1f}")
        expect(panel.locator('[data-role="study-title"]')).to_have_text(ablation["title"])

        # Table 7: one row per layer
        probe = get_json(f"{studies_url}/api/studies/digits-probe")
        panel.locator('[data-role="study-item"][data-kind="probe"]').click()
        rows = panel.locator('[data-role="probe-table"] tbody tr')
        expect(rows).to_have_count(len(probe["layers"]))
        expect(rows.nth(0).locator("td").nth(2)).to_have_text(
            f"{100 * probe['layers'][0]['svm']['mean']:.1f} ± {100 * probe['layers'][0]['svm']['std']:.1f}"
        )

        # Fig. 4: the chosen epoch's column, tile for tile the montage's
        evolution = get_json(f"{studies_url}/api/studies/digits-evolution")
        panel.locator('[data-role="study-item"][data-kind="evolution"]').click()
        expect(panel).to_have_attribute("data-montage", "loaded")
        slider = panel.locator('[data-role="evolution-slider"]')
        assert slider.get_attribute("max") == str(EVOLUTION_COLS - 1)
        column = panel.locator('[data-role="evolution-column"] canvas')
        expect(column).to_have_count(EVOLUTION_ROWS)
        with urllib.request.urlopen(f"{studies_url}{evolution['image_url']}") as response:
            montage = np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))
        geometry, tile = evolution["geometry"], evolution["geometry"]["tile"]
        for c, epoch in enumerate(evolution["epochs"]):
            slider.focus()
            slider.fill(str(c))
            expect(panel.locator('[data-role="evolution-epoch"]')).to_have_text(f"epoch {epoch:g}")
            expect(panel.locator('[data-role="evolution-column"]')).to_have_attribute("data-col", str(c))
            for r in range(EVOLUTION_ROWS):
                drawn = column.nth(r).evaluate(
                    "(canvas) => Array.from(canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data)"
                )
                shown = np.array(drawn, dtype=np.uint8).reshape(tile, tile, 4)[..., :3]
                y, x = geometry["row_y"][r], geometry["col_x"][c]
                assert np.array_equal(shown, montage[y : y + tile, x : x + tile]), (r, c)
        page.screenshot(path=str(screenshots / "studies-evolution.png"), full_page=True)


def test_a_fresh_install_offers_the_digits_study_as_a_job(
    chromium: Any, tmp_path_factory: pytest.TempPathFactory, screenshots: Path
) -> None:
    """An empty studies folder: the tab offers to train the small digits study on the server; it runs
    as a job whose progress the page shows (epoch by epoch), and Cancel stops it."""
    folder = tmp_path_factory.mktemp("fresh-studies") / "studies"
    with studies_server(folder) as base, open_page(chromium) as page:
        page.goto(f"{base}/#tab=studies")
        run = page.locator('[data-role="studies-run-digits"]')
        expect(run).to_be_visible()
        run.click()
        progress = page.locator('[data-role="studies-run-progress"]')
        expect(progress).to_be_visible()
        expect(page.locator('[data-role="studies-run-status"]')).to_contain_text("epoch 1 of 5", timeout=120_000)
        assert float(progress.evaluate("p => p.value")) == pytest.approx(0.2)
        page.screenshot(path=str(screenshots / "studies-digits-run.png"))
        page.locator('[data-role="studies-run-cancel"]').click()
        expect(page.locator('[data-tab-panel="studies"]')).to_have_attribute(
            "data-digits", "cancelled", timeout=120_000
        )
        jobs = page.evaluate("fetch('/api/jobs').then((r) => r.json())")  # the page's own jobs
        assert [job["state"] for job in jobs if job["kind"] == "study"] == ["cancelled"]
