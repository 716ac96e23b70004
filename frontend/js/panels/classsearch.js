// "Any class": a search box over the model's class labels (GET /api/models/{m}/labels), for the
// class views of the Top-5 panel. An ARIA combobox: type part of a name (or a class index), walk
// the matches with ↑/↓, Enter (or a click) picks one, Escape closes the list (a second Escape
// clears the box). Picking calls `onPick(index)`; the panel does the rest, as for a top-5 click.

import { request, urls } from "../api.js";
import { h } from "../util.js";

const SHOWN = 12; // matches listed at once

/** Rank the labels for a query: a name starting with it first, then a word starting with it, then anywhere. */
export function matchLabels(labels, text) {
  const query = String(text || "").trim().toLowerCase();
  if (!query) return [];
  if (/^\d+$/.test(query)) {
    const row = labels[Number(query)];
    return row ? [row] : [];
  }
  const ranked = [];
  for (const row of labels) {
    const name = row.label.toLowerCase();
    const at = name.indexOf(query);
    if (at < 0) continue;
    const rank = at === 0 ? 0 : /[\s,'-]/.test(name[at - 1]) ? 1 : 2;
    ranked.push([rank, row]);
  }
  ranked.sort((a, b) => a[0] - b[0] || a[1].index - b[1].index);
  return ranked.map(([, row]) => row);
}

export function createClassSearch({ onPick }) {
  let labels = []; // [{index, label}] of `model`
  let model = null;
  let matches = [];
  let active = -1;

  const input = h("input", {
    id: "class-search",
    type: "text",
    role: "combobox",
    autocomplete: "off",
    spellcheck: "false",
    placeholder: "search the class names…",
    "aria-autocomplete": "list",
    "aria-expanded": "false",
    "aria-controls": "class-search-list",
    "aria-describedby": "class-search-status",
    dataset: { role: "class-search" },
    disabled: true,
  });
  const list = h("ul", { id: "class-search-list", role: "listbox", class: "class-search-list", "aria-label": "Matching classes", hidden: true, dataset: { role: "class-search-list" } });
  const status = h("span", { id: "class-search-status", class: "class-search-status", "aria-live": "polite", dataset: { role: "class-search-status" } });
  const root = h(
    "div",
    { class: "class-search", dataset: { role: "class-search-box" } },
    h("label", { for: "class-search", class: "class-search-label" }, "Any class"),
    input,
    list,
    status,
  );

  const optionId = (row) => `class-option-${row.index}`;

  function close() {
    list.hidden = true;
    input.setAttribute("aria-expanded", "false");
    input.removeAttribute("aria-activedescendant");
    active = -1;
  }

  function setActive(next) {
    if (!matches.length) return;
    active = (next + Math.min(matches.length, SHOWN)) % Math.min(matches.length, SHOWN);
    for (const [i, li] of [...list.children].entries()) {
      li.classList.toggle("is-active", i === active);
      li.setAttribute("aria-selected", String(i === active));
    }
    const li = list.children[active];
    input.setAttribute("aria-activedescendant", li.id);
    li.scrollIntoView?.({ block: "nearest" });
  }

  function refresh() {
    matches = matchLabels(labels, input.value);
    active = -1;
    const shown = matches.slice(0, SHOWN);
    list.replaceChildren(
      ...shown.map((row) =>
        h(
          "li",
          {
            id: optionId(row),
            role: "option",
            "aria-selected": "false",
            dataset: { index: row.index },
            // mousedown would blur the box (and close the list) before the click lands
            onmousedown: (event) => event.preventDefault(),
            onclick: () => pick(row),
          },
          h("span", { class: "label" }, row.label),
          h("span", { class: "idx" }, String(row.index)),
        ),
      ),
    );
    const open = Boolean(input.value.trim()) && document.activeElement === input;
    list.hidden = !open || !shown.length;
    input.setAttribute("aria-expanded", String(!list.hidden));
    input.removeAttribute("aria-activedescendant");
    if (!input.value.trim()) status.textContent = "";
    else if (!matches.length) status.textContent = "no class matches";
    else status.textContent = matches.length > SHOWN ? `${matches.length} matches, the first ${SHOWN} listed` : `${matches.length} match${matches.length === 1 ? "" : "es"}`;
  }

  function pick(row) {
    input.value = `${row.label} (${row.index})`;
    close();
    status.textContent = "";
    onPick(row.index);
  }

  input.addEventListener("input", refresh);
  input.addEventListener("focus", () => input.select());
  input.addEventListener("blur", close);
  input.addEventListener("keydown", (event) => {
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      if (list.hidden) refresh();
      if (!matches.length) return;
      setActive(active < 0 ? (event.key === "ArrowDown" ? 0 : -1) : active + (event.key === "ArrowDown" ? 1 : -1));
      event.preventDefault();
    } else if (event.key === "Enter") {
      const row = matches[active >= 0 ? active : 0];
      if (row && input.value.trim()) pick(row);
      event.preventDefault();
    } else if (event.key === "Escape") {
      if (!list.hidden) close();
      else input.value = "";
      status.textContent = "";
      event.preventDefault();
    }
  });

  /** The labels of `name` (once per model); the box is disabled until they arrive. */
  async function setModel(name) {
    if (!name || name === model) return;
    model = name;
    labels = [];
    input.disabled = true;
    close();
    try {
      const rows = await request(urls.labels(name), { slot: "class-labels" });
      if (model !== name) return;
      labels = rows;
      input.disabled = false;
      root.dataset.count = String(rows.length);
      input.title = `Type part of one of the ${rows.length} class names, or a class index`;
    } catch (error) {
      if (model === name) model = null; // asked again on the next load
      if (!error.aborted) status.textContent = `The class names could not be loaded: ${error.message}`;
    }
  }

  /** The chosen class's name in the box (unless someone is typing in it). */
  function show(index) {
    if (document.activeElement === input) return;
    const row = index === null || index === undefined ? null : labels[index];
    input.value = row ? `${row.label} (${row.index})` : "";
  }

  const labelOf = (index) => labels[index]?.label ?? null;

  return { root, setModel, show, labelOf };
}
