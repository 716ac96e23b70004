// Layer list: every probe-able layer in network order, indented by dotted depth,
// with a filter box, shape and receptive field. A listbox: click, or ↑/↓ when focused.
// The tree opens on the network's main stages (as many levels as fit about 30 rows);
// a stage's ▸ shows its parts, "expand all" the whole tree; a filter lists matches flat.

import { isPassThrough } from "../layermeta.js";
import { $, h, scrollWithin, showError } from "../util.js";

const MAIN_ROWS = 30; // the opening tree shows whole levels while they fit this many rows

export const depthOf = (name) => (name.match(/\./g) || []).length;
export { isPassThrough };
const isConv = (layer) => /conv/i.test(layer.kind);
const isAct = (layer) => /relu|act|gelu|silu|swish|sigmoid|tanh|hardtanh/i.test(layer.kind);

export function shapeText(layer) {
  return `${layer.channels}×${layer.height}×${layer.width}`;
}

export function rfText(layer, { long = false } = {}) {
  const field = layer.receptive_field || {};
  const size = Math.round(field.size ?? 0);
  const stride = Math.round(field.stride ?? 0);
  return long ? `receptive field ${size} px, stride ${stride}` : `rf ${size}/${stride}`;
}

/**
 * A useful first layer: mid-depth, where the paper's Fig. 2 gets interesting.
 * Among layers that compute something (not pass-through), with at least 2
 * channels and a spatial map, take those whose map side is closest to S/16
 * (conv4/conv5 territory: 13-14 px on a 224 input), prefer the shallowest
 * naming depth (whole blocks over their internals), then one whose receptive
 * field fits the input, then the last in order.
 */
export function defaultLayer(layers, inputSize = 224) {
  const candidates = layers.filter((l) => !isPassThrough(l) && l.channels > 1 && l.height > 1 && l.width > 1);
  if (!candidates.length) return layers.length ? layers[Math.floor(layers.length / 2)].name : null;
  const target = inputSize / 16;
  const distance = (l) => Math.abs(Math.log(l.height / target));
  const best = Math.min(...candidates.map(distance));
  const near = candidates.filter((l) => distance(l) - best < 1e-9);
  const shallowest = Math.min(...near.map((l) => depthOf(l.name)));
  const pick = near.filter((l) => depthOf(l.name) === shallowest);
  // prefer a field that still fits the input, so the patch beside the projection means something
  const framed = pick.filter((l) => (l.receptive_field?.size ?? Infinity) <= inputSize);
  return (framed.length ? framed : pick)[(framed.length ? framed : pick).length - 1].name;
}

/** The Layers panel as a view (see tabs.js): ctx is { store }. */
export function createView({ root, ctx }) {
  const { store } = ctx;
  const list = $('[data-role="layer-list"]', root);
  const filterInput = $('[data-role="layer-filter"]', root);
  const hideBox = $('[data-role="layer-hide-passthrough"]', root);
  const countLabel = $('[data-role="layers-count"]', root);
  const errorBox = $('[data-role="layers-error"]', root);

  let layers = [];
  let items = new Map(); // name -> li
  let visible = []; // names in display order
  let matched = []; // names that match the filter (visible minus the forced selected one)
  let active = null; // the keyboard cursor (aria-activedescendant)
  let parents = new Map(); // name -> nearest listed ancestor (or null)
  let withChildren = new Set(); // names with listed parts
  let levels = new Map(); // name -> depth in the listed tree
  let expanded = new Set(); // names whose parts are shown
  let expandAll = false;
  const expandButton = $('[data-role="layer-expand-all"]', root);

  /** The nearest listed ancestor of each layer, and which layers have listed parts. */
  function buildTree() {
    const names = new Set(layers.map((l) => l.name));
    parents = new Map();
    withChildren = new Set();
    for (const layer of layers) {
      let name = layer.name;
      let parent = null;
      while (name.includes(".")) {
        name = name.slice(0, name.lastIndexOf("."));
        if (names.has(name)) {
          parent = name;
          break;
        }
      }
      parents.set(layer.name, parent);
      if (parent) withChildren.add(parent);
    }
    // open whole levels while they fit MAIN_ROWS rows (at least the top level)
    const level = (l) => {
      let d = 0;
      for (let p = parents.get(l.name); p; p = parents.get(p)) d++;
      return d;
    };
    levels = new Map(layers.map((l) => [l.name, level(l)]));
    let open = 0;
    const deepest = Math.max(0, ...levels.values());
    while (open < deepest && layers.filter((l) => levels.get(l.name) <= open + 1).length <= MAIN_ROWS) open++;
    expanded = new Set(layers.filter((l) => levels.get(l.name) < open && withChildren.has(l.name)).map((l) => l.name));
  }

  function shownInTree(name) {
    if (expandAll) return true;
    for (let p = parents.get(name); p; p = parents.get(p)) if (!expanded.has(p)) return false;
    return true;
  }

  function toggle(name, open = !expanded.has(name)) {
    if (open) expanded.add(name);
    else expanded.delete(name);
    const li = items.get(name);
    li?.querySelector(".twisty")?.setAttribute("aria-expanded", String(open));
    li?.classList.toggle("is-open", open);
    applyFilter();
  }

  function render(newLayers) {
    layers = newLayers;
    items = new Map();
    buildTree();
    const nodes = layers.map((layer, index) => {
      const depth = depthOf(layer.name);
      const dot = layer.name.lastIndexOf(".");
      const prefix = dot >= 0 ? layer.name.slice(0, dot + 1) : "";
      const leaf = dot >= 0 ? layer.name.slice(dot + 1) : layer.name;
      const numericLeaf = /^\d+$/.test(leaf);
      const li = h(
        "li",
        {
          id: `layer-opt-${index}`,
          role: "option",
          "aria-selected": "false",
          dataset: { layer: layer.name, depth: String(depth) },
          class: [isConv(layer) ? "is-conv" : "", isAct(layer) ? "is-act" : ""].join(" ").trim() || null,
          style: { "--depth": String(Math.min(depth, 8)) },
          title: `${layer.name} · ${layer.kind} · ${shapeText(layer)} · ${rfText(layer, { long: true })}`,
          "aria-label": `${layer.name}, ${layer.kind}, ${layer.channels} channels, ${layer.height} by ${layer.width}, ${rfText(layer, { long: true })}`,
        },
        h(
          "span",
          { class: "lname" },
          h(
            "span",
            { class: "lhead" },
            withChildren.has(layer.name)
            ? h("button", {
                type: "button",
                class: "twisty",
                tabindex: "-1",
                "aria-expanded": String(expanded.has(layer.name)),
                "aria-label": `Show the parts of ${layer.name}`,
                title: `Show or hide the parts of ${layer.name}`,
                onclick: (event) => {
                  event.stopPropagation();
                  toggle(layer.name);
                },
              })
            : h("span", { class: "twisty-space", "aria-hidden": "true" }),
            h("span", { class: "lprefix" }, prefix),
            h("b", {}, leaf),
          ),
          numericLeaf || depth === 0 ? h("span", { class: "kind" }, layer.kind) : null,
        ),
        h("span", { class: "lshape" }, `${layer.channels}×${layer.height === layer.width ? `${layer.height}²` : `${layer.height}×${layer.width}`}`),
        h("span", { class: "lrf" }, String(Math.round(layer.receptive_field?.size ?? 0))),
      );
      li.addEventListener("click", () => choose(layer.name));
      items.set(layer.name, li);
      return li;
    });
    list.replaceChildren(...nodes);
    applyFilter();
    sync(store.get());
  }

  function matches(layer, tokens) {
    if (!tokens.length) return true;
    const hay = `${layer.name} ${layer.kind}`.toLowerCase();
    return tokens.every((t) => hay.includes(t));
  }

  function applyFilter() {
    const tokens = filterInput.value.toLowerCase().split(/\s+/).filter(Boolean);
    list.classList.toggle("flat", tokens.length > 0);
    const hide = hideBox.checked;
    const selected = store.get().layer;
    visible = [];
    matched = [];
    for (const layer of layers) {
      const match = matches(layer, tokens) && !(hide && isPassThrough(layer));
      const show = (match && (tokens.length > 0 || shownInTree(layer.name))) || layer.name === selected;
      items.get(layer.name).hidden = !show;
      if (show) visible.push(layer.name);
      if (match) matched.push(layer.name);
    }
    countLabel.textContent = visible.length === layers.length ? `${layers.length}` : `${visible.length} of ${layers.length}`;
    countLabel.title = `${visible.length} rows shown of the model's ${layers.length} layers`;
    let empty = list.querySelector(".layer-empty");
    if (!visible.length) {
      if (!empty) list.append((empty = h("li", { class: "layer-empty", role: "presentation" }, "No layer matches the filter.")));
    } else if (empty) {
      empty.remove();
    }
  }

  function setActive(name, { scroll = true } = {}) {
    if (active && items.get(active)) items.get(active).classList.remove("is-active-descendant");
    active = name;
    const li = name ? items.get(name) : null;
    if (li) {
      li.classList.add("is-active-descendant");
      list.setAttribute("aria-activedescendant", li.id);
      if (scroll) scrollWithin(list, li);
    } else {
      list.removeAttribute("aria-activedescendant");
    }
  }

  function choose(name) {
    if (!name) return;
    setActive(name);
    if (name !== store.get().layer) store.set({ layer: name, channel: null, unit: null });
  }

  function sync(state) {
    for (const [name, li] of items) li.setAttribute("aria-selected", String(name === state.layer));
    if (state.layer && items.has(state.layer)) {
      // the selected layer's stages open, so that it sits in its place in the tree
      let opened = false;
      for (let p = parents.get(state.layer); p; p = parents.get(p)) {
        if (!expanded.has(p)) {
          expanded.add(p);
          items.get(p)?.querySelector(".twisty")?.setAttribute("aria-expanded", "true");
          opened = true;
        }
      }
      if (opened || items.get(state.layer).hidden) applyFilter();
    }
    if (state.layer) setActive(state.layer);
  }

  /** Move the selection by `delta` within the visible list (used by [ and ] too). */
  function step(delta) {
    if (!visible.length) return;
    const from = visible.indexOf(active ?? store.get().layer);
    const to = from < 0 ? (delta > 0 ? 0 : visible.length - 1) : Math.min(visible.length - 1, Math.max(0, from + delta));
    choose(visible[to]);
  }

  list.addEventListener("keydown", (event) => {
    const page = Math.max(1, Math.floor(list.clientHeight / 22) - 1);
    const moves = { ArrowDown: 1, ArrowUp: -1, PageDown: page, PageUp: -page };
    const at = active ?? store.get().layer;
    if (event.key in moves) step(moves[event.key]);
    else if ((event.key === "ArrowRight" || event.key === "ArrowLeft") && withChildren.has(at)) toggle(at, event.key === "ArrowRight");
    else if (event.key === "Home") choose(visible[0]);
    else if (event.key === "End") choose(visible[visible.length - 1]);
    else return;
    event.preventDefault();
    event.stopPropagation();
  });

  /** Re-filter, then bring the selected layer back into the list's view. */
  function refilter() {
    applyFilter();
    const li = items.get(store.get().layer);
    if (li && !li.hidden) scrollWithin(list, li);
  }

  filterInput.addEventListener("input", () => refilter());
  expandButton?.addEventListener("click", () => {
    expandAll = !expandAll;
    expandButton.setAttribute("aria-pressed", String(expandAll));
    expandButton.textContent = expandAll ? "main stages" : "expand all";
    refilter();
  });
  filterInput.addEventListener("keydown", (event) => {
    if (event.key === "ArrowDown" || event.key === "Enter") {
      event.preventDefault();
      // Enter takes the first match; ↓ just moves into the list
      if (event.key === "Enter" && matched.length) choose(matched[0]);
      list.focus();
    } else if (event.key === "Escape") {
      filterInput.value = "";
      refilter();
      list.focus();
    }
  });
  hideBox.addEventListener("change", () => refilter());

  return {
    render,
    update: sync,
    step,
    focusFilter: () => {
      filterInput.focus();
      filterInput.select();
    },
    layer: (name) => layers.find((l) => l.name === name) || null,
    get layers() {
      return layers;
    },
    showError: (message) => showError(errorBox, message),
  };
}
