"""Class views in the Top-5 panel (issue 21): a click projects that class's logit."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from playwright.sync_api import expect

VIEW = '[data-role="class-view"]'


def _pixels(tab: Any) -> str:
    """The shown class view's pixels, as a data URL (drawn on a canvas)."""
    return tab.evaluate(
        """() => { const img = document.querySelector('[data-role="class-view-img"]');
        const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
        c.getContext('2d').drawImage(img, 0, 0); return c.toDataURL(); }"""
    )


def test_clicking_the_second_prediction_shows_its_own_projection(tab: Any, server_url: str) -> None:
    tab.goto(f"{server_url}/#image=chelsea")
    rows = tab.locator('[data-role="predictions"] li')
    expect(rows).to_have_count(5)
    first, second = rows.nth(0).get_attribute("data-index"), rows.nth(1).get_attribute("data-index")
    rows.nth(0).click()
    expect(tab.locator(f'{VIEW}[data-class="{first}"]:not([data-loading])')).to_be_visible()
    one = _pixels(tab)
    rows.nth(1).click()
    expect(tab.locator(f'{VIEW}[data-class="{second}"]:not([data-loading])')).to_be_visible()
    two = _pixels(tab)
    assert one != two, "two classes gave the same projection"
    tab.wait_for_function("k => location.hash.includes('class=' + k)", arg=second)
    assert dict(parse_qsl(tab.evaluate("location.hash").lstrip("#")))["class"] == second
    expect(rows.nth(1)).to_have_class("is-chosen")
    # the occlusion view opens with this class as its target
    tab.locator('[data-role="class-view-occlusion"]').click()
    target = tab.locator('[data-role="occlusion-target"]')
    expect(target).to_be_visible(timeout=30_000)
    tab.wait_for_function(
        "k => (document.querySelector('[data-role=\"occlusion-target\"]')?.value || '').includes('(' + k + ')')"
        " || document.querySelector('[data-role=\"occlusion-target\"]')?.value === k",
        arg=second,
    )
