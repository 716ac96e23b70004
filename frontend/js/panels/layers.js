// Layer list: every probe-able layer in network order, indented by dotted depth,
// with a filter box, shape and receptive field. A listbox: click, or ↑/↓ when focused.

import { $, h, showError } from "../util.js";

const PASS_THROUGH = /^(Identity|Dropout\d?d?|DropPath|Flatten)$/;

export const depthOf = (name) => (name.match(/\./g) || []).length;
export const isPassThrough = (layer) => PASS_THROUGH.test(layer.kind);
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

export function createLayersPanel({ root, store }) {
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

  function render(newLayers) {
    layers = newLayers;
    items = new Map();
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
          h("span", { class: "lprefix" }, prefix),
          h("b", {}, leaf),
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
      const show = match || layer.name === selected;
      items.get(layer.name).hidden = !show;
      if (show) visible.push(layer.name);
      if (match) matched.push(layer.name);
    }
    countLabel.textContent = visible.length === layers.length ? `${layers.length}` : `${visible.length} of ${layers.length}`;
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
      if (scroll) li.scrollIntoView({ block: "nearest" });
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
    if (state.layer && items.get(state.layer)?.hidden) applyFilter();
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
    if (event.key in moves) step(moves[event.key]);
    else if (event.key === "Home") choose(visible[0]);
    else if (event.key === "End") choose(visible[visible.length - 1]);
    else return;
    event.preventDefault();
    event.stopPropagation();
  });

  filterInput.addEventListener("input", () => applyFilter());
  filterInput.addEventListener("keydown", (event) => {
    if (event.key === "ArrowDown" || event.key === "Enter") {
      event.preventDefault();
      // Enter takes the first match; ↓ just moves into the list
      if (event.key === "Enter" && matched.length) choose(matched[0]);
      list.focus();
    } else if (event.key === "Escape") {
      filterInput.value = "";
      applyFilter();
      list.focus();
    }
  });
  hideBox.addEventListener("change", () => applyFilter());

  return {
    render,
    sync,
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
