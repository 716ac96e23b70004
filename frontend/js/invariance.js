// Invariance view (paper Fig. 5): how far features move, and how the class
// probability changes, when images are translated vertically, scaled or rotated.
//
// POST /api/models/{m}/analyses/invariance starts a job; its result holds, per
// image, the distance ‖x − x₀‖ at a low layer and at the penultimate layer and the
// probability of the untransformed top-1 class, one value per transformation step.
// Three hand-drawn SVG charts show every chosen image as one line; hovering a chart
// reads out all images' values at that step and shows the transformed copy.

import { injectStyle, panel, svg } from "./util.js";
import { jobControls } from "./jobs.js";

const COLOURS = ["#f0b43c", "#3ee0ff", "#ff7a6b", "#6fd08c", "#c792ea", "#ff9edb", "#9fb4ff", "#e0e0e0"];
const RANGES = {
  translation: { start: -60, stop: 60, steps: 13, unit: "px", label: "vertical translation (px)" },
  scale: { start: 1, stop: 1.8, steps: 9, unit: "×", label: "scale (×)" },
  rotation: { start: 0, stop: 350, steps: 36, unit: "°", label: "rotation (°)" },
};
const MAX_IMAGES = 8;

const CSS = `
.ana { display: grid; grid-template-columns: 300px minmax(0, 1fr); gap: var(--gap); align-items: start; }
.ana .panel { gap: 8px; }
.ana-form { display: grid; gap: 9px; }
.ana-form label.row, .ana-form .row { display: grid; grid-template-columns: 86px minmax(0, 1fr); align-items: center; gap: 6px; color: var(--muted); }
.ana-form input[type="number"], .ana-form input[type="text"], .ana-form select { width: 100%; min-width: 0; padding: 4px 6px; background: var(--panel-2); border: 1px solid var(--line-strong); border-radius: 6px; }
.ana-range { display: grid; grid-template-columns: repeat(3, minmax(0, 1fr)); gap: 4px; }
.ana-images { display: flex; flex-wrap: wrap; gap: 4px; }
.ana-img { display: inline-flex; align-items: center; gap: 4px; padding: 2px 6px 2px 2px; border: 1px solid var(--line-strong); border-radius: 6px; background: var(--panel-2); color: var(--muted); cursor: pointer; font-size: 12px; }
.ana-img img { width: 22px; height: 22px; object-fit: cover; border-radius: 4px; }
.ana-img[aria-pressed="true"] { border-color: var(--accent); color: var(--text); background: var(--accent-soft); }
.ana-run { display: flex; align-items: center; gap: 8px; }
.ana-run progress { flex: 1; height: 6px; accent-color: var(--accent); }
.ana-note { color: var(--faint); font-size: 11.5px; margin: 0; line-height: 1.45; }
.ana-charts { display: grid; grid-template-columns: repeat(3, minmax(0, 1fr)); gap: 10px; }
.ana-chart figure { margin: 0; }
.ana-chart figcaption { color: var(--muted); font-size: 11.5px; margin-bottom: 2px; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.ana-chart svg { width: 100%; height: auto; display: block; background: var(--panel-2); border-radius: 6px; }
.ana-chart svg text { fill: var(--faint); font: 10px var(--mono); }
.ana-chart .grid line { stroke: var(--line); }
.ana-chart .axis { stroke: var(--line-strong); }
.ana-chart .cursor { stroke: var(--muted); stroke-dasharray: 3 3; }
.ana-legend { display: flex; flex-wrap: wrap; gap: 4px 14px; margin: 0; padding: 0; list-style: none; font-size: 12px; }
.ana-legend li { display: inline-flex; align-items: center; gap: 6px; }
.ana-legend i { width: 14px; height: 3px; border-radius: 2px; display: inline-block; }
.ana-readout { display: grid; grid-template-columns: 112px minmax(0, 1fr); gap: 10px; align-items: start; min-height: 112px; }
.ana-readout img { width: 112px; height: 112px; border-radius: 6px; background: var(--panel-2); image-rendering: auto; }
.ana-readout table { border-collapse: collapse; font-size: 12px; }
.ana-readout th, .ana-readout td { padding: 2px 8px 2px 0; text-align: right; font-family: var(--mono); white-space: nowrap; }
.ana-readout th:first-child, .ana-readout td:first-child { text-align: left; font-family: var(--sans); }
.ana-readout th { color: var(--muted); font-weight: 500; }
.ana-empty { color: var(--faint); padding: 24px 4px; }
@media (max-width: 1100px) { .ana { grid-template-columns: 1fr; } .ana-charts { grid-template-columns: 1fr; } }
`;

let ctx = null;
let root = null;
let samples = [];
let chosen = [];
let result = null;
let controls = null; // the Run / Cancel / progress of the job (jobs.js)
let hoverIndex = null;
const el = {};


function fmt(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  const abs = Math.abs(value);
  if (abs === 0) return "0";
  if (abs >= 1e4) return value.toExponential(2);
  if (abs >= 100) return value.toFixed(1);
  if (abs >= 0.001) return value.toPrecision(3);
  return value.toExponential(2);
}

/** Axis labels: short, no trailing zeros (0.5, 1, -50, 2e-5). */
function tick(value) {
  if (value === 0) return "0";
  const abs = Math.abs(value);
  if (abs >= 1e4 || abs < 1e-3) return value.toExponential(0);
  return String(Number(value.toPrecision(4)));
}

// ---- the form ------------------------------------------------------------------------------------
function build() {
  const { h } = ctx;
  el.images = h("div", { class: "ana-images", role: "group", "aria-label": "Images to transform", dataset: { role: "inv-images" } });
  el.transform = h(
    "div",
    { class: "seg", role: "radiogroup", "aria-label": "Transformation", dataset: { role: "inv-transform" } },
    ...Object.keys(RANGES).map((name, i) =>
      h("label", {}, h("input", { type: "radio", name: "inv-transform", value: name, checked: i === 0, onchange: onTransform }), h("span", {}, name)),
    ),
  );
  const number = (role, label, step) => h("input", { type: "number", step, "aria-label": label, dataset: { role } });
  el.start = number("inv-start", "First value", "any");
  el.stop = number("inv-stop", "Last value", "any");
  el.steps = number("inv-steps", "Number of steps", "1");
  el.steps.min = "1";
  el.steps.max = "361";
  el.low = h("select", { "aria-label": "Low layer", dataset: { role: "inv-low" } });
  el.high = h("input", { type: "text", value: "penultimate", spellcheck: "false", "aria-label": "High layer", dataset: { role: "inv-high" } });
  el.edge = h(
    "select",
    { "aria-label": "Uncovered pixels", dataset: { role: "inv-edge" } },
    h("option", { value: "fill" }, "mean colour (photo first)"),
    h("option", { value: "wrap" }, "circular shift"),
  );
  el.run = h("button", { type: "button", class: "btn", dataset: { role: "inv-run" }, onclick: run }, "Run");
  el.cancel = h("button", { type: "button", class: "btn", hidden: true, dataset: { role: "inv-cancel" } }, "Cancel");
  el.progress = h("progress", { max: 1, value: 0, hidden: true, "aria-label": "Progress", dataset: { role: "inv-progress" } });
  controls = jobControls({ root, run: el.run, cancel: el.cancel, progress: el.progress });
  el.error = h("div", { class: "error", role: "alert", hidden: true, dataset: { role: "inv-error" } });
  el.relative = h("input", { type: "checkbox", checked: true, dataset: { role: "inv-relative" }, onchange: () => draw() });
  el.legend = h("ul", { class: "ana-legend", dataset: { role: "inv-legend" }, "aria-label": "Images" });
  el.charts = h("div", { class: "ana-charts" });
  el.preview = h("img", { alt: "The transformed copy under the pointer", width: 112, height: 112, dataset: { role: "inv-preview" }, hidden: true });
  el.readout = h("div", { dataset: { role: "inv-readout" }, "aria-live": "polite" });
  el.summary = h("span", { class: "panel-note", dataset: { role: "inv-summary" } });

  const form = panel(
    { id: "inv-title", title: "Invariance · Fig. 5" },
    [],
    h(
      "div",
      { class: "ana-form" },
      h("div", {}, h("div", { class: "ana-note", style: { marginBottom: "4px" } }, `Images (up to ${MAX_IMAGES})`), el.images),
      el.transform,
      h("div", { class: "row" }, h("span", {}, "from · to · n"), h("div", { class: "ana-range" }, el.start, el.stop, el.steps)),
      h("label", { class: "row" }, h("span", {}, "low layer"), el.low),
      h("label", { class: "row" }, h("span", {}, "high layer"), el.high),
      h("label", { class: "row" }, h("span", {}, "uncovered"), el.edge),
      h("div", { class: "ana-run" }, el.run, el.cancel, el.progress),
      el.error,
      h(
        "p",
        { class: "ana-note" },
        "Each copy is cut from the original photo (shorter side resized to S·scale, rotated about the centre, shifted), ",
        "so a shift shows more of a tall photo before any mean-colour fill. Distances are Euclidean, between the copy's ",
        "feature vector and the untransformed image's; the probability is that of the untransformed top-1 class.",
      ),
    ),
  );
  const results = panel(
    { id: "inv-results-title", title: "Curves" },
    [
      h("label", { class: "check", title: "Divide each distance by the norm of the untransformed image's features" }, el.relative, h("span", {}, "relative to ‖x₀‖")),
      el.summary,
    ],
    el.legend,
    el.charts,
    h("div", { class: "ana-readout" }, el.preview, el.readout),
  );
  root.replaceChildren(h("div", { class: "ana" }, form, results));
  setRange("translation");
  draw();
}

function onTransform() {
  const transform = currentTransform();
  setRange(transform);
  el.edge.disabled = transform !== "translation";
  if (transform !== "translation") el.edge.value = "fill";
}

function currentTransform() {
  return el.transform.querySelector("input:checked")?.value || "translation";
}

function setRange(transform) {
  const range = RANGES[transform];
  el.start.value = String(range.start);
  el.stop.value = String(range.stop);
  el.steps.value = String(range.steps);
}

function renderImages() {
  const { h } = ctx;
  const current = ctx.store.get().image;
  const list = samples.map((s) => ({ id: s.id, name: s.name, thumb: s.thumbnail_url || ctx.urls.thumbnail(s.id) }));
  if (current && !list.some((s) => s.id === current)) list.unshift({ id: current, name: "current image", thumb: ctx.urls.image(current, ctx.store.get().model) });
  if (!chosen.length && current) chosen = [current];
  el.images.replaceChildren(
    ...list.map((item) =>
      h(
        "button",
        {
          type: "button",
          class: "ana-img",
          "aria-pressed": String(chosen.includes(item.id)),
          title: item.name,
          dataset: { image: item.id },
          onclick: (event) => toggleImage(item.id, event.currentTarget),
        },
        h("img", { src: item.thumb, alt: "", loading: "lazy" }),
        item.id,
      ),
    ),
  );
}

function toggleImage(id, button) {
  if (chosen.includes(id)) chosen = chosen.filter((x) => x !== id);
  else if (chosen.length < MAX_IMAGES) chosen = [...chosen, id];
  button.setAttribute("aria-pressed", String(chosen.includes(id)));
}

function renderLayers() {
  const layers = (ctx.layers() || []).filter((l) => l.kind !== "Identity");
  const keep = el.low.value;
  const convs = layers.filter((l) => /Conv/.test(l.kind));
  el.low.replaceChildren(...layers.map((l) => ctx.h("option", { value: l.name }, `${l.name} · ${l.kind}`)));
  el.low.value = layers.some((l) => l.name === keep) ? keep : convs[0]?.name || layers[0]?.name || "";
}

// ---- running --------------------------------------------------------------------------------------
async function run() {
  const model = ctx.store.get().model;
  if (!chosen.length) return ctx.showError(el.error, "Choose at least one image.");
  const body = {
    images: chosen,
    transform: currentTransform(),
    start: Number(el.start.value),
    stop: Number(el.stop.value),
    steps: Math.round(Number(el.steps.value)),
    low_layer: el.low.value || null,
    high_layer: el.high.value.trim() || null,
    edge: el.edge.value,
  };
  ctx.showError(el.error, "");
  await controls.start(ctx.urls.analysis(model, "invariance"), body, {
    onResult: (data) => {
      result = { ...data, model };
      hoverIndex = null;
      draw();
    },
    onError: (error) => ctx.showError(el.error, error.aborted ? "Cancelled." : error.message),
  });
}

// ---- charts ------------------------------------------------------------------------------------------
function niceTicks(lo, hi, count = 5) {
  if (!(hi > lo)) return [lo];
  const span = hi - lo;
  const step0 = span / count;
  const mag = 10 ** Math.floor(Math.log10(step0));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= step0) || step0;
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
  return ticks;
}

/** One line chart; returns {node, setCursor(index)}. */
function lineChart({ role, title, xs, series, yMax: fixedMax = null, onHover }) {
  const W = 320;
  const H = 210;
  const M = { l: 44, r: 10, t: 10, b: 28 };
  const xMin = Math.min(...xs);
  const xMax = Math.max(...xs);
  const ys = series.flatMap((s) => s.ys).filter((v) => Number.isFinite(v));
  const yMax = fixedMax ?? Math.max(1e-12, ...ys) * 1.05;
  const x = (v) => M.l + (xMax > xMin ? ((v - xMin) / (xMax - xMin)) * (W - M.l - M.r) : (W - M.l - M.r) / 2);
  const y = (v) => H - M.b - (v / yMax) * (H - M.t - M.b);
  const grid = svg("g", { class: "grid" });
  const labels = svg("g");
  for (const t of niceTicks(0, yMax, 4)) {
    grid.append(svg("line", { x1: M.l, x2: W - M.r, y1: y(t), y2: y(t) }));
    labels.append(svg("text", { x: M.l - 4, y: y(t) + 3, "text-anchor": "end" }, document.createTextNode(tick(t))));
  }
  for (const t of niceTicks(xMin, xMax, 5)) {
    labels.append(svg("text", { x: x(t), y: H - M.b + 13, "text-anchor": "middle" }, document.createTextNode(tick(t))));
  }
  const lines = svg("g");
  for (const s of series) {
    const points = s.ys.map((v, i) => (Number.isFinite(v) ? [x(xs[i]), y(v)] : null));
    const d = points.map((p, i) => (p ? `${i && points[i - 1] ? "L" : "M"}${p[0].toFixed(1)},${p[1].toFixed(1)}` : "")).join("");
    lines.append(svg("path", { d, fill: "none", stroke: s.colour, "stroke-width": 1.8, "data-series": s.name }));
    for (const p of points) if (p) lines.append(svg("circle", { cx: p[0], cy: p[1], r: xs.length > 40 ? 1.2 : 2.2, fill: s.colour }));
  }
  const cursor = svg("line", { class: "cursor", y1: M.t, y2: H - M.b, visibility: "hidden" });
  const dots = svg("g");
  const hit = svg("rect", { x: M.l, y: M.t, width: W - M.l - M.r, height: H - M.t - M.b, fill: "transparent" });
  const node = svg(
    "svg",
    { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title, "data-role": role },
    grid,
    svg("line", { class: "axis", x1: M.l, x2: W - M.r, y1: H - M.b, y2: H - M.b }),
    svg("line", { class: "axis", x1: M.l, x2: M.l, y1: M.t, y2: H - M.b }),
    labels,
    lines,
    cursor,
    dots,
    hit,
  );
  const indexAt = (event) => {
    const box = node.getBoundingClientRect();
    const px = ((event.clientX - box.left) / box.width) * W;
    let best = 0;
    xs.forEach((v, i) => {
      if (Math.abs(x(v) - px) < Math.abs(x(xs[best]) - px)) best = i;
    });
    return best;
  };
  hit.addEventListener("mousemove", (event) => onHover(indexAt(event)));
  hit.addEventListener("mouseleave", () => onHover(null));
  function setCursor(index) {
    dots.replaceChildren();
    if (index === null) return cursor.setAttribute("visibility", "hidden");
    cursor.setAttribute("x1", x(xs[index]));
    cursor.setAttribute("x2", x(xs[index]));
    cursor.setAttribute("visibility", "visible");
    for (const s of series) {
      const v = s.ys[index];
      if (Number.isFinite(v)) dots.append(svg("circle", { cx: x(xs[index]), cy: y(v), r: 4, fill: "none", stroke: s.colour, "stroke-width": 2 }));
    }
  }
  return { node, setCursor };
}

let charts = [];

function draw() {
  const { h } = ctx;
  if (!result) {
    el.legend.replaceChildren();
    el.charts.replaceChildren(h("div", { class: "ana-empty", style: { gridColumn: "1 / -1" } }, "Choose images and a transformation, then Run."));
    el.readout.replaceChildren();
    el.preview.hidden = true;
    el.summary.textContent = "";
    return;
  }
  const relative = el.relative.checked;
  const images = result.images;
  const colour = (i) => COLOURS[i % COLOURS.length];
  el.legend.replaceChildren(
    ...images.map((img, i) => h("li", { dataset: { image: img.image } }, h("i", { style: { background: colour(i) } }), `${img.image}: ${img.target_label}`)),
  );
  const pick = (key) => images.map((img, i) => ({ name: img.image, colour: colour(i), ys: relative ? img.relative_distance[key] : img.distance[key] }));
  const label = relative ? "‖x − x₀‖ / ‖x₀‖" : "‖x − x₀‖";
  const specs = [
    { role: "inv-chart-low", title: `${label} at ${result.layers.low}`, series: pick("low") },
    { role: "inv-chart-high", title: `${label} at ${result.layers.high}`, series: pick("high") },
    { role: "inv-chart-prob", title: "P(untransformed top-1)", series: images.map((img, i) => ({ name: img.image, colour: colour(i), ys: img.probability })), yMax: 1 },
  ];
  charts = specs.map((spec) => lineChart({ ...spec, xs: result.values, onHover: hover }));
  el.charts.replaceChildren(
    ...charts.map((chart, i) =>
      h("div", { class: "ana-chart" }, h("figure", {}, h("figcaption", { title: specs[i].title }, specs[i].title), chart.node, h("figcaption", { style: { textAlign: "center" } }, RANGES[result.transform].label))),
    ),
  );
  el.summary.textContent = `${result.forward_passes} passes · ${result.seconds.toFixed(1)} s`;
  hover(hoverIndex ?? Math.floor(result.values.length / 2), { sticky: true });
}

function hover(index, { sticky = false } = {}) {
  if (!result) return;
  if (index === null) {
    if (!sticky) index = hoverIndex ?? 0;
  }
  hoverIndex = index;
  for (const chart of charts) chart.setCursor(index);
  const { h } = ctx;
  const value = result.values[index];
  const unit = RANGES[result.transform].unit;
  const relative = el.relative.checked;
  el.readout.dataset.index = String(index);
  el.readout.replaceChildren(
    h(
      "table",
      {},
      h("caption", { style: { textAlign: "left", color: "var(--muted)", paddingBottom: "3px" } }, `${result.transform} = ${fmt(value)} ${unit}`),
      h("thead", {}, h("tr", {}, h("th", {}, "image"), h("th", {}, relative ? "low ‖Δ‖/‖x₀‖" : "low ‖Δ‖"), h("th", {}, relative ? "high ‖Δ‖/‖x₀‖" : "high ‖Δ‖"), h("th", {}, "P(top-1)"), h("th", {}, "top class now"))),
      h(
        "tbody",
        {},
        ...result.images.map((img, i) => {
          const low = relative ? img.relative_distance.low[index] : img.distance.low[index];
          const high = relative ? img.relative_distance.high[index] : img.distance.high[index];
          return h(
            "tr",
            { dataset: { image: img.image } },
            h("td", {}, h("i", { style: { display: "inline-block", width: "9px", height: "9px", borderRadius: "2px", marginRight: "5px", background: COLOURS[i % COLOURS.length] } }), img.image),
            h("td", { dataset: { col: "low" } }, fmt(low)),
            h("td", { dataset: { col: "high" } }, fmt(high)),
            h("td", { dataset: { col: "probability" } }, img.probability[index].toFixed(4)),
            h("td", { title: img.top_label_names[index] }, img.top_label_names[index].slice(0, 28)),
          );
        }),
      ),
    ),
  );
  const first = result.images[0];
  el.preview.src = ctx.urls.invariancePreview(result.model, { image: first.image, transform: result.transform, value, edge: result.edge });
  el.preview.title = `${first.image}, ${result.transform} ${fmt(value)} ${unit}`;
  el.preview.hidden = false;
}

// ---- the tab interface ----------------------------------------------------------------------------
async function mount(section, context) {
  ctx = context;
  root = section;
  injectStyle("css-analysis-invariance", CSS);
  build();
  renderLayers();
  try {
    samples = await ctx.api.samples();
  } catch (error) {
    ctx.showError(el.error, `The sample photos could not be listed: ${error.message}`);
  }
  renderImages();
  root.dataset.ready = "true";
}

function update(state, changed) {
  if (!root) return;
  if (changed.has("model")) {
    result = null;
    draw();
  }
  if (changed.has("model") || changed.has("layer") || changed.has("image")) renderLayers();
  if (changed.has("image")) renderImages();
}

function show() {
  if (root) renderLayers();
}

/** The view, as tabs.js takes it: createView({root, ctx}) → {ready, update, show}. */
export function createView({ root, ctx: context }) {
  return { ready: mount(root, context), update, show };
}
