"""Class views in the Top-5 panel (issue 21): a click projects that class's logit."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from playwright.sync_api import expect

from browser.conftest import get_json

VIEW = '[data-role="class-view"]'
MODEL = "efficientnet_lite0"


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


def _hash(tab: Any) -> dict[str, str]:
    return dict(parse_qsl(tab.evaluate("location.hash").lstrip("#")))


def test_a_class_typed_into_the_search_shows_its_view_and_a_reload_restores_it(tab: Any, server_url: str) -> None:
    """A class that is not in the top 5, picked from the searchable label list with the keyboard only:
    its projection appears (unlike the top-1's), the hash holds it, and reloading brings it back."""
    labels = get_json(f"{server_url}/api/models/{MODEL}/labels")
    volcano = next(row["index"] for row in labels if row["label"] == "volcano")
    tab.goto(f"{server_url}/#image=chelsea")
    rows = tab.locator('[data-role="predictions"] li')
    expect(rows).to_have_count(5)
    top5 = [rows.nth(i).get_attribute("data-index") for i in range(5)]
    assert str(volcano) not in top5, "the test needs a class outside the top 5"
    rows.nth(0).click()
    expect(tab.locator(f'{VIEW}[data-class="{top5[0]}"]:not([data-loading])')).to_be_visible()
    top1 = _pixels(tab)

    search = tab.locator('[data-role="class-search"]')
    expect(search).to_be_enabled()
    search.focus()
    search.press_sequentially("volca")
    option = tab.locator(f'[data-role="class-search-list"] [role="option"][data-index="{volcano}"]')
    expect(option).to_be_visible()
    expect(search).to_have_attribute("aria-expanded", "true")
    search.press("ArrowDown")
    expect(search).to_have_attribute("aria-activedescendant", f"class-option-{volcano}")
    expect(option).to_have_attribute("aria-selected", "true")
    search.press("Enter")
    expect(tab.locator('[data-role="class-search-list"]')).to_be_hidden()
    expect(tab.locator(f'{VIEW}[data-class="{volcano}"]:not([data-loading])')).to_be_visible()
    picked = _pixels(tab)
    assert picked != top1, "the searched class gave the top-1's projection"
    expect(tab.locator('[data-role="class-view-caption"]')).to_contain_text("volcano")
    tab.wait_for_function("k => location.hash.includes('class=' + k)", arg=str(volcano))
    assert _hash(tab)["class"] == str(volcano)
    expect(tab.locator('[data-role="predictions"] li.is-chosen')).to_have_count(0)  # not one of the top 5

    tab.reload()
    expect(tab.locator(f'{VIEW}[data-class="{volcano}"]:not([data-loading])')).to_be_visible()
    assert _pixels(tab) == picked, "the reloaded view is not the picked class's projection"
    expect(search).to_have_value(f"volcano ({volcano})")
    assert _hash(tab)["class"] == str(volcano)
    # its occlusion map one click away: the Occlusion view opens with it as the target
    tab.locator('[data-role="class-view-occlusion"]').click()
    expect(tab.locator('[data-role="occlusion-target"]')).to_have_value(f"volcano ({volcano})")


def test_the_class_search_lists_matches_and_escape_closes_it(tab: Any, server_url: str) -> None:
    tab.goto(f"{server_url}/#image=chelsea")
    search = tab.locator('[data-role="class-search"]')
    expect(search).to_be_enabled()
    search.focus()
    search.press_sequentially("cat")
    options = tab.locator('[data-role="class-search-list"] [role="option"]')
    expect(options.first).to_be_visible()
    names = options.locator(".label").all_inner_texts()
    assert names and all("cat" in name.lower() for name in names)
    assert names[0].lower().startswith("cat") or " cat" in names[0].lower()  # name or word starts rank first
    expect(tab.locator('[data-role="class-search-status"]')).to_contain_text("match")
    search.press("Escape")
    expect(tab.locator('[data-role="class-search-list"]')).to_be_hidden()
    expect(search).to_have_value("cat")
    search.press("Escape")
    expect(search).to_have_value("")
    expect(tab.locator(f"{VIEW}")).to_be_hidden()  # nothing was picked
