// Correspondence view (paper Fig. 8 / Table 1): occlude the same object part in
// several images and measure how consistently the features change.
//
// Draw a box per part on every chosen image with the mouse (or start from the
// bundled eyes-and-nose annotation), run, and read a Table 1-like table: Δ per
// part and for random boxes of the same sizes (mean ± std over seeded draws), at
// two layers. Lower Δ = the part's occlusion changes the features the same way in
// every image. POST /api/models/{m}/analyses/correspondence runs it as a job.

import { injectStyle, panel } from "./util.js";
import { jobControls } from "./jobs.js";

const PART_COLOURS = ["#ff7a6b", "#6fd08c", "#3ee0ff", "#f0b43c", "#c792ea", "#ff9edb", "#9fb4ff", "#e0e0e0"];
const MAX_IMAGES = 16;

const CSS = `
.cor { display: grid; grid-template-columns: minmax(0, 1fr) 380px; gap: var(--gap); align-items: start; }
.cor .panel { gap: 8px; }
.cor-bar { display: flex; flex-wrap: wrap; align-items: center; gap: 6px; }
.cor-bar .label { color: var(--muted); font-size: 12px; margin-right: 2px; }
.cor-chip { display: inline-flex; align-items: center; gap: 5px; padding: 2px 7px; border: 1px solid var(--line-strong); border-radius: 6px; background: var(--panel-2); color: var(--muted); cursor: pointer; font-size: 12px; }
.cor-chip img { width: 22px; height: 22px; object-fit: cover; border-radius: 4px; margin-left: -5px; }
.cor-chip[aria-pressed="true"], .cor-chip[aria-checked="true"] { border-color: var(--accent); color: var(--text); background: var(--accent-soft); }
.cor-chip i { width: 10px; height: 10px; border-radius: 2px; display: inline-block; }
.cor-chip .x { margin-left: 2px; color: var(--faint); padding: 0 2px; border: 0; background: none; cursor: pointer; }
.cor-chip .x:hover { color: var(--error); }
.cor-bar input[type="text"], .cor-set input, .cor-set select { padding: 3px 6px; background: var(--panel-2); border: 1px solid var(--line-strong); border-radius: 6px; min-width: 0; }
.cor-bar input[type="text"] { width: 110px; }
.cor-stages { display: flex; flex-wrap: wrap; gap: 10px; }
.cor-stage { margin: 0; }
.cor-stage canvas { width: 300px; height: 300px; display: block; border-radius: 6px; background: var(--panel-2); cursor: crosshair; touch-action: none; }
.cor-stage figcaption { color: var(--muted); font-size: 11.5px; margin-top: 3px; max-width: 300px; }
.cor-stage figcaption .missing { color: var(--accent); }
.cor-set { display: grid; grid-template-columns: 78px minmax(0, 1fr); gap: 6px; align-items: center; color: var(--muted); }
.cor-set .pair { display: grid; grid-template-columns: 1fr 1fr; gap: 6px; }
.cor-run { display: flex; gap: 8px; align-items: center; }
.cor-run progress { flex: 1; height: 6px; accent-color: var(--accent); }
.cor-table { width: 100%; border-collapse: collapse; font-size: 12.5px; }
.cor-table caption { text-align: left; color: var(--muted); padding-bottom: 4px; font-size: 12px; }
.cor-table th, .cor-table td { padding: 4px 6px; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
.cor-table th:first-child, .cor-table td:first-child { text-align: left; }
.cor-table th { color: var(--muted); font-weight: 500; font-size: 11.5px; overflow: hidden; text-overflow: ellipsis; max-width: 130px; }
.cor-table td { font-family: var(--mono); }
.cor-table td:first-child { font-family: var(--sans); }
.cor-table tr.random td { color: var(--muted); }
.cor-table td.lower { color: var(--ok); }
.cor-note { color: var(--faint); font-size: 11.5px; margin: 0; line-height: 1.45; }
@media (max-width: 1100px) { .cor { grid-template-columns: 1fr; } }
`;

let ctx = null;
let root = null;
let samples = [];
let demo = null;
let chosen = [];
let parts = []; // ordered part names
let boxes = {}; // part -> image -> [x, y, w, h]
let active = null;
let result = null;
let controls = null; // the Run / Cancel / progress of the job (jobs.js)
let size = 224;
const pictures = new Map(); // image id -> HTMLImageElement
const el = {};


const colourOf = (part) => PART_COLOURS[Math.max(0, parts.indexOf(part)) % PART_COLOURS.length];
const model = () => ctx.store.get().model;

// ---- layout -----------------------------------------------------------------------------------------
function build() {
  const { h } = ctx;
  el.images = h("div", { class: "cor-bar", role: "group", "aria-label": "Images", dataset: { role: "cor-images" } });
  el.parts = h("div", { class: "cor-bar", role: "radiogroup", "aria-label": "Part to draw", dataset: { role: "cor-parts" } });
  el.newPart = h("input", { type: "text", placeholder: "new part", "aria-label": "Name of a new part", spellcheck: "false", dataset: { role: "cor-new-part" } });
  el.newPart.addEventListener("keydown", (event) => {
    if (event.key === "Enter") addPart();
  });
  el.stages = h("div", { class: "cor-stages", dataset: { role: "cor-stages" } });
  el.layerA = h("select", { "aria-label": "First layer", dataset: { role: "cor-layer-a" } });
  el.layerB = h("input", { type: "text", value: "penultimate", spellcheck: "false", "aria-label": "Second layer", dataset: { role: "cor-layer-b" } });
  el.draws = h("input", { type: "number", min: "1", max: "100", value: "5", "aria-label": "Random draws", dataset: { role: "cor-draws" } });
  el.seed = h("input", { type: "number", min: "0", value: "0", "aria-label": "Random seed", dataset: { role: "cor-seed" } });
  el.run = h("button", { type: "button", class: "btn", dataset: { role: "cor-run" }, onclick: run }, "Run");
  el.cancel = h("button", { type: "button", class: "btn", hidden: true, dataset: { role: "cor-cancel" } }, "Cancel");
  el.progress = h("progress", { max: 1, value: 0, hidden: true, "aria-label": "Progress" });
  controls = jobControls({ root, run: el.run, cancel: el.cancel, progress: el.progress });
  el.error = h("div", { class: "error", role: "alert", hidden: true, dataset: { role: "cor-error" } });
  el.table = h("div", { dataset: { role: "cor-result" } });
  el.summary = h("span", { class: "panel-note", dataset: { role: "cor-summary" } });

  const left = panel(
    { id: "cor-title", title: "Correspondence · Fig. 8" },
    [
      h(
        "div",
        { class: "panel-tools" },
        h("button", { type: "button", class: "btn", onclick: loadDemo, dataset: { role: "cor-demo" }, title: "Eyes and nose on the sample photos with faces" }, "Demo boxes"),
        h("button", { type: "button", class: "btn", onclick: clearBoxes, dataset: { role: "cor-clear" } }, "Clear boxes"),
      ),
    ],
    h("div", { class: "cor-bar" }, h("span", { class: "label" }, "Images"), el.images),
    h("div", { class: "cor-bar" }, h("span", { class: "label" }, "Draw"), el.parts, el.newPart, h("button", { type: "button", class: "btn", onclick: addPart }, "Add part")),
    el.stages,
    h("p", { class: "cor-note" }, "Drag on an image to box the selected part there (drawing again replaces it). Boxes are in the model's input frame."),
  );
  const right = panel(
    { id: "cor-table-title", title: "Δ · Table 1" },
    [
      el.summary,
    ],
    h(
      "div",
      { class: "cor-set" },
      h("span", {}, "layers"),
      h("div", { class: "pair" }, el.layerA, el.layerB),
      h("span", {}, "draws · seed"),
      h("div", { class: "pair" }, el.draws, el.seed),
    ),
    h("div", { class: "cor-run" }, el.run, el.cancel, el.progress),
    el.error,
    el.table,
    h(
      "p",
      { class: "cor-note" },
      "ε_i = x_i − x̃_i is the change of image i's features when the part is occluded (mean colour); Δ is the mean over image pairs ",
      "of the fraction of feature signs that differ between ε_i and ε_j. Random: boxes of each part's sizes at seeded random places ",
      "(never outside the image); ± is the spread over draws. Green: lower than random by more than its spread.",
    ),
  );
  root.replaceChildren(h("div", { class: "cor" }, left, right));
}

// ---- images and parts -----------------------------------------------------------------------------------
function renderImages() {
  const { h } = ctx;
  const current = ctx.store.get().image;
  const list = samples.map((s) => ({ id: s.id, thumb: s.thumbnail_url || ctx.urls.thumbnail(s.id), name: s.name }));
  if (current && !list.some((s) => s.id === current)) list.unshift({ id: current, thumb: ctx.urls.image(current, model()), name: "current image" });
  el.images.replaceChildren(
    ...list.map((item) =>
      h(
        "button",
        {
          type: "button",
          class: "cor-chip",
          title: item.name,
          "aria-pressed": String(chosen.includes(item.id)),
          dataset: { image: item.id },
          onclick: () => toggleImage(item.id),
        },
        h("img", { src: item.thumb, alt: "" }),
        item.id,
      ),
    ),
  );
}

function toggleImage(id) {
  if (chosen.includes(id)) chosen = chosen.filter((x) => x !== id);
  else if (chosen.length < MAX_IMAGES) chosen = [...chosen, id];
  renderImages();
  renderStages();
}

function renderParts() {
  const { h } = ctx;
  el.parts.replaceChildren(
    ...parts.map((part) =>
      h(
        "span",
        {
          class: "cor-chip",
          role: "radio",
          tabindex: "0",
          "aria-checked": String(part === active),
          dataset: { part },
          onclick: () => {
            active = part;
            renderParts();
            renderStages();
          },
          onkeydown: (event) => {
            if (event.key === "Enter" || event.key === " ") {
              event.preventDefault();
              active = part;
              renderParts();
              renderStages();
            }
          },
        },
        h("i", { style: { background: colourOf(part) } }),
        part,
        h(
          "button",
          {
            type: "button",
            class: "x",
            "aria-label": `Remove part ${part}`,
            onclick: (event) => {
              event.stopPropagation();
              removePart(part);
            },
          },
          "×",
        ),
      ),
    ),
  );
}

function addPart() {
  const name = el.newPart.value.trim().replace(/\s+/g, "_");
  if (!name || name === "random" || parts.includes(name)) return;
  parts = [...parts, name];
  boxes[name] = {};
  active = name;
  el.newPart.value = "";
  renderParts();
  renderStages();
}

function removePart(part) {
  parts = parts.filter((p) => p !== part);
  delete boxes[part];
  if (active === part) active = parts[0] || null;
  renderParts();
  renderStages();
}

function clearBoxes() {
  for (const part of parts) boxes[part] = {};
  renderStages();
}

async function loadDemo() {
  try {
    demo = await ctx.request(ctx.urls.analysis(model(), "correspondence/demo"));
  } catch (error) {
    ctx.showError(el.error, `The demo annotation could not be loaded: ${error.message}`);
    return;
  }
  size = demo.size || size;
  chosen = [...demo.images];
  parts = Object.keys(demo.parts);
  boxes = {};
  for (const part of parts) boxes[part] = { ...demo.parts[part] };
  active = parts[0] || null;
  renderImages();
  renderParts();
  renderStages();
}

// ---- drawing boxes ----------------------------------------------------------------------------------------------
function picture(id) {
  let img = pictures.get(`${model()}|${id}`);
  if (!img) {
    img = new Image();
    img.src = ctx.urls.image(id, model());
    pictures.set(`${model()}|${id}`, img);
  }
  return img;
}

function renderStages() {
  const { h } = ctx;
  el.stages.replaceChildren(
    ...chosen.map((id) => {
      const canvas = h("canvas", { width: 2 * size, height: 2 * size, "aria-label": `Image ${id}: drag to box the selected part`, dataset: { image: id } });
      const caption = h("figcaption", {});
      const figure = h("figure", { class: "cor-stage", dataset: { image: id } }, canvas, caption);
      attachDrawing(canvas, id, caption);
      paint(canvas, id, caption);
      const img = picture(id);
      if (!img.complete) img.addEventListener("load", () => paint(canvas, id, caption), { once: true });
      return figure;
    }),
  );
}

function paint(canvas, id, caption, draft = null) {
  const g = canvas.getContext("2d");
  const k = canvas.width / size; // the canvas holds 2 pixels per input pixel
  g.setTransform(1, 0, 0, 1, 0, 0);
  g.clearRect(0, 0, canvas.width, canvas.height);
  const img = picture(id);
  if (img.complete && img.naturalWidth) g.drawImage(img, 0, 0, canvas.width, canvas.height);
  const draw = (part, box, dashed) => {
    const [x, y, w, hgt] = box.map((v) => v * k);
    g.save();
    g.lineWidth = part === active ? 3 : 2;
    g.strokeStyle = colourOf(part);
    if (dashed) g.setLineDash([6, 4]);
    g.strokeRect(x + 1, y + 1, w - 2, hgt - 2);
    g.restore();
  };
  for (const part of parts) if (boxes[part]?.[id]) draw(part, boxes[part][id], false);
  if (draft) draw(active, draft, true);
  const missing = parts.filter((p) => !boxes[p]?.[id]);
  caption.replaceChildren(id, missing.length ? ctx.h("span", { class: "missing" }, ` · no box: ${missing.join(", ")}`) : "");
}

function attachDrawing(canvas, id, caption) {
  let start = null;
  const at = (event) => {
    const rect = canvas.getBoundingClientRect();
    const x = Math.min(size, Math.max(0, ((event.clientX - rect.left) / rect.width) * size));
    const y = Math.min(size, Math.max(0, ((event.clientY - rect.top) / rect.height) * size));
    return [x, y];
  };
  const boxFrom = (a, b) => {
    const x0 = Math.floor(Math.min(a[0], b[0]));
    const y0 = Math.floor(Math.min(a[1], b[1]));
    const x1 = Math.ceil(Math.max(a[0], b[0]));
    const y1 = Math.ceil(Math.max(a[1], b[1]));
    return [x0, y0, Math.max(1, Math.min(size, x1) - x0), Math.max(1, Math.min(size, y1) - y0)];
  };
  canvas.addEventListener("pointerdown", (event) => {
    if (!active) return ctx.showError(el.error, "Add a part first (e.g. “left_eye”), then draw its box.");
    start = at(event);
    canvas.setPointerCapture?.(event.pointerId);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (start) paint(canvas, id, caption, boxFrom(start, at(event)));
  });
  const finish = (event) => {
    if (!start) return;
    const box = boxFrom(start, at(event));
    start = null;
    if (box[2] >= 2 && box[3] >= 2) {
      boxes[active] = { ...(boxes[active] || {}), [id]: box };
      result = null;
    }
    paint(canvas, id, caption);
  };
  canvas.addEventListener("pointerup", finish);
  canvas.addEventListener("pointercancel", () => {
    start = null;
    paint(canvas, id, caption);
  });
}

function renderLayers() {
  const layers = (ctx.layers() || []).filter((l) => l.kind !== "Identity");
  const keep = el.layerA.value;
  el.layerA.replaceChildren(...layers.map((l) => ctx.h("option", { value: l.name }, `${l.name} · ${l.kind}`)));
  const convs = layers.filter((l) => /Conv/.test(l.kind));
  el.layerA.value = layers.some((l) => l.name === keep) ? keep : convs[convs.length - 1]?.name || "";
}

// ---- running ------------------------------------------------------------------------------------------------------
async function run() {
  ctx.showError(el.error, "");
  if (chosen.length < 2) return ctx.showError(el.error, "Choose at least two images.");
  if (!parts.length) return ctx.showError(el.error, "Add at least one part and box it on every image.");
  const missing = [];
  for (const part of parts) for (const id of chosen) if (!boxes[part]?.[id]) missing.push(`${part} on ${id}`);
  if (missing.length) return ctx.showError(el.error, `Missing boxes: ${missing.join(", ")}.`);
  const layers = [el.layerA.value, el.layerB.value.trim()].filter(Boolean);
  const body = {
    images: chosen,
    parts: Object.fromEntries(parts.map((part) => [part, chosen.map((id) => boxes[part][id])])),
    size,
    layers: layers.length ? layers : null,
    draws: Math.round(Number(el.draws.value)) || 5,
    seed: Math.max(0, Math.round(Number(el.seed.value)) || 0),
  };
  await controls.start(ctx.urls.analysis(model(), "correspondence"), body, {
    onResult: (data) => {
      result = data;
      renderTable();
    },
    onError: (error) => ctx.showError(el.error, error.aborted ? "Cancelled." : error.message),
  });
}

function renderTable() {
  const { h } = ctx;
  if (!result) {
    el.table.replaceChildren();
    el.summary.textContent = "";
    return;
  }
  const random = result.table.find((row) => row.occlusion === "random");
  const cell = (row, layer) => {
    const { mean, std } = row.delta[layer];
    const base = random.delta[layer];
    const lower = row !== random && mean < base.mean - base.std;
    return h(
      "td",
      { class: lower ? "lower" : null, dataset: { layer, value: String(mean) }, title: row === random ? `min ${result.random.delta[layer].min.toFixed(4)}, max ${result.random.delta[layer].max.toFixed(4)}` : null },
      std === null ? mean.toFixed(4) : `${mean.toFixed(4)} ± ${std.toFixed(4)}`,
    );
  };
  el.table.replaceChildren(
    h(
      "table",
      { class: "cor-table" },
      h("caption", {}, `${result.images.length} images · ${result.random.draws} random draws (seed ${result.random.seed})`),
      h("thead", {}, h("tr", {}, h("th", {}, "occlusion"), ...result.layers.map((layer) => h("th", { title: layer }, `Δ ${layer}`)))),
      h(
        "tbody",
        {},
        ...result.table.map((row) =>
          h("tr", { class: row === random ? "random" : null, dataset: { occlusion: row.occlusion } }, h("td", {}, row.occlusion), ...result.layers.map((layer) => cell(row, layer))),
        ),
      ),
    ),
  );
  el.summary.textContent = `${result.forward_passes} passes · ${result.seconds.toFixed(1)} s`;
}

// ---- the tab interface --------------------------------------------------------------------------------------------------
async function mount(section, context) {
  ctx = context;
  root = section;
  injectStyle("css-analysis-correspondence", CSS);
  build();
  const info = (ctx.models() || []).find((m) => m.name === model());
  size = info?.input_size || 224;
  renderLayers();
  try {
    samples = await ctx.api.samples();
  } catch (error) {
    ctx.showError(el.error, `The sample photos could not be listed: ${error.message}`);
  }
  await loadDemo();
  root.dataset.ready = "true";
}

function update(state, changed) {
  if (!root) return;
  if (changed.has("model")) {
    const info = (ctx.models() || []).find((m) => m.name === state.model);
    result = null;
    renderTable();
    if ((info?.input_size || 224) !== size) {
      loadDemo();
      return;
    }
    renderStages();
  }
  if (changed.has("model") || changed.has("layer")) renderLayers();
  if (changed.has("image")) renderImages();
}

function show() {
  if (root) renderLayers();
}

/** The view, as tabs.js takes it: createView({root, ctx}) → {ready, update, show}. */
export function createView({ root, ctx: context }) {
  return { ready: mount(root, context), update, show };
}
