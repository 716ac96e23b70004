// Occlusion view (paper Fig. 7): slide a grey square over the image and, for every
// position of the square, map
//   • the probability of a target class          (Fig. 7d),
//   • the most probable class                     (Fig. 7e),
//   • the total activity of one feature map       (Fig. 7b),
// and show that feature map projected to pixel space (Fig. 7c) beside them.
//
// POST /api/models/{m}/images/{id}/occlusion answers at once (200) for few positions
// or starts a job (202) that is polled at GET /api/jobs/{id} (DELETE cancels it).
// Occlusion is expensive, so it runs only when Run is pressed: changing the image or
// the model marks the maps as out of date instead of recomputing them.
//
// How the maps are computed: "auto" (default) lets the server run exact incremental
// occlusion (only the patch of each layer the occluder can change is recomputed)
// where it plans to save arithmetic, else dense (the whole model per position);
// both are exact. The approximate options (a projective-field cap τ, adaptive
// drill-down) sit behind their own clearly labelled control, off by default; the
// summary says which method ran, whether it was approximate, its time and planned
// speed-up.
//
// Each occluder position is one cell: a stride × stride square centred on the
// occluder's centre, so the maps lie over the input where the square was. Hovering
// (or arrow keys on a focused map) shows the square and the numbers of that position.

import { gradientCss, lut } from "../colormap.js";
import { autoContrast } from "../imageops.js";
import { cancelJob, followJob } from "../jobs.js";
import { hasSwitches, isPassThrough } from "../layermeta.js";
import { fmt, panel } from "../util.js";

const CMAP = { probability: "inferno", activity: "viridis" };
// categorical colours for the label map (the rest share OTHER)
const PALETTE = ["#4e9af1", "#f28e2b", "#e15759", "#76d7c4", "#59a14f", "#edc948", "#c792ea", "#ff9da7", "#b5875f", "#3ee0ff", "#9fe870", "#ffd166", "#8e7cf0", "#f06bb2"];
const OTHER = "#59606b";

let ctx = null;
let root = null;
let result = null; // the last answer, plus {model, image, mode}
let running = null; // {url, cancelled, started}
let hover = null; // [row, col]
let labels = []; // [{index, label}] of the current model
let labelsModel = null;
let layersModel = null;
let layerRows = []; // the current model's /layers rows (has_switches, pass-through)
let projectionUrl = null; // object URL of the shown projection
let projectionToken = 0;
const el = {};
const maps = {}; // name -> {figure, stage, canvas, cursor, legend}

const shortLabel = (label) => String(label ?? "").split(",")[0].trim();

function inputSize() {
  const model = (ctx.models() || []).find((m) => m.name === ctx.store.get().model);
  return model?.input_size || 224;
}

function grid(size, stride, side) {
  if (!(size >= 1 && stride >= 1) || size > side) return null;
  const n = Math.floor((side - size) / stride) + 1;
  return { rows: n, cols: n };
}

// ---- building ----------------------------------------------------------------------------------------
function build() {
  const { h } = ctx;
  const number = (role, label, value) =>
    h("input", { type: "number", min: "1", step: "1", value: String(value), required: true, "aria-label": label, dataset: { role }, oninput: updateEstimate });
  el.size = number("occlusion-size", "Occluder size in pixels", 32);
  el.stride = number("occlusion-stride", "Stride in pixels", 16);
  el.labelList = h("datalist", { id: "occlusion-labels" });
  el.target = h("input", {
    type: "text",
    list: "occlusion-labels",
    placeholder: "unoccluded top-1",
    title: "Type part of a class name and pick it from the list, or give a class index; empty: the unoccluded top-1",
    autocomplete: "off",
    spellcheck: "false",
    "aria-label": "Target class: type to search the class names",
    dataset: { role: "occlusion-target" },
  });
  el.targetClear = h("button", { type: "button", class: "icon-btn occ-clear", title: "Use the unoccluded top-1", "aria-label": "Clear the target class", onclick: () => ((el.target.value = ""), el.target.focus()) }, "×");
  el.layer = h("select", { "aria-label": "Feature-map layer", dataset: { role: "occlusion-layer" } }, h("option", { value: "" }, "last conv (default)"));
  el.estimate = h("p", { class: "occ-note occ-indent", dataset: { role: "occlusion-estimate" } });
  el.method = h(
    "select",
    { "aria-label": "Occlusion method", title: "How the maps are computed (all three options are exact)", dataset: { role: "occlusion-method" }, onchange: updateEstimate },
    h("option", { value: "auto", title: "incremental where it plans to save a third of the arithmetic or more, else dense" }, "auto · exact"),
    h("option", { value: "incremental", title: "rerun only the patch of each layer the occluder can change" }, "incremental · exact"),
    h("option", { value: "dense", title: "the whole model for every position" }, "dense · exact"),
  );
  const decimal = (role, label, title) =>
    h("input", { type: "number", min: "0.05", max: "1", step: "0.05", placeholder: "off", "aria-label": label, title, dataset: { role }, oninput: updateEstimate });
  el.approx = decimal("occlusion-approx", "Approximate: projective-field cap tau", "Cap each layer's recomputed patch at this share of its map (0–1]; empty: off");
  el.adaptive = decimal("occlusion-adaptive", "Approximate: adaptive drill-down share", "Occlude at twice the stride first, then at the stride only in this share (0–1] of cells with the largest drop; empty: off");
  el.approxPanel = h(
    "details",
    { class: "occ-approx", dataset: { role: "occlusion-approx-panel" } },
    h("summary", {}, "Approximate options ", h("span", { class: "occ-approx-tag" }, "not exact")),
    h("label", { class: "occ-row" }, h("span", {}, "cap τ"), el.approx, h("span", { class: "occ-unit" }, "of map")),
    h("label", { class: "occ-row" }, h("span", {}, "drill"), el.adaptive, h("span", { class: "occ-unit" }, "of cells")),
    h("p", { class: "occ-note" }, "Faster, but the maps are approximate and labelled so. τ caps how far a change may spread in each layer; drill-down refines only the cells where the probability dropped most at twice the stride."),
  );
  el.targetNote = h("p", { class: "occ-note occ-indent" }, "Empty: the unoccluded top-1.");
  el.run = h("button", { type: "submit", class: "btn occ-run", dataset: { role: "occlusion-run" } }, "Run");
  el.cancel = h("button", { type: "button", class: "btn", hidden: true, dataset: { role: "occlusion-cancel" }, onclick: cancel }, "Cancel");
  el.progress = h("progress", { max: 1, hidden: true, "aria-label": "Occlusion progress", dataset: { role: "occlusion-progress" } });
  el.progressText = h("span", { class: "occ-progress-text", "aria-live": "polite", dataset: { role: "occlusion-progress-text" } });
  el.error = h("div", { class: "error", role: "alert", hidden: true, dataset: { role: "occlusion-error" } });
  el.current = h("p", { class: "occ-current", dataset: { role: "occlusion-current" } });

  const form = h(
    "form",
    { class: "panel occ-form", "aria-labelledby": "occ-title", novalidate: true, onsubmit: (event) => (event.preventDefault(), run()) },
    h("header", { class: "panel-head" }, h("h2", { id: "occ-title" }, "Occlusion · Fig. 7")),
    el.current,
    h("label", { class: "occ-row" }, h("span", {}, "square"), el.size, h("span", { class: "occ-unit" }, "px")),
    h("label", { class: "occ-row" }, h("span", {}, "stride"), el.stride, h("span", { class: "occ-unit" }, "px")),
    el.estimate,
    h("label", { class: "occ-row occ-wide" }, h("span", {}, "target"), h("span", { class: "occ-target" }, el.target, el.targetClear)),
    el.targetNote,
    el.labelList,
    h("label", { class: "occ-row occ-wide" }, h("span", {}, "layer"), el.layer),
    h("label", { class: "occ-row occ-wide" }, h("span", {}, "method"), el.method),
    h("p", { class: "occ-note occ-indent" }, "Exact either way. Incremental reruns only what the square can change; auto uses it where it pays."),
    el.approxPanel,
    h("div", { class: "occ-actions" }, el.run, el.cancel, el.progress),
    el.progressText,
    el.error,
    h(
      "p",
      { class: "occ-note" },
      "A square of the model's mean colour is slid over the input; every position is one (dense or incremental) pass. ",
      "The feature map is the layer's strongest channel in the unoccluded image. ",
      "Computed only when you press Run.",
    ),
  );

  el.summary = h("div", { class: "occ-summary", dataset: { role: "occlusion-summary" } });
  el.ran = h("p", { class: "occ-ran", hidden: true, dataset: { role: "occlusion-method-ran" } });
  el.stale = h("p", { class: "occ-stale", hidden: true, dataset: { role: "occlusion-stale" } });
  el.grid = h("div", { class: "occ-grid" });
  el.readout = h("div", { class: "occ-readout", "aria-live": "polite", dataset: { role: "occlusion-hover" } });
  el.labelLegend = h("ul", { class: "occ-labels", "aria-label": "Most probable labels that occur", dataset: { role: "occlusion-legend", legend: "top_label" } });
  el.opacity = h("input", { type: "range", min: "0", max: "1", step: "0.05", value: "0.75", "aria-label": "Map opacity over the input", oninput: () => root.style.setProperty("--occ-alpha", el.opacity.value) });
  el.unitScale = h("input", { type: "checkbox", onchange: () => result && drawMap("probability") });

  const titles = {
    probability: "P(target) per occluder position",
    top_label: "Most probable label",
    activity: "Total activity of the feature map",
  };
  for (const name of ["probability", "top_label", "activity"]) {
    const canvas = h("canvas", { class: "occ-heat", width: 1, height: 1, hidden: true, "aria-hidden": "true" });
    const stage = h("div", { class: "stage occ-stage", tabindex: "0", role: "img", "aria-label": titles[name] }, h("img", { class: "occ-input", alt: "" }), canvas, cursorSvg());
    const legend =
      name === "top_label"
        ? h("div", { class: "occ-legend occ-legend-note", dataset: { legend: "top_label-key" } })
        : h("div", { class: "occ-legend", dataset: { role: "occlusion-legend", legend: name } });
    const caption = h("figcaption", {}, titles[name]);
    const figure = h("figure", { class: "occ-fig", dataset: { map: name } }, caption, stage, legend);
    maps[name] = { figure, stage, canvas, legend, caption };
    el.grid.append(figure);
  }

  el.projection = h("img", { alt: "Projection of the feature map to pixel space", hidden: true, dataset: { role: "occlusion-projection" } });
  el.projectionEmpty = h("div", { class: "stage-empty" }, "The projection of the feature map appears here after a run");
  el.projectionStage = h("div", { class: "stage occ-stage occ-proj-stage" }, el.projection, el.projectionEmpty, cursorSvg());
  el.mode = h(
    "select",
    { "aria-label": "Projection mode", title: "Projection mode", dataset: { role: "occlusion-mode" }, onchange: () => loadProjection() },
    h("option", { value: "auto", title: "deconvnet where max-pool switches lie below the layer, else guided (the server resolves it)" }, "auto"),
    ...["deconvnet", "guided", "gradient"].map((m) => h("option", { value: m }, m)),
  );
  el.contrast = h("input", { type: "checkbox", checked: true, onchange: () => loadProjection() });
  el.explore = h("button", { type: "button", class: "btn occ-small", disabled: true, title: "Open this layer and channel in the Explore view", onclick: openInExplore }, "Explore ↗");
  el.projCaption = h("figcaption", {}, "Projection of the feature map");
  el.projHint = h("p", { class: "occ-note", hidden: true }, "No max-pool lies below this layer, so the deconvnet has no switches and shows mostly where the unit looks; guided shows the image structure.");
  const projection = h(
    "figure",
    { class: "occ-fig", dataset: { role: "occlusion-projection-figure" } },
    el.projCaption,
    el.projectionStage,
    h("div", { class: "occ-proj-tools" }, el.mode, h("label", { class: "check", title: "Stretch the projection's contrast around its background grey" }, el.contrast, h("span", {}, "auto contrast")), el.explore),
    el.projHint,
  );
  el.grid.append(projection);

  const results = panel(
    { id: "occ-results-title", title: "Maps", className: "occ-results" },
    [
      el.summary,
      h("div", { class: "occ-view-tools" },
        h("label", { class: "check", title: "Colour the probability from 0 to 1 instead of its smallest to largest value" }, el.unitScale, h("span", {}, "P on 0–1")),
        h("label", { class: "check", title: "Opacity of the maps over the input" }, h("span", {}, "opacity"), el.opacity),
      ),
    ],
    el.ran,
    el.stale,
    el.grid,
    el.readout,
    h("div", { class: "occ-labels-wrap" }, h("span", { class: "occ-labels-title" }, "Labels"), el.labelLegend),
  );
  el.results = results;

  for (const stage of [...Object.values(maps).map((m) => m.stage), el.projectionStage]) {
    stage.addEventListener("mousemove", (event) => onPointer(stage, event));
    stage.addEventListener("mouseleave", () => setHover(null));
    stage.addEventListener("keydown", onKey);
  }
  root.style.setProperty("--occ-alpha", el.opacity.value);
  root.replaceChildren(h("div", { class: "occ" }, form, results));
}

function cursorSvg() {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "occ-cursor");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("aria-hidden", "true");
  for (const cls of ["occ-square", "occ-cell"]) {
    const rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    rect.setAttribute("class", cls);
    rect.setAttribute("visibility", "hidden");
    svg.append(rect);
  }
  return svg;
}

// ---- the form --------------------------------------------------------------------------------------
function readInt(input) {
  const text = input.value.trim();
  return /^\d+$/.test(text) ? Number(text) : NaN;
}

function updateEstimate() {
  const side = inputSize();
  const size = readInt(el.size);
  const stride = readInt(el.stride);
  let text = "";
  let bad = false;
  if (!(size >= 1)) [text, bad] = ["The square needs a whole number of pixels, at least 1.", true];
  else if (!(stride >= 1)) [text, bad] = ["The stride needs a whole number of pixels, at least 1.", true];
  else if (size > side) [text, bad] = [`The square is larger than the ${side}×${side} input.`, true];
  else if (approxError()) [text, bad] = [approxError(), true];
  else {
    const g = grid(size, stride, side);
    const n = g.rows * g.cols;
    text = `${g.rows} × ${g.cols} = ${n.toLocaleString("en")} positions on the ${side}×${side} input`;
  }
  el.estimate.textContent = text;
  el.estimate.classList.toggle("is-bad", bad);
  return bad ? text : null;
}

/** An approximate option as a number in (0, 1]; null when empty (off); NaN when not valid. */
function readShare(input) {
  const text = input.value.trim();
  if (!text) return null;
  const value = Number(text);
  return Number.isFinite(value) && value > 0 && value <= 1 ? value : NaN;
}

function approxError() {
  const tau = readShare(el.approx);
  const share = readShare(el.adaptive);
  if (Number.isNaN(tau)) return "The cap τ must be a number above 0 and at most 1 (empty: off).";
  if (Number.isNaN(share)) return "The drill-down share must be a number above 0 and at most 1 (empty: off).";
  if (tau !== null && el.method.value === "dense") return "The cap τ needs the incremental (or auto) method, not dense.";
  return null;
}

function describeCurrent() {
  const { model, image } = ctx.store.get();
  el.current.replaceChildren("image ", ctx.h("b", {}, image || "–"), " · model ", ctx.h("b", {}, model || "–"));
}

async function loadLayers() {
  const model = ctx.store.get().model;
  if (!model || layersModel === model) return;
  layersModel = model;
  let rows = [];
  try {
    rows = await ctx.api.layers(model);
  } catch (error) {
    if (error.aborted) return;
    layersModel = null;
    ctx.showError(el.error, `The layers of ${model} could not be listed: ${error.message}`);
    return;
  }
  if (ctx.store.get().model !== model) return;
  const keep = el.layer.value;
  const shown = rows.filter((row) => !isPassThrough(row));
  el.layer.replaceChildren(
    ctx.h("option", { value: "" }, "last conv (default)"),
    ...shown.map((row) => ctx.h("option", { value: row.name }, `${row.name} · ${row.kind} · ${row.channels}×${row.height}²`)),
  );
  el.layer.value = shown.some((row) => row.name === keep) ? keep : "";
  layerRows = rows;
  syncProjHint();
}

async function loadLabels() {
  const model = ctx.store.get().model;
  if (!model || labelsModel === model) return;
  labelsModel = model;
  try {
    const rows = await ctx.request(ctx.urls.labels(model));
    if (ctx.store.get().model !== model) return;
    labels = rows;
  } catch (error) {
    if (error.aborted) return;
    labelsModel = null;
    labels = [];
  }
  el.labelList.replaceChildren(...labels.map((row) => ctx.h("option", { value: `${row.label} (${row.index})` })));
  el.targetNote.textContent = labels.length ? `Type to search the ${labels.length} class names; empty: the unoccluded top-1.` : "A class index; empty: the unoccluded top-1.";
}

/** The target field as a class index; null for the default; throws with a message for bad text. */
function parseTarget() {
  const text = el.target.value.trim();
  if (!text) return null;
  const count = labels.length || null;
  const check = (index) => {
    if (count !== null && index >= count) throw new Error(`Class ${index} does not exist: this model has classes 0 to ${count - 1}.`);
    return index;
  };
  let match = /^\d+$/.exec(text);
  if (match) return check(Number(text));
  match = /\((\d+)\)\s*$/.exec(text);
  if (match) return check(Number(match[1]));
  const lower = text.toLowerCase();
  const exact = labels.filter((row) => row.label.toLowerCase() === lower || shortLabel(row.label).toLowerCase() === lower);
  if (exact.length) return exact[0].index;
  const partial = labels.filter((row) => row.label.toLowerCase().includes(lower));
  if (partial.length === 1) return partial[0].index;
  if (partial.length > 1) {
    const names = partial.slice(0, 4).map((row) => `“${shortLabel(row.label)}”`).join(", ");
    throw new Error(`“${text}” matches ${partial.length} classes (${names}${partial.length > 4 ? ", …" : ""}); pick one from the list.`);
  }
  throw new Error(`No class is called “${text}”. Type part of a class name and pick it from the list, or give a class index.`);
}

// ---- running ---------------------------------------------------------------------------------------
async function run() {
  if (running) return;
  const { model, image } = ctx.store.get();
  ctx.showError(el.error, "");
  if (!model || !image) return ctx.showError(el.error, "Choose an image in the Explore view first.");
  const bad = updateEstimate();
  if (bad) return ctx.showError(el.error, bad);
  let target;
  try {
    target = parseTarget();
  } catch (error) {
    return ctx.showError(el.error, error.message);
  }
  const body = {
    size: readInt(el.size),
    stride: readInt(el.stride),
    target,
    layer: el.layer.value || null,
    method: el.method.value,
    approx: readShare(el.approx),
    adaptive: readShare(el.adaptive),
  };
  const job = { url: null, cancelled: false, started: performance.now() };
  running = job;
  setRunning(true);
  try {
    const url = ctx.urls.occlusion(model, image);
    // no slot and no abort: if Cancel comes before the answer, a job the answer starts is deleted below
    let data = await ctx.busy(el.results, ctx.api.postJson(url, body));
    const isJob = data && data.state && data.url && !("rows" in data);
    if (job.cancelled) {
      if (isJob) cancelJob({ url: data.url });
      throw Object.assign(new Error("cancelled"), { aborted: true });
    }
    if (isJob) data = await followJob(data, { job, onProgress: showProgress, failure: "The occlusion job failed on the server." });
    if (running !== job) return;
    result = { ...data, model, image, request: body };
    hover = null;
    root.dataset.state = "done";
    render();
  } catch (error) {
    if (running !== job) return;
    finish(job.cancelled || error.aborted ? "cancelled" : "failed", error.message);
  } finally {
    if (running === job) {
      running = null;
      setRunning(false);
    }
  }
}

function finish(state, message) {
  running = null;
  setRunning(false);
  root.dataset.state = state;
  ctx.showError(el.error, state === "cancelled" ? "Cancelled; the maps were not computed." : message);
}

function showProgress(state) {
  el.progress.value = state.progress || 0;
  const seconds = (performance.now() - (running?.started ?? performance.now())) / 1000;
  const queued = state.state === "queued" ? " · waiting for the server" : "";
  el.progressText.textContent = `${(state.done ?? 0).toLocaleString("en")} / ${(state.total ?? 0).toLocaleString("en")} positions · ${seconds.toFixed(0)} s${queued}`;
}

function setRunning(on) {
  root.dataset.state = on ? "running" : root.dataset.state;
  el.run.disabled = on;
  el.run.textContent = on ? "Running…" : "Run";
  el.cancel.hidden = !on;
  el.progress.hidden = !on;
  el.progress.removeAttribute("value"); // indeterminate until a job reports progress
  el.progressText.textContent = on ? "computing…" : "";
}

async function cancel() {
  const job = running;
  if (!job) return;
  if (!job.url) {
    job.cancelled = true;
    finish("cancelled"); // the answer has not come yet: forget it (a job it starts is deleted)
    return;
  }
  el.progressText.textContent = "cancelling…";
  await cancelJob(job);
}

// ---- drawing ---------------------------------------------------------------------------------------
function render() {
  const side = inputSize();
  const r = result;
  r.side = side;
  const { h } = ctx;
  const target = r.top_label_names?.[r.target] ?? r.target_label;
  el.summary.replaceChildren(
    h("span", {}, "target ", h("b", { title: r.target_label }, shortLabel(target)), ` (${r.target})`),
    h("span", {}, `${r.rows} × ${r.cols} positions · square ${r.size} px · stride ${r.stride} px`),
    h("span", {}, "feature ", h("b", {}, r.feature.layer), ` #${r.feature.channel}`),
  );
  renderMethod(r);
  maps.probability.caption.replaceChildren("P(", h("b", { title: r.target_label }, shortLabel(target)), ") per position");
  maps.activity.caption.replaceChildren("Activity of ", h("b", {}, `#${r.feature.channel}`), ` · ${r.feature.layer}`);
  el.projCaption.replaceChildren("Projection of ", h("b", {}, `#${r.feature.channel}`), " (strongest unit)");
  const src = ctx.urls.image(r.image, r.model);
  for (const name of ["probability", "top_label", "activity"]) {
    const map = maps[name];
    map.figure.dataset.rows = String(r.rows);
    map.figure.dataset.cols = String(r.cols);
    map.stage.querySelector("img").src = src;
    place(map.canvas, r, side);
    drawMap(name);
  }
  for (const svg of root.querySelectorAll(".occ-cursor")) svg.setAttribute("viewBox", `0 0 ${side} ${side}`);
  el.explore.disabled = false;
  const mode = ctx.store.get().mode;
  el.mode.value = [...el.mode.options].some((option) => option.value === mode) ? mode : "auto";
  markStale();
  setHover(null);
  loadProjection();
}

/** Which method ran, whether it was approximate, its time and planned speed-up. */
function renderMethod(r) {
  const { h } = ctx;
  const method = r.method || "dense";
  const approximate = Boolean(r.approximate);
  const ratio = r.planned_ratio;
  Object.assign(el.ran.dataset, {
    method,
    approximate: String(approximate),
    plannedRatio: ratio === null || ratio === undefined ? "" : String(ratio),
    seconds: r.seconds === undefined || r.seconds === null ? "" : String(r.seconds),
  });
  const parts = [h("b", { class: "occ-method" }, method), approximate ? h("span", { class: "occ-approx-tag", dataset: { role: "occlusion-approximate" } }, "approximate") : h("span", { class: "occ-exact" }, "exact")];
  if (r.seconds !== undefined && r.seconds !== null) parts.push(h("span", {}, `${Number(r.seconds).toFixed(r.seconds < 10 ? 2 : 1)} s on the server`));
  if (ratio !== null && ratio !== undefined && ratio > 0) {
    const share = `${(ratio * 100).toFixed(1)} %`;
    const text = method === "dense" ? `incremental would plan ${share} of dense's arithmetic: too little saved, so auto ran dense` : `planned ${(1 / ratio).toFixed(1)}× less arithmetic than dense (${share})`;
    parts.push(h("span", { class: "occ-speedup", title: "multiply-adds of the incremental plan over those of dense" }, text));
  }
  const details = [];
  if (r.approx !== null && r.approx !== undefined) details.push(`cap τ = ${r.approx}`);
  if (r.adaptive !== null && r.adaptive !== undefined) details.push(`drill-down ${r.adaptive} · ${Number(r.positions_computed).toLocaleString("en")} of ${(r.rows * r.cols).toLocaleString("en")} positions computed`);
  if (details.length) parts.push(h("span", {}, details.join(" · ")));
  if (r.note) parts.push(h("span", { class: "occ-note-inline", dataset: { role: "occlusion-note" } }, r.note));
  el.ran.replaceChildren(...parts);
  el.ran.classList.toggle("is-approximate", approximate);
  el.ran.hidden = false;
}

/** Position the rows × cols canvas over the input: cell centres at the occluder centres. */
function place(canvas, r, side) {
  const offset = r.size / 2 - r.stride / 2;
  const pct = (v) => `${((v / side) * 100).toFixed(4)}%`;
  canvas.width = r.cols;
  canvas.height = r.rows;
  Object.assign(canvas.style, { left: pct(offset), top: pct(offset), width: pct(r.cols * r.stride), height: pct(r.rows * r.stride) });
  canvas.hidden = false;
}

function range(values, fixed) {
  if (fixed) return [0, 1];
  let lo = Infinity;
  let hi = -Infinity;
  for (const row of values) for (const v of row) if (v !== null && Number.isFinite(v)) [lo, hi] = [Math.min(lo, v), Math.max(hi, v)];
  return lo <= hi ? [lo, hi] : [0, 1];
}

function drawMap(name) {
  const r = result;
  const map = maps[name];
  const context = map.canvas.getContext("2d");
  const image = context.createImageData(r.cols, r.rows);
  const px = image.data;
  if (name === "top_label") {
    const colours = labelColours(r);
    for (let y = 0; y < r.rows; y++)
      for (let x = 0; x < r.cols; x++) {
        const [cr, cg, cb] = hexRgb(colours.get(r.top_label[y][x]) || OTHER);
        const i = (y * r.cols + x) * 4;
        [px[i], px[i + 1], px[i + 2], px[i + 3]] = [cr, cg, cb, 255];
      }
    context.putImageData(image, 0, 0);
    renderLabelLegend(r, colours);
    return;
  }
  const values = name === "probability" ? r.probability : r.feature.activity;
  const [lo, hi] = range(values, name === "probability" && el.unitScale.checked);
  const table = lut(CMAP[name]);
  for (let y = 0; y < r.rows; y++)
    for (let x = 0; x < r.cols; x++) {
      const v = values[y][x];
      const i = (y * r.cols + x) * 4;
      if (v === null || !Number.isFinite(v)) continue; // not finite: left transparent
      const t = hi > lo ? Math.min(1, Math.max(0, (v - lo) / (hi - lo))) : 0.5;
      const k = Math.round(t * 255) * 3;
      [px[i], px[i + 1], px[i + 2], px[i + 3]] = [table[k], table[k + 1], table[k + 2], 255];
    }
  context.putImageData(image, 0, 0);
  const reference = name === "probability" ? r.unoccluded?.probability : r.unoccluded?.activity;
  renderScale(map.legend, CMAP[name], lo, hi, reference, name === "probability" ? "P" : "activity");
}

function renderScale(legend, cmap, lo, hi, reference, what) {
  const { h } = ctx;
  const bar = h("span", { class: "occ-bar", style: { background: gradientCss(cmap) } });
  if (reference !== null && reference !== undefined && Number.isFinite(reference) && hi > lo) {
    const t = (reference - lo) / (hi - lo);
    if (t >= 0 && t <= 1) bar.append(h("i", { class: "occ-ref", style: { left: `${(t * 100).toFixed(2)}%` }, title: `without the occluder: ${fmtValue(reference)}` }));
  }
  legend.dataset.min = String(lo);
  legend.dataset.max = String(hi);
  legend.replaceChildren(
    h("span", { class: "occ-bar-row" }, h("span", { class: "occ-bar-end" }, fmtValue(lo)), bar, h("span", { class: "occ-bar-end" }, fmtValue(hi))),
    h("span", { class: "occ-bar-note" }, reference === null || reference === undefined ? "" : [h("i", { class: "occ-ref-key" }), ` unoccluded ${what} ${fmtValue(reference)}`]),
  );
}

function fmtValue(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  if (Math.abs(v) < 1 && v !== 0 && Math.abs(v) >= 1e-3) return v.toFixed(3);
  return fmt(v);
}

/** class index -> colour: most frequent first (the unoccluded top-1 always coloured), the rest OTHER. */
function labelColours(r) {
  const counts = new Map();
  for (const row of r.top_label) for (const v of row) counts.set(v, (counts.get(v) || 0) + 1);
  const order = [...counts.keys()].sort((a, b) => counts.get(b) - counts.get(a) || a - b);
  const top = r.unoccluded?.top_label;
  if (top !== undefined && counts.has(top)) {
    order.splice(order.indexOf(top), 1);
    order.unshift(top);
  }
  const colours = new Map();
  order.forEach((index, i) => colours.set(index, i < PALETTE.length ? PALETTE[i] : null));
  r.labelCounts = counts;
  r.labelOrder = order;
  return colours;
}

function hexRgb(hex) {
  const n = Number.parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

function labelName(r, index) {
  return r.top_label_names?.[index] ?? labels[index]?.label ?? `class ${index}`;
}

function renderLabelLegend(r, colours) {
  const { h } = ctx;
  const total = r.rows * r.cols;
  const coloured = r.labelOrder.filter((index) => colours.get(index));
  const rest = r.labelOrder.filter((index) => !colours.get(index));
  const item = (index, colour) => {
    const name = labelName(r, index);
    const marks = [];
    if (index === r.unoccluded?.top_label) marks.push("top-1");
    if (index === r.target) marks.push("target");
    return h(
      "li",
      { dataset: { label: String(index) } },
      h(
        "button",
        { type: "button", title: `${name} (class ${index}) · ${r.labelCounts.get(index)} of ${total} positions · click to make it the target`, onclick: () => setTarget(index) },
        h("i", { style: { background: colour } }),
        h("span", { class: "occ-label-name" }, shortLabel(name)),
        h("span", { class: "occ-label-count" }, `${r.labelCounts.get(index)}`),
        marks.length ? h("span", { class: "occ-label-mark" }, marks.join(" · ")) : null,
      ),
    );
  };
  const items = coloured.map((index) => item(index, colours.get(index)));
  if (rest.length) {
    const count = rest.reduce((sum, index) => sum + r.labelCounts.get(index), 0);
    items.push(h("li", { class: "occ-other", title: rest.map((index) => shortLabel(labelName(r, index))).join(", ") }, h("span", {}, h("i", { style: { background: OTHER } }), `${rest.length} other labels`, h("span", { class: "occ-label-count" }, String(count)))));
  }
  el.labelLegend.replaceChildren(...items);
  const top = r.unoccluded?.top_label;
  maps.top_label.legend.replaceChildren(
    top === undefined ? "" : h("span", {}, h("i", { class: "occ-swatch", style: { background: colours.get(top) || OTHER } }), "unoccluded ", h("b", {}, shortLabel(labelName(r, top)))),
    h("span", {}, `${r.labelOrder.length} label${r.labelOrder.length === 1 ? "" : "s"} occur · listed below`),
  );
}

function setTarget(index) {
  const name = labels[index]?.label ?? result?.top_label_names?.[index];
  el.target.value = name ? `${name} (${index})` : String(index);
  el.target.focus();
  el.progressText.textContent = "Target set: press Run to compute its map.";
}

// ---- the projection (Fig. 7c) ----------------------------------------------------------------------
async function loadProjection() {
  if (!result) return;
  const token = ++projectionToken;
  const r = result;
  const params = { layer: r.feature.layer, channel: r.feature.channel, mode: el.mode.value, select: "max" };
  syncProjHint();
  el.projectionEmpty.textContent = "projecting…";
  el.projectionStage.classList.add("is-loading");
  try {
    const { blob } = await ctx.api.projection(r.model, r.image, params, { slot: "occlusion-projection" });
    const shown = el.contrast.checked ? await autoContrast(blob) : blob;
    if (token !== projectionToken) return;
    if (projectionUrl) URL.revokeObjectURL(projectionUrl);
    projectionUrl = URL.createObjectURL(shown);
    Object.assign(el.projection.dataset, { projLayer: params.layer, projChannel: String(params.channel), projMode: params.mode });
    el.projection.src = projectionUrl;
    el.projection.hidden = false;
    el.projectionEmpty.hidden = true;
  } catch (error) {
    if (error.aborted || token !== projectionToken) return;
    el.projection.hidden = true;
    el.projectionEmpty.hidden = false;
    el.projectionEmpty.textContent = `The projection could not be computed: ${error.message}`;
  } finally {
    if (token === projectionToken) el.projectionStage.classList.remove("is-loading");
  }
}

function syncProjHint() {
  // a deconvnet without max-pool switches below the feature's layer reads nothing of the image: say so
  const info = result ? layerRows.find((row) => row.name === result.feature.layer) : null;
  el.projHint.hidden = !result || hasSwitches(info) !== false || el.mode.value !== "deconvnet";
}

function openInExplore() {
  if (!result) return;
  ctx.store.set({ tab: "explore", model: result.model, image: result.image, layer: result.feature.layer, channel: result.feature.channel, unit: null, mode: el.mode.value });
}

// ---- hover -----------------------------------------------------------------------------------------
function onPointer(stage, event) {
  if (!result) return;
  const r = result;
  const box = stage.getBoundingClientRect();
  const px = ((event.clientX - box.left) / box.width) * r.side;
  const py = ((event.clientY - box.top) / box.height) * r.side;
  const col = Math.floor((px - r.size / 2 + r.stride / 2) / r.stride);
  const row = Math.floor((py - r.size / 2 + r.stride / 2) / r.stride);
  setHover(row >= 0 && row < r.rows && col >= 0 && col < r.cols ? [row, col] : null);
}

function onKey(event) {
  if (!result) return;
  const steps = { ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0] };
  if (event.key === "Escape") return setHover(null);
  if (!(event.key in steps)) return;
  event.preventDefault();
  const [dy, dx] = steps[event.key];
  const [row, col] = hover || [Math.floor(result.rows / 2), Math.floor(result.cols / 2)];
  setHover([Math.min(result.rows - 1, Math.max(0, row + (hover ? dy : 0))), Math.min(result.cols - 1, Math.max(0, col + (hover ? dx : 0)))]);
}

function setHover(cell) {
  hover = cell;
  const r = result;
  for (const svg of root.querySelectorAll(".occ-cursor")) {
    const [square, box] = svg.querySelectorAll("rect");
    if (!cell || !r) {
      square.setAttribute("visibility", "hidden");
      box.setAttribute("visibility", "hidden");
      continue;
    }
    const [row, col] = cell;
    const y = row * r.stride;
    const x = col * r.stride;
    const c = r.size / 2 - r.stride / 2;
    for (const [rect, ry, rx, side] of [[square, y, x, r.size], [box, y + c, x + c, r.stride]]) {
      rect.setAttribute("x", String(rx));
      rect.setAttribute("y", String(ry));
      rect.setAttribute("width", String(side));
      rect.setAttribute("height", String(side));
      rect.setAttribute("visibility", "visible");
    }
  }
  renderReadout();
}

function renderReadout() {
  const { h } = ctx;
  const r = result;
  if (!r) {
    el.readout.replaceChildren(h("span", { class: "occ-hint" }, "Choose a square size and stride, then press Run. Occlusion takes one forward pass per position."));
    return;
  }
  const field = (name, label, value, text, title) =>
    h("span", { class: "occ-field", dataset: { field: name, value: value === null || value === undefined ? "" : String(value) }, title }, h("span", { class: "occ-field-label" }, label), h("b", {}, text));
  const target = shortLabel(r.top_label_names?.[r.target] ?? r.target_label);
  if (!hover) {
    const u = r.unoccluded || {};
    el.readout.dataset.row = "";
    el.readout.dataset.col = "";
    el.readout.replaceChildren(
      h("span", { class: "occ-hint" }, "Hover a map (or focus it and use the arrow keys) to read one occluder position. Without an occluder:"),
      field("probability", `P(${target})`, u.probability, fmtValue(u.probability)),
      field("label", "label", u.top_label, u.top_label === undefined ? "–" : `${shortLabel(labelName(r, u.top_label))} (${u.top_label})`),
      field("activity", "activity", u.activity, fmtValue(u.activity)),
    );
    return;
  }
  const [row, col] = hover;
  const p = r.probability[row][col];
  const top = r.top_label[row][col];
  const a = r.feature.activity[row][col];
  el.readout.dataset.row = String(row);
  el.readout.dataset.col = String(col);
  const delta = (v, ref) => (v === null || ref === null || ref === undefined ? "" : ` (${v - ref >= 0 ? "+" : "−"}${fmtValue(Math.abs(v - ref))})`);
  el.readout.replaceChildren(
    field("position", "occluder at", `${row * r.stride},${col * r.stride}`, `y ${row * r.stride}, x ${col * r.stride}`, `row ${row}, column ${col}; the square covers y ${row * r.stride}–${row * r.stride + r.size - 1}, x ${col * r.stride}–${col * r.stride + r.size - 1}`),
    field("probability", `P(${target})`, p, fmtValue(p) + delta(p, r.unoccluded?.probability)),
    field("label", "most probable", top, `${shortLabel(labelName(r, top))} (${top})`, labelName(r, top)),
    field("activity", `activity #${r.feature.channel}`, a, fmtValue(a) + delta(a, r.unoccluded?.activity)),
  );
}

// ---- stale results and state -------------------------------------------------------------------------
function markStale() {
  const { model, image } = ctx.store.get();
  const stale = Boolean(result && (result.model !== model || result.image !== image));
  el.stale.hidden = !stale;
  el.results.classList.toggle("is-stale", stale);
  if (stale) el.stale.textContent = `These maps are for ${result.image} on ${result.model}; the selected image is now ${image} on ${model}. Press Run to compute them for it.`;
  if (!result) {
    const src = model && image ? ctx.urls.image(image, model) : null;
    for (const map of Object.values(maps)) {
      const img = map.stage.querySelector("img");
      if (src) img.src = src;
      else img.removeAttribute("src");
    }
  }
}

// ---- the tab interface -------------------------------------------------------------------------------
async function mount(section, context) {
  ctx = context;
  root = section;
  root.classList.add("occlusion-view");
  build();
  describeCurrent();
  updateEstimate();
  markStale();
  renderReadout();
  await Promise.all([loadLayers(), loadLabels()]);
  useClass(ctx.store.get().class);
  root.dataset.ready = "true";
}

/** The class chosen in the Top-5 panel (`class` in the hash) becomes the target. */
function useClass(index) {
  if (index === null || index === undefined) return;
  const name = labels[index]?.label;
  el.target.value = name ? `${name} (${index})` : String(index);
}

function update(state, changed) {
  if (!root) return;
  if (changed.has("class")) useClass(state.class);
  if (changed.has("model") || changed.has("image")) {
    describeCurrent();
    markStale();
  }
  if (changed.has("model")) {
    updateEstimate();
    loadLayers();
    loadLabels();
  }
}

function show() {
  if (!root) return;
  updateEstimate(); // the models' input size may have arrived since
  loadLayers();
  loadLabels();
}

/** The view, as tabs.js takes it: createView({root, ctx}) → {ready, update, show}. */
export function createView({ root: section, ctx: context }) {
  return { ready: mount(section, context), update, show };
}
