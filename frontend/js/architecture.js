// Architecture view (paper Fig. 6): the first layer's filters, their frequency
// coverage, and dead channels in every convolution.
//
// GET /api/models/{m}/filters gives a conv layer's shape and the share of each
// filter's spectral energy in low / mid / high frequency bands (with what white
// noise would give); .../filters/mosaic.png the filters as tiles, each contrast-
// normalised on its own as in the paper. POST .../analyses/dead-channels counts,
// as a job, the channels never positive over the sample photos.

import { injectStyle, panel, svg } from "./util.js";
import { startJob } from "./jobs.js";

const BAND_COLOURS = ["#3ee0ff", "#f0b43c", "#ff7a6b"]; // low, mid, high

const CSS = `
.arch { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: var(--gap); align-items: start; }
.arch .panel { gap: 8px; }
.arch-wide { grid-column: 1 / -1; }
.arch-tools { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; color: var(--muted); }
.arch-tools select { max-width: 260px; padding: 3px 6px; background: var(--panel-2); border: 1px solid var(--line-strong); border-radius: 6px; }
.arch-mosaic { display: flex; gap: 14px; align-items: flex-start; flex-wrap: wrap; }
.arch-mosaic img { image-rendering: pixelated; max-width: 100%; border-radius: 4px; background: #fff; cursor: crosshair; }
.arch-facts { margin: 0; display: grid; grid-template-columns: auto auto; gap: 2px 12px; font-size: 12px; }
.arch-facts dt { color: var(--muted); }
.arch-facts dd { margin: 0; font-family: var(--mono); }
.arch-bands svg { width: 100%; height: auto; display: block; background: var(--panel-2); border-radius: 6px; }
.arch-bands svg text { fill: var(--faint); font: 10px var(--mono); }
.arch-legend { display: flex; gap: 12px; font-size: 12px; color: var(--muted); margin: 0; padding: 0; list-style: none; }
.arch-legend i { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 5px; vertical-align: -1px; }
.arch-readout { font-size: 12px; color: var(--muted); min-height: 1.4em; font-family: var(--mono); }
.arch-run { display: flex; gap: 8px; align-items: center; }
.arch-run progress { flex: 1; height: 6px; accent-color: var(--accent); max-width: 240px; }
.arch-dead { width: 100%; border-collapse: collapse; font-size: 12px; }
.arch-dead th, .arch-dead td { padding: 3px 6px; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
.arch-dead th:nth-child(-n+2), .arch-dead td:nth-child(-n+2) { text-align: left; }
.arch-dead th { color: var(--muted); font-weight: 500; position: sticky; top: 0; background: var(--panel); }
.arch-dead td { font-family: var(--mono); }
.arch-dead tr.linear td { color: var(--faint); }
.arch-dead .bar { display: inline-block; height: 8px; background: var(--error); border-radius: 2px; vertical-align: middle; }
.arch-scroll { max-height: 420px; overflow: auto; }
.arch-note { color: var(--faint); font-size: 11.5px; margin: 0; line-height: 1.45; }
@media (max-width: 1100px) { .arch { grid-template-columns: 1fr; } }
`;

let ctx = null;
let root = null;
let filters = null; // GET .../filters answer
let dead = null; // dead-channel job result
let deadModel = null;
let running = null;
const el = {};

const model = () => ctx.store.get().model;

// ---- layout ---------------------------------------------------------------------------------------------
function build() {
  const { h } = ctx;
  el.layer = h("select", { "aria-label": "Convolution layer", dataset: { role: "arch-layer" }, onchange: () => loadFilters(el.layer.value) });
  el.mosaic = h("img", { alt: "The layer's filters, each contrast-normalised", dataset: { role: "arch-mosaic" }, hidden: true });
  el.facts = h("dl", { class: "arch-facts", dataset: { role: "arch-facts" } });
  el.bands = h("div", { class: "arch-bands", dataset: { role: "arch-bands" } });
  el.readout = h("div", { class: "arch-readout", dataset: { role: "arch-readout" }, "aria-live": "polite" });
  el.filtersError = h("div", { class: "error", role: "alert", hidden: true, dataset: { role: "arch-error" } });
  el.run = h("button", { type: "button", class: "btn", onclick: runDead, dataset: { role: "arch-dead-run" } }, "Count again");
  el.progress = h("progress", { max: 1, value: 0, hidden: true, "aria-label": "Progress" });
  el.onlyDead = h("input", { type: "checkbox", checked: true, onchange: renderDead, dataset: { role: "arch-only-dead" } });
  el.deadSummary = h("div", { dataset: { role: "arch-dead-summary" } });
  el.deadTable = h("div", { class: "arch-scroll", dataset: { role: "arch-dead" } });
  el.deadError = h("div", { class: "error", role: "alert", hidden: true, dataset: { role: "arch-dead-error" } });

  const mosaicPanel = panel(
    { id: "arch-filters-title", title: "Filters · Fig. 6" },
    [
      h("div", { class: "panel-tools arch-tools" }, el.layer),
    ],
    h("div", { class: "arch-mosaic" }, el.mosaic, el.facts),
    el.readout,
    el.filtersError,
    h("p", { class: "arch-note" }, "Each filter is scaled to the full 0–255 range on its own (as in the paper), so weak and strong filters are equally visible; hover a tile for its frequency shares."),
  );
  const bandsPanel = panel(
    { id: "arch-bands-title", title: "Frequency coverage" },
    [
      h("ul", { class: "arch-legend" }, ...["low", "mid", "high"].map((b, i) => h("li", {}, h("i", { style: { background: BAND_COLOURS[i] } }), b))),
    ],
    el.bands,
    h(
      "p",
      { class: "arch-note" },
      "Share of each filter's spectral energy |H(f)|² (kernel zero-padded to 64×64) in rings of radial frequency: low below 1/3 of Nyquist ",
      "(with DC), mid 1/3–2/3, high above. Columns are filters, by index; the right-hand bars compare the layer's mean with white noise. ",
      "The paper saw a large stride leave extreme frequencies and little mid-frequency coverage.",
    ),
  );
  const deadPanel = panel(
    { id: "arch-dead-title", title: "Dead channels", className: "arch-wide" },
    [
      h("div", { class: "panel-tools arch-tools" }, h("label", { class: "check" }, el.onlyDead, h("span", {}, "only layers with dead channels"))),
    ],
    h("div", { class: "arch-run" }, el.run, el.progress, el.deadSummary),
    el.deadError,
    el.deadTable,
    h(
      "p",
      { class: "arch-note" },
      "A channel is dead when it is never positive over the sample photos. Each convolution is measured after the ReLU-like layer that follows it; ",
      "grey rows have none (a linear bottleneck) and are measured at the convolution's own output.",
    ),
  );
  root.replaceChildren(h("div", { class: "arch" }, mosaicPanel, bandsPanel, deadPanel));
  el.mosaic.addEventListener("mousemove", onMosaicHover);
  el.mosaic.addEventListener("mouseleave", () => (el.readout.textContent = ""));
}

// ---- filters -----------------------------------------------------------------------------------------------
function renderLayerChoices() {
  const convs = (ctx.layers() || []).filter((l) => l.kind === "Conv2d");
  const keep = filters?.layer || el.layer.value;
  el.layer.replaceChildren(...convs.map((l) => ctx.h("option", { value: l.name }, `${l.name} · ${l.channels}`)));
  if (convs.some((l) => l.name === keep)) el.layer.value = keep;
}

const SCALE = (k) => Math.max(4, Math.min(16, Math.floor(36 / k)));
const GAP = 2;

async function loadFilters(layer = null) {
  ctx.showError(el.filtersError, "");
  const m = model();
  try {
    const data = await ctx.request(ctx.urls.filters(m, layer));
    if (model() !== m) return;
    filters = data;
  } catch (error) {
    ctx.showError(el.filtersError, `The filters could not be loaded: ${error.message}`);
    return;
  }
  renderLayerChoices();
  const freq = filters.frequency;
  const k = freq.kernel_size[0];
  const scale = SCALE(k);
  el.mosaic.dataset.scale = String(scale);
  el.mosaic.src = `${filters.mosaic_url}&scale=${scale}&gap=${GAP}`;
  el.mosaic.hidden = false;
  const fact = (term, value) => [ctx.h("dt", {}, term), ctx.h("dd", {}, value)];
  el.facts.replaceChildren(
    ...fact("layer", filters.layer),
    ...fact("filters", `${filters.out_channels} × ${filters.in_channels}`),
    ...fact("kernel", `${freq.kernel_size.join("×")}`),
    ...fact("stride", `${freq.stride.join("×")}`),
    ...fact("dominant", freq.bands.map((b, i) => `${b} ${freq.dominant_counts[i]}`).join(" · ")),
  );
  renderBands();
}

function renderBands() {
  const freq = filters.frequency;
  const rows = freq.per_filter;
  const W = 560;
  const H = 170;
  const M = { l: 30, r: 96, t: 8, b: 20 };
  const n = rows.length;
  const bw = (W - M.l - M.r) / Math.max(1, n);
  const y = (v) => M.t + (1 - v) * (H - M.t - M.b);
  const node = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `Frequency shares of ${n} filters` });
  for (const t of [0, 0.5, 1]) {
    node.append(svg("line", { x1: M.l, x2: W - M.r + 70, y1: y(t), y2: y(t), stroke: "var(--line)" }));
    node.append(svg("text", { x: M.l - 4, y: y(t) + 3, "text-anchor": "end" }, document.createTextNode(t.toFixed(1))));
  }
  const stack = (x, width, shares, attrs = {}) => {
    const g = svg("g", attrs);
    let acc = 0;
    shares.forEach((share, i) => {
      g.append(svg("rect", { x, width: Math.max(0.5, width), y: y(acc + share), height: Math.max(0, y(acc) - y(acc + share)), fill: BAND_COLOURS[i] }));
      acc += share;
    });
    return g;
  };
  rows.forEach((shares, index) => {
    const g = stack(M.l + index * bw + 0.15 * bw, 0.7 * bw, shares, { "data-filter": index });
    g.addEventListener("mouseenter", () => showFilter(index));
    node.append(g);
  });
  const mx = W - M.r + 14;
  node.append(stack(mx, 22, freq.mean, { "data-role": "arch-mean" }));
  node.append(stack(mx + 34, 22, freq.white_reference, { "data-role": "arch-white" }));
  node.append(svg("text", { x: mx + 11, y: H - 6, "text-anchor": "middle" }, document.createTextNode("mean")));
  node.append(svg("text", { x: mx + 45, y: H - 6, "text-anchor": "middle" }, document.createTextNode("white")));
  node.append(svg("text", { x: M.l, y: H - 6 }, document.createTextNode(`filters 0…${n - 1}`)));
  el.bands.replaceChildren(node);
}

function showFilter(index) {
  const shares = filters.frequency.per_filter[index];
  if (!shares) return;
  el.readout.dataset.filter = String(index);
  el.readout.textContent = `filter ${index}: low ${(shares[0] * 100).toFixed(1)}% · mid ${(shares[1] * 100).toFixed(1)}% · high ${(shares[2] * 100).toFixed(1)}%`;
}

function onMosaicHover(event) {
  if (!filters) return;
  const k = filters.frequency.kernel_size[0];
  const scale = Number(el.mosaic.dataset.scale);
  const n = filters.frequency.channels;
  const columns = Math.ceil(Math.sqrt(n));
  const rect = el.mosaic.getBoundingClientRect();
  const px = ((event.clientX - rect.left) / rect.width) * el.mosaic.naturalWidth;
  const py = ((event.clientY - rect.top) / rect.height) * el.mosaic.naturalHeight;
  const tile = k * scale + GAP;
  const c = Math.floor((px - GAP) / tile);
  const r = Math.floor((py - GAP) / tile);
  const index = r * columns + c;
  if (c >= 0 && c < columns && r >= 0 && index < n) showFilter(index);
}

// ---- dead channels -----------------------------------------------------------------------------------------
async function runDead() {
  const m = model();
  const job = { url: null };
  running = job;
  ctx.showError(el.deadError, "");
  el.run.disabled = true;
  el.progress.hidden = false;
  el.progress.value = 0;
  root.dataset.dead = "running";
  try {
    const data = await startJob(ctx.urls.analysis(m, "dead-channels"), {}, { onProgress: (s) => (el.progress.value = s.progress), job });
    if (running !== job || model() !== m) return;
    dead = data;
    deadModel = m;
    renderDead();
    root.dataset.dead = "done";
  } catch (error) {
    if (running !== job) return;
    root.dataset.dead = "failed";
    ctx.showError(el.deadError, `Dead channels could not be counted: ${error.message}`);
  } finally {
    if (running === job) {
      running = null;
      el.run.disabled = false;
      el.progress.hidden = true;
    }
  }
}

function renderDead() {
  const { h } = ctx;
  if (!dead) {
    el.deadSummary.textContent = "";
    el.deadTable.replaceChildren();
    return;
  }
  el.deadSummary.textContent = `${dead.total_dead} of ${dead.total_channels} channels dead in ${dead.conv_layers} conv layers (${dead.rectified_dead} after an activation), over ${dead.images.length} images`;
  const rows = el.onlyDead.checked ? dead.layers.filter((row) => row.dead > 0) : dead.layers;
  el.deadTable.replaceChildren(
    h(
      "table",
      { class: "arch-dead" },
      h("thead", {}, h("tr", {}, h("th", {}, "convolution"), h("th", {}, "measured at"), h("th", {}, "channels"), h("th", {}, "dead"), h("th", {}, "share"), h("th", {}, "dead channels"))),
      h(
        "tbody",
        {},
        ...rows.map((row) =>
          h(
            "tr",
            { class: row.rectified ? null : "linear", dataset: { layer: row.layer, dead: String(row.dead) } },
            h("td", {}, row.layer),
            h("td", {}, row.rectified ? row.measured_at : "its output"),
            h("td", {}, String(row.channels)),
            h("td", {}, String(row.dead)),
            h("td", {}, h("span", { class: "bar", style: { width: `${Math.max(1, row.dead_fraction * 120)}px` } }), ` ${(row.dead_fraction * 100).toFixed(1)}%`),
            h("td", { title: row.dead_channels.join(", ") }, row.dead_channels.slice(0, 12).join(", ") + (row.dead_channels.length > 12 ? ", …" : "")),
          ),
        ),
      ),
    ),
  );
}

// ---- the tab interface -------------------------------------------------------------------------------------------
async function mount(section, context) {
  ctx = context;
  root = section;
  injectStyle("css-analysis-architecture", CSS);
  build();
  renderLayerChoices();
  await loadFilters();
  root.dataset.ready = "true";
  runDead();
}

function update(state, changed) {
  if (!root || !changed.has("model")) return;
  filters = null;
  dead = null;
  renderDead();
  loadFilters().then(() => {
    if (!root.hidden && deadModel !== state.model) runDead();
  });
}

function show() {
  if (!root) return;
  renderLayerChoices();
  if (!dead && !running && ctx.store.get().model) runDead();
}

/** The view, as tabs.js takes it: createView({root, ctx}) → {ready, update, show}. */
export function createView({ root, ctx: context }) {
  return { ready: mount(root, context), update, show };
}
