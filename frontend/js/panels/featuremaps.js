// Feature-map grid: every channel of the chosen layer, drawn from the one
// activations sprite (grayscale, row-major by channel, scaled by the layer max),
// recoloured on a canvas with a perceptual colour map and sliced with CSS
// background-position. Sort by strongest activation, total, or index.

import { api, isAbort, request, urls } from "../api.js";
import { COLORMAPS, DIVERGING, applyColormap, gradientCss } from "../colormap.js";
import { $, busy, fmt, h, scrollWithin, showError } from "../util.js";

const PREFS_KEY = "convscope.maps";
const CACHE_SIZE = 10;
const GAP = 3;

function loadPrefs() {
  try {
    return { sort: "max", cmap: COLORMAPS[0], zoom: 0, scale: "layer", ...JSON.parse(localStorage.getItem(PREFS_KEY) || "{}") };
  } catch {
    return { sort: "max", cmap: COLORMAPS[0], zoom: 0, scale: "layer" };
  }
}

/** The Feature-maps panel as a view (see tabs.js): ctx is { store, tooltip }. */
export function createView({ root, ctx }) {
  const { store, tooltip } = ctx;
  const grid = $('[data-role="tile-grid"]', root);
  const scroller = $(".tile-scroll", root);
  const errorBox = $('[data-role="maps-error"]', root);
  const hoverLine = $('[data-role="maps-hover"]', root);
  const summary = $('[data-role="layer-summary"]', root);
  const sortSelect = $('[data-role="maps-sort"]', root);
  const cmapSelect = $('[data-role="maps-cmap"]', root);
  const scaleSelect = $('[data-role="maps-scale"]', root);
  const legendBar = $('[data-role="maps-legend-bar"]', root);
  const legendMax = $('[data-role="maps-legend-max"]', root);
  const legendMin = $('[data-role="maps-legend-min"]', root);
  const legend = $('[data-role="maps-legend"]', root);

  const prefs = loadPrefs();
  const savePrefs = () => {
    try {
      localStorage.setItem(PREFS_KEY, JSON.stringify(prefs));
    } catch {
      /* private mode: preferences just don't persist */
    }
  };
  if (!COLORMAPS.includes(prefs.cmap)) prefs.cmap = COLORMAPS[0];
  cmapSelect.replaceChildren(...COLORMAPS.map((name) => h("option", { value: name }, name)));
  cmapSelect.value = prefs.cmap;
  sortSelect.value = prefs.sort;
  if (!["layer", "map"].includes(prefs.scale)) prefs.scale = "layer";
  scaleSelect.value = prefs.scale;

  const cache = new Map(); // key -> entry {key, data, gray: canvas, colored: {cmap, url}}
  let current = null; // the entry on screen
  let order = []; // channel indices in display order
  let tiles = []; // tile element per channel
  let generation = 0;
  const listeners = new Set();

  const keyOf = (state) => `${state.model}|${state.image}|${state.layer}`;

  // ---- loading -------------------------------------------------------------------
  async function fetchEntry(state) {
    const data = await api.activations(state.model, state.image, state.layer, { slot: "activations" });
    // a layer with negative values gets the signed sprite and a diverging colour map
    const peak = Math.max(0, ...data.max);
    const signed = Array.isArray(data.min) && Math.min(...data.min) < -1e-6 * Math.max(peak, 1e-12);
    const { blob } = await request(urls.sprite(data.sprite.url, signed), { slot: "sprite", as: "blob" });
    const bitmap = await createImageBitmap(blob);
    const gray = document.createElement("canvas");
    gray.width = bitmap.width;
    gray.height = bitmap.height;
    gray.getContext("2d", { willReadFrequently: true }).drawImage(bitmap, 0, 0);
    bitmap.close?.();
    const bound = signed ? Math.max(peak, -Math.min(...data.min)) : peak;
    return { key: keyOf(state), data, gray, colored: null, signed, bound };
  }

  const cmapOf = (entry) => (entry?.signed ? DIVERGING : prefs.cmap);

  async function colorise(entry) {
    const look = `${cmapOf(entry)}/${prefs.scale}`;
    if (entry.colored && entry.colored.look === look) return entry.colored.url;
    const ctx = entry.gray.getContext("2d", { willReadFrequently: true });
    const pixels = ctx.getImageData(0, 0, entry.gray.width, entry.gray.height);
    if (prefs.scale === "map") normalisePerMap(pixels, entry);
    applyColormap(pixels, cmapOf(entry));
    const out = document.createElement("canvas");
    out.width = entry.gray.width;
    out.height = entry.gray.height;
    out.getContext("2d").putImageData(pixels, 0, 0);
    const blob = await new Promise((resolve) => out.toBlob(resolve, "image/png"));
    if (entry.colored) URL.revokeObjectURL(entry.colored.url);
    entry.colored = { look, url: URL.createObjectURL(blob) };
    return entry.colored.url;
  }

  /** The sprite is scaled by the layer max; give every tile its own 0..max range (±max when signed) instead. */
  function normalisePerMap(pixels, entry) {
    const { data, signed, bound } = entry;
    const { columns, tile } = data.sprite;
    const own = data.max.map((m, c) => (signed ? Math.max(m, -data.min[c]) : m));
    const gains = own.map((m) => (m > 0 && bound > 0 ? bound / m : 1));
    const zero = signed ? 127.5 : 0;
    const px = pixels.data;
    const width = pixels.width;
    for (let y = 0; y < pixels.height; y++) {
      const rowBase = Math.floor(y / tile) * columns;
      for (let x = 0; x < width; x++) {
        const gain = gains[rowBase + Math.floor(x / tile)] ?? 1;
        const i = (y * width + x) * 4;
        const v = Math.max(0, Math.min(255, Math.round(zero + (px[i] - zero) * gain)));
        px[i] = px[i + 1] = px[i + 2] = v;
      }
    }
  }

  function remember(entry) {
    cache.delete(entry.key);
    cache.set(entry.key, entry);
    while (cache.size > CACHE_SIZE) {
      const [oldKey, old] = cache.entries().next().value;
      if (old === current) {
        cache.delete(oldKey);
        cache.set(oldKey, old);
        continue;
      }
      if (old.colored) URL.revokeObjectURL(old.colored.url);
      cache.delete(oldKey);
    }
  }

  /** Load (or reuse) the activations of state's layer; resolves with the data, or null when superseded. */
  async function load(state, layerInfo) {
    const mine = ++generation;
    showError(errorBox, "");
    summary.replaceChildren(...summaryNodes(state.layer, layerInfo));
    const key = keyOf(state);
    grid.classList.add("is-stale");
    try {
      let entry = cache.get(key);
      if (!entry) {
        entry = await busy(root, fetchEntry(state));
        if (mine !== generation) return null;
        remember(entry);
      }
      const url = await colorise(entry);
      if (mine !== generation) return null;
      current = entry;
      draw(url);
      grid.classList.remove("is-stale");
      for (const listener of listeners) listener(entry.data);
      return entry.data;
    } catch (error) {
      if (isAbort(error) || mine !== generation) return null;
      current = null;
      grid.replaceChildren();
      tiles = [];
      order = [];
      grid.classList.remove("is-stale");
      showError(errorBox, `Feature maps unavailable: ${error.message}`);
      return null;
    }
  }

  function summaryNodes(name, info) {
    if (!info) return [h("b", {}, name || "")];
    const field = info.receptive_field || {};
    return [
      h("b", {}, name),
      ` · ${info.kind} · ${info.channels}×${info.height}×${info.width} · rf ${Math.round(field.size)}px/${Math.round(field.stride)}`,
    ];
  }

  // ---- drawing ---------------------------------------------------------------------
  function tileSize(channels, tile) {
    const width = Math.max(120, scroller.clientWidth - 8);
    const height = Math.max(160, scroller.clientHeight - 8);
    // the largest tile with which every map fits the visible area (at least 18 px: then scroll)
    const fits = (s) => {
      const columns = Math.max(1, Math.floor((width + GAP) / (s + GAP)));
      return Math.ceil(channels / columns) * (s + GAP) <= height;
    };
    let side = 132;
    while (side > 18 && !fits(side)) side -= 1;
    // whole multiples of the sprite tile keep nearest-neighbour pixels even
    if (side > tile) {
      const snapped = Math.floor(side / tile) * tile;
      if (snapped >= side * 0.85) side = snapped;
    }
    side = Math.round(side * 1.25 ** prefs.zoom);
    return Math.max(10, Math.min(side, 320));
  }

  function draw(url) {
    const data = current.data;
    const { columns, rows, tile } = data.sprite;
    const side = tileSize(data.channels, tile);
    grid.style.setProperty("--tile", `${side}px`);
    grid.classList.toggle("smooth", side < tile);
    grid.classList.toggle("labels", side >= 44 && data.channels <= 64);
    const peak = Math.max(0, ...data.max);
    tiles = new Array(data.channels);
    for (let c = 0; c < data.channels; c++) {
      const row = Math.floor(c / columns);
      const col = c % columns;
      const dead = !(data.max[c] > 0);
      const tileEl = h(
        "button",
        {
          type: "button",
          class: dead ? "tile is-dead" : "tile",
          role: "option",
          tabindex: "-1",
          "aria-selected": "false",
          dataset: { channel: String(c) },
          "aria-label": `Channel ${c}: max ${fmt(data.max[c])}, sum ${fmt(data.sum[c])}`,
          style: {
            backgroundImage: `url("${url}")`,
            backgroundSize: `${columns * side}px ${rows * side}px`,
            backgroundPosition: `${-col * side}px ${-row * side}px`,
          },
        },
        h("span", { class: "tnum", "aria-hidden": "true" }, String(c)),
      );
      tiles[c] = tileEl;
    }
    sortTiles();
    legendBar.style.background = gradientCss(cmapOf(current));
    legend.dataset.signed = String(Boolean(current.signed));
    cmapSelect.disabled = Boolean(current.signed); // a signed layer always gets the diverging map
    cmapSelect.title = current.signed ? "This layer has negative values: its maps use a diverging colour map" : "Colour map (c)";
    legendMin.textContent = current.signed ? (prefs.scale === "map" ? "−each" : `−${fmt(current.bound)}`) : "0";
    legendMax.textContent = prefs.scale === "map" ? (current.signed ? "+each" : "each max") : `${current.signed ? "+" : ""}${fmt(current.bound)}`;
    legend.title = current.signed
      ? "This layer has negative values: blue below zero, amber above, dark at zero (a diverging colour map)"
      : "0 to the layer's largest activation";
    if (!grid.matches(":hover")) hideHover();
    sync(store.get(), { scroll: true });
  }

  function sortTiles() {
    if (!current) return;
    const { max, sum, channels } = current.data;
    order = Array.from({ length: channels }, (_, i) => i);
    if (prefs.sort === "max") order.sort((a, b) => max[b] - max[a] || a - b);
    else if (prefs.sort === "sum") order.sort((a, b) => sum[b] - sum[a] || a - b);
    grid.replaceChildren(...order.map((c) => tiles[c]));
  }

  function sync(state, { scroll = true } = {}) {
    if (!current || current.key !== keyOf(state)) return;
    for (const el of grid.querySelectorAll('.tile[aria-selected="true"]')) {
      el.setAttribute("aria-selected", "false");
      el.tabIndex = -1;
    }
    const el = state.channel !== null ? tiles[state.channel] : null;
    if (el) {
      el.setAttribute("aria-selected", "true");
      el.tabIndex = 0;
      if (scroll) scrollWithin(scroller, el);
    } else if (tiles[order[0]]) {
      tiles[order[0]].tabIndex = 0;
    }
  }

  // ---- hover -----------------------------------------------------------------------------
  function describe(c) {
    const d = current.data;
    const rank = order.indexOf(c) + 1;
    const [y, x] = d.argmax?.[c] ?? [null, null];
    return { c, max: d.max[c], sum: d.sum[c], rank, y, x, channels: d.channels };
  }

  function showHover(el) {
    if (!current) return;
    const info = describe(Number(el.dataset.channel));
    const where = info.y !== null ? ` at (y ${info.y}, x ${info.x})` : "";
    hoverLine.innerHTML = "";
    hoverLine.append(
      h("b", {}, `channel ${info.c}`),
      ` · max ${fmt(info.max)}${where} · sum ${fmt(info.sum)} · #${info.rank} of ${info.channels} by ${prefs.sort === "index" ? "index" : prefs.sort}`,
    );
    tooltip.replaceChildren(
      h("b", {}, `ch ${info.c}`),
      h("span", { class: "t-muted" }, "  max "),
      fmt(info.max),
      h("span", { class: "t-muted" }, "  sum "),
      fmt(info.sum),
    );
    tooltip.hidden = false;
    const box = el.getBoundingClientRect();
    const tw = tooltip.offsetWidth;
    let left = box.left + box.width / 2 - tw / 2;
    left = Math.max(6, Math.min(left, window.innerWidth - tw - 6));
    let top = box.top - tooltip.offsetHeight - 6;
    if (top < 50) top = box.bottom + 6;
    tooltip.style.left = `${left}px`;
    tooltip.style.top = `${top}px`;
  }

  function hideHover() {
    tooltip.hidden = true;
    hoverLine.textContent = current ? "Hover a map for its numbers · click it, or ← →, to project it" : "";
  }

  grid.addEventListener("mouseover", (event) => {
    const el = event.target.closest(".tile");
    if (el) showHover(el);
  });
  grid.addEventListener("mouseleave", hideHover);
  grid.addEventListener("focusin", (event) => {
    const el = event.target.closest(".tile");
    if (el && el.matches(":focus-visible")) showHover(el);
  });
  grid.addEventListener("focusout", () => (tooltip.hidden = true));
  scroller.addEventListener("scroll", () => (tooltip.hidden = true), { passive: true });
  // a tooltip never stays pinned: the page scrolling, or a tap anywhere but a tile, dismisses it
  window.addEventListener("scroll", () => (tooltip.hidden = true), { passive: true, capture: true });
  document.addEventListener("pointerdown", (event) => {
    if (!event.target.closest?.(".tile")) tooltip.hidden = true;
  });
  grid.addEventListener("click", (event) => {
    const el = event.target.closest(".tile");
    if (!el) return;
    store.set({ channel: Number(el.dataset.channel) });
    el.focus({ preventScroll: true });
    root.dispatchEvent(new CustomEvent("map-picked", { bubbles: true })); // main.js: keep the reconstruction in view
  });

  // ---- navigation ---------------------------------------------------------------------------
  function columnsNow() {
    const first = grid.firstElementChild;
    if (!first) return 1;
    const side = first.getBoundingClientRect().width + GAP;
    return Math.max(1, Math.floor((grid.clientWidth + GAP) / side));
  }

  /** The channel `delta` places away in display order (rows: delta × columns). */
  function neighbour(channel, delta, { rows = false } = {}) {
    if (!order.length) return null;
    const at = order.indexOf(channel);
    if (at < 0) return order[0];
    const step = rows ? delta * columnsNow() : delta;
    const to = at + step;
    if (to < 0 || to >= order.length) return rows ? channel : order[Math.max(0, Math.min(order.length - 1, to))];
    return order[to];
  }

  function move(delta, opts = {}) {
    const state = store.get();
    const next = state.channel === null ? order[0] : neighbour(state.channel, delta, opts);
    if (next === null || next === undefined) return;
    const hadFocus = document.activeElement?.classList?.contains("tile");
    store.set({ channel: next });
    if (hadFocus) tiles[next]?.focus({ preventScroll: true });
  }

  function jump(where) {
    if (!order.length) return;
    store.set({ channel: where === "first" ? order[0] : order[order.length - 1] });
  }

  // ---- preferences --------------------------------------------------------------------------------
  function setSort(sort) {
    prefs.sort = sort;
    sortSelect.value = sort;
    savePrefs();
    sortTiles();
    sync(store.get());
  }

  async function setCmap(name) {
    prefs.cmap = name;
    cmapSelect.value = name;
    savePrefs();
    if (current) draw(await colorise(current));
    for (const listener of listeners) listener(current?.data ?? null);
  }

  async function setScale(scale) {
    prefs.scale = scale;
    scaleSelect.value = scale;
    savePrefs();
    if (current) draw(await colorise(current));
  }

  function zoom(step) {
    prefs.zoom = Math.max(-4, Math.min(5, prefs.zoom + step));
    savePrefs();
    if (current?.colored) draw(current.colored.url);
  }

  sortSelect.addEventListener("change", () => setSort(sortSelect.value));
  scaleSelect.addEventListener("change", () => setScale(scaleSelect.value));
  cmapSelect.addEventListener("change", () => setCmap(cmapSelect.value));
  $('[data-role="maps-zoom-in"]', root).addEventListener("click", () => zoom(1));
  $('[data-role="maps-zoom-out"]', root).addEventListener("click", () => zoom(-1));
  let resizeTimer = null;
  new ResizeObserver(() => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => current?.colored && draw(current.colored.url), 120);
  }).observe(scroller);

  /** A canvas of one channel's map in the current colour map, alpha from the value (for overlays). */
  function channelCanvas(channel, { alpha = true, ownScale = true } = {}) {
    if (!current || channel === null || channel >= current.data.channels) return null;
    const { columns, tile } = current.data.sprite;
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = tile;
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(current.gray, (channel % columns) * tile, Math.floor(channel / columns) * tile, tile, tile, 0, 0, tile, tile);
    const pixels = ctx.getImageData(0, 0, tile, tile);
    const { signed, bound } = current;
    const own = signed ? Math.max(current.data.max[channel], -current.data.min[channel]) : current.data.max[channel];
    if (ownScale && own > 0 && bound > 0) {
      const gain = bound / own;
      const zero = signed ? 127.5 : 0;
      for (let i = 0; i < pixels.data.length; i += 4) {
        pixels.data[i] = Math.max(0, Math.min(255, Math.round(zero + (pixels.data[i] - zero) * gain)));
      }
    }
    applyColormap(pixels, cmapOf(current), { alphaFromValue: alpha });
    ctx.putImageData(pixels, 0, 0);
    return canvas;
  }

  return {
    load,
    update: (state) => sync(state, { scroll: true }),
    move,
    jump,
    setSort,
    cycleSort: () => setSort({ max: "sum", sum: "index", index: "max" }[prefs.sort] || "max"),
    toggleScale: () => setScale(prefs.scale === "layer" ? "map" : "layer"),
    cycleCmap: () => setCmap(COLORMAPS[(COLORMAPS.indexOf(prefs.cmap) + 1) % COLORMAPS.length]),
    zoom,
    channelCanvas,
    neighbour,
    onData: (fn) => listeners.add(fn),
    /** The activations on screen when they belong to `state`, else null. */
    dataFor: (state) => (current && current.key === keyOf(state) ? current.data : null),
    clear() {
      generation++;
      current = null;
      grid.replaceChildren();
      tiles = [];
      order = [];
    },
    showError: (message) => showError(errorBox, message),
  };
}
