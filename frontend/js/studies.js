// Studies view (issue 9): finished training-time studies, read-only.
//
// GET /api/studies lists what `convscope train`, `evolution`, `ablate` and `probe`
// wrote below the server's studies folder (CONVSCOPE_STUDIES_DIR); GET
// /api/studies/{id} is one study's document. Shown here:
//   - ablation (paper Table 3): train / validation error per variant, mean ± std over seeds;
//   - probe (paper Table 7): linear SVM / softmax accuracy per layer, mean ± std over folds;
//   - evolution (paper Fig. 4): the montage (rows = feature maps, columns = epochs) and a
//     slider that steps through the epochs, showing that epoch's column enlarged;
//   - training: loss and accuracy per epoch.
// Long training runs are CLI jobs; this view only reads their results.

import { jobControls } from "./jobs.js";
import { injectStyle, panel } from "./util.js";

const CSS = `
.stu { display: grid; grid-template-columns: 290px minmax(0, 1fr); gap: var(--gap); align-items: start; }
.stu .panel { gap: 8px; }
.stu-list { list-style: none; margin: 0; padding: 0; display: grid; gap: 4px; max-height: calc(100vh - 170px); overflow: auto; }
.stu-item { display: grid; grid-template-columns: auto minmax(0, 1fr); gap: 2px 8px; align-items: center; width: 100%; text-align: left; padding: 6px 8px; border: 1px solid var(--line); border-radius: 6px; background: var(--panel-2); color: var(--text); cursor: pointer; font: inherit; font-size: 12.5px; }
.stu-item:hover { border-color: var(--line-strong); }
.stu-item[aria-current="true"] { border-color: var(--accent); background: var(--accent-soft); }
.stu-item .kind { font: 10.5px var(--mono); color: var(--accent-ink); background: var(--accent); border-radius: 4px; padding: 1px 5px; grid-row: span 2; align-self: start; }
.stu-item .kind.training { background: var(--muted); }
.stu-item .title { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.stu-item .when { color: var(--faint); font-size: 11px; font-family: var(--mono); overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.stu-note { color: var(--faint); font-size: 11.5px; margin: 0; line-height: 1.45; }
.stu-note code { font-family: var(--mono); color: var(--muted); }
.stu-empty { color: var(--faint); padding: 18px 4px; line-height: 1.5; }
.stu-run { display: flex; align-items: center; flex-wrap: wrap; gap: 8px; margin: 6px 0 14px; }
.stu-run progress { width: 180px; accent-color: var(--accent); }
.stu-table { border-collapse: collapse; font-size: 12.5px; width: 100%; }
.stu-table th, .stu-table td { padding: 4px 8px; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
.stu-table th:first-child, .stu-table td:first-child { text-align: left; white-space: normal; }
.stu-table th { color: var(--muted); font-weight: 500; }
.stu-table td { font-family: var(--mono); }
.stu-table td:first-child { font-family: var(--sans); }
.stu-table tr.base td { color: var(--accent); }
.stu-bar { display: inline-block; height: 8px; border-radius: 2px; vertical-align: middle; background: var(--marker); }
.stu-bar.err { background: var(--error); }
.stu-barcell { width: 160px; text-align: left !important; }
.stu-facts { margin: 0; display: flex; flex-wrap: wrap; gap: 2px 16px; font-size: 12px; color: var(--muted); }
.stu-facts b { color: var(--text); font-weight: 500; font-family: var(--mono); }
.stu-evo { display: grid; grid-template-columns: auto minmax(0, 1fr); gap: 14px; align-items: start; }
.stu-step { display: flex; align-items: center; gap: 10px; }
.stu-step input[type="range"] { width: 260px; accent-color: var(--accent); }
.stu-step output { font-family: var(--mono); min-width: 7ch; }
.stu-column { display: grid; gap: 3px; }
.stu-cell { display: grid; grid-template-columns: auto auto; gap: 8px; align-items: center; font-size: 11.5px; color: var(--muted); }
.stu-cell canvas { width: 96px; height: 96px; image-rendering: pixelated; border-radius: 3px; background: #fff; }
.stu-cell b { font-family: var(--mono); color: var(--text); font-weight: 500; }
.stu-montage { position: relative; display: inline-block; max-width: 100%; overflow: auto; }
.stu-montage img { display: block; max-width: 100%; height: auto; border-radius: 4px; background: #fff; }
.stu-drift td.on { color: var(--accent); }
.stu-montage .hl { position: absolute; border: 2px solid var(--accent); border-radius: 3px; pointer-events: none; box-shadow: 0 0 0 9999px rgba(0, 0, 0, 0.28); }
@media (max-width: 1100px) { .stu { grid-template-columns: 1fr; } .stu-evo { grid-template-columns: 1fr; } }
`;

const KIND_LABEL = { ablation: "Table 3", probe: "Table 7", evolution: "Fig. 4", training: "train" };
const CLASSIFIER_LABEL = { svm: "Linear SVM", softmax: "Softmax" };

let ctx = null;
let root = null;
let studies = [];
let current = null; // id of the study on show
let shown = 0;
const el = {};

const pct = (value) => (value === null || value === undefined || Number.isNaN(value) ? "–" : (100 * value).toFixed(1));

/** "97.2 ± 0.4" for a {mean, std, n} of fractions; `error` shows 100 − accuracy. */
function stat(s, { error = false } = {}) {
  if (!s || s.mean === null || s.mean === undefined) return "–";
  const mean = error ? 1 - s.mean : s.mean;
  return s.n > 1 ? `${pct(mean)} ± ${pct(s.std)}` : pct(mean);
}

function bar(fraction, cls = "") {
  const width = Math.max(0, Math.min(1, fraction || 0)) * 150;
  return ctx.h("span", { class: `stu-bar ${cls}`, style: { width: `${width.toFixed(1)}px` } });
}

function build() {
  const { h } = ctx;
  el.list = h("ul", { class: "stu-list", "data-role": "studies-list", "aria-label": "Finished studies" });
  el.where = h("p", { class: "stu-note", "data-role": "studies-dir" });
  el.error = h("div", { class: "error", role: "alert", hidden: true });
  el.view = h("div", { "data-role": "study-view" });
  el.title = h("h2", { id: "study-title", "data-role": "study-title" }, "Studies");
  const refresh = h("button", { type: "button", class: "btn", "data-role": "studies-refresh", onclick: () => load() }, "Refresh");
  root.replaceChildren(
    h(
      "div",
      { class: "stu" },
      panel(
        { id: "studies-list-title", title: "Finished studies" },
        [
          h("div", { class: "panel-tools" }, refresh),
        ],
        el.list,
        el.where,
      ),
      h("section", { class: "panel", "aria-labelledby": "study-title" }, h("header", { class: "panel-head" }, el.title), el.error, el.view),
    ),
  );
}

const DIGITS_EPOCHS = 5;

/** A fresh install: run the small digits study here, as a job with progress. */
function digitsRunner() {
  const { h } = ctx;
  const progress = h("progress", { max: 1, value: 0, hidden: true, "aria-label": "Digits study progress", "data-role": "studies-run-progress" });
  const status = h("span", { class: "stu-note", "aria-live": "polite", "data-role": "studies-run-status" });
  const cancel = h("button", { type: "button", class: "btn", hidden: true, "data-role": "studies-run-cancel" }, "Cancel");
  const run = h(
    "button",
    { type: "button", class: "btn", "data-role": "studies-run-digits", title: "zfnet-small on scikit-learn's handwritten digits, on this server's CPU" },
    `Train the small digits study (${DIGITS_EPOCHS} epochs, about a minute)`,
  );
  const controls = jobControls({ root, key: "digits", run, cancel, progress });
  run.addEventListener("click", () => {
    if (controls.busy()) return;
    status.textContent = "starting…";
    controls.start(ctx.urls.studyRun("digits"), { epochs: DIGITS_EPOCHS }, {
      onProgress: (state) => {
        status.textContent = state.state === "queued" ? "waiting for the server…" : `epoch ${state.done} of ${state.total}`;
      },
      onResult: async () => {
        status.textContent = "done";
        await load();
      },
      onError: (error) => {
        status.textContent = error.aborted ? "cancelled" : `failed: ${error.message}`;
      },
    });
  });
  return h("div", { class: "stu-run", "data-role": "studies-run" }, run, cancel, progress, status);
}

function emptyHelp() {
  const { h } = ctx;
  return h(
    "div",
    { class: "stu-empty" },
    h("p", {}, "No finished studies yet. Start with the small one here (a job on the server, with progress):"),
    digitsRunner(),
    h("p", {}, "Longer runs are command-line jobs; write their results below the server's studies folder, e.g.:"),
    h(
      "pre",
      { class: "stu-note" },
      "convscope train --data digits --epochs 30 --checkpoints 0.25,0.5,all --out $DIR/digits-run\n" +
        "convscope evolution --checkpoints $DIR/digits-run --images digits --out $DIR/digits-evolution.png\n" +
        'convscope ablate --data digits --variants "full;-6,7;-3,4;-3,4,6,7" --seeds 3 --out $DIR/digits-ablation\n' +
        "convscope probe --model efficientnet_lite0 --data digits --out $DIR/digits-probe.json",
    ),
  );
}

async function load() {
  ctx.showError(el.error, "");
  let body;
  try {
    body = await ctx.request(ctx.urls.studies(), { slot: "studies-list" });
  } catch (error) {
    if (!error.aborted) ctx.showError(el.error, error.message);
    return;
  }
  studies = body.studies;
  el.where.replaceChildren(
    body.studies_dir ? ctx.h("span", {}, "from ", ctx.h("code", {}, body.studies_dir), " (CONVSCOPE_STUDIES_DIR)") : "no studies folder is configured (CONVSCOPE_STUDIES_DIR)",
  );
  renderList();
  if (!studies.length) {
    current = null;
    el.title.textContent = "Studies";
    el.view.replaceChildren(emptyHelp());
    return;
  }
  const keep = studies.find((s) => s.id === current);
  await open(keep ? keep.id : studies[0].id);
}

function renderList() {
  const { h } = ctx;
  el.list.replaceChildren(
    ...studies.map((study) =>
      h(
        "li",
        {},
        h(
          "button",
          {
            type: "button",
            class: "stu-item",
            "data-role": "study-item",
            dataset: { id: study.id, kind: study.kind },
            "aria-current": String(study.id === current),
            title: `${study.title}\n${study.id.replaceAll("~", "/")}`,
            onclick: () => open(study.id),
          },
          h("span", { class: `kind ${study.kind}` }, KIND_LABEL[study.kind] || study.kind),
          h("span", { class: "title" }, study.title),
          h("span", { class: "when" }, `${study.modified.replace("T", " ").slice(0, 16)} · ${study.id.replaceAll("~", "/")}`),
        ),
      ),
    ),
  );
}

async function open(id) {
  current = id;
  renderList();
  ctx.showError(el.error, "");
  let doc;
  try {
    doc = await ctx.busy(el.view, ctx.request(ctx.urls.study(id), { slot: "study" }));
  } catch (error) {
    if (!error.aborted) ctx.showError(el.error, error.message);
    return;
  }
  if (current !== id) return;
  el.title.textContent = doc.title || id;
  root.dataset.study = id;
  root.dataset.kind = doc.study;
  const render = { ablation: renderAblation, probe: renderProbe, evolution: renderEvolution, training: renderTraining }[doc.study];
  el.view.replaceChildren(...(render ? render(doc) : [ctx.h("p", { class: "stu-empty" }, `No view for a ${doc.study} study.`)]));
}

function facts(pairs) {
  const { h } = ctx;
  return h("p", { class: "stu-facts" }, ...pairs.filter(([, v]) => v !== null && v !== undefined).map(([k, v]) => h("span", {}, `${k} `, h("b", {}, String(v)))));
}

function seconds(s) {
  if (s === null || s === undefined) return null;
  return s >= 90 ? `${(s / 60).toFixed(1)} min` : `${s.toFixed(1)} s`;
}

// ---- Table 3 -----------------------------------------------------------------------------
function renderAblation(doc) {
  const { h } = ctx;
  const top5 = Boolean(doc.top5);
  const worst = Math.max(...doc.variants.map((v) => 1 - (v.val_top1?.mean ?? 1)), 0.01);
  const head = ["Variant", "Parameters", "Train top-1 err %", "Val top-1 err %", ...(top5 ? ["Val top-5 err %"] : []), "Val top-1 err"];
  const rows = doc.variants.map((v, i) =>
    h(
      "tr",
      { class: i === 0 && v.variant === "full" ? "base" : "", dataset: { variant: v.variant } },
      h("td", { title: v.variant }, v.label),
      h("td", {}, v.parameters.toLocaleString("en")),
      h("td", {}, stat(v.train_top1, { error: true })),
      h("td", {}, stat(v.val_top1, { error: true })),
      top5 ? h("td", {}, stat(v.val_top5, { error: true })) : null,
      h("td", { class: "stu-barcell" }, bar((1 - (v.val_top1?.mean ?? 1)) / worst, "err")),
    ),
  );
  const seeds = doc.seeds || [];
  return [
    facts([
      ["dataset", doc.dataset],
      ["architecture", doc.arch],
      ["epochs", doc.epochs],
      ["seeds", seeds.join(", ")],
      ["time", seconds(doc.seconds)],
    ]),
    h("table", { class: "stu-table", "data-role": "ablation-table" }, h("thead", {}, h("tr", {}, ...head.map((t) => h("th", {}, t)))), h("tbody", {}, ...rows)),
    h(
      "p",
      { class: "stu-note" },
      `Error rates (100 − accuracy) as in the paper's Table 3; ${seeds.length > 1 ? "mean ± std over seeds" : "one seed"}, every variant with the same seed${seeds.length > 1 ? "s" : ""} and budget. ` +
        "The paper's finding: removing layers 6,7 or 3,4 costs little, removing 3,4,6,7 costs a lot — depth matters more than any single layer.",
    ),
  ];
}

// ---- Table 7 -----------------------------------------------------------------------------
function renderProbe(doc) {
  const { h } = ctx;
  const kinds = doc.classifiers || ["svm", "softmax"];
  const head = ["Layer", "Features", ...kinds.map((k) => `${CLASSIFIER_LABEL[k] || k} acc %`), "accuracy"];
  const rows = doc.layers.map((row) =>
    h(
      "tr",
      { dataset: { layer: row.layer } },
      h("td", {}, row.layer),
      h("td", {}, String(row.dims)),
      ...kinds.map((k) => h("td", {}, stat(row[k]))),
      h("td", { class: "stu-barcell", title: `chance ${pct(doc.chance)}%` }, bar(row[kinds[0]]?.mean)),
    ),
  );
  return [
    facts([
      ["model", doc.model],
      ["dataset", doc.dataset],
      ["images", doc.images],
      ["input", `${doc.input_size}×${doc.input_size}`],
      ["pooling", `${doc.pool_mode} ${doc.pool}×${doc.pool}`],
      ["folds", doc.folds],
      ["chance", `${pct(doc.chance)}%`],
      ["time", seconds((doc.seconds?.features || 0) + (doc.seconds?.fit || 0))],
    ]),
    h("table", { class: "stu-table", "data-role": "probe-table" }, h("thead", {}, h("tr", {}, ...head.map((t) => h("th", {}, t)))), h("tbody", {}, ...rows)),
    h(
      "p",
      { class: "stu-note" },
      `A linear classifier on each layer's features (spatially ${doc.pool_mode}-pooled to ${doc.pool}×${doc.pool}, standardised), ${doc.folds}-fold stratified cross-validation, mean ± std over folds; bars show the ${CLASSIFIER_LABEL[kinds[0]] || kinds[0]}. ` +
        "The paper's Table 7: accuracy rises with depth.",
    ),
  ];
}

// ---- Fig. 4 ---------------------------------------------------------------------------------
function epochText(epoch) {
  return Number.isInteger(epoch) ? String(epoch) : String(+epoch.toFixed(3));
}

function renderEvolution(doc) {
  const { h } = ctx;
  const geometry = doc.geometry;
  const rows = doc.shape.rows;
  const cols = doc.shape.cols;
  const image = h("img", { alt: `Feature evolution montage: ${rows} feature maps × ${cols} epochs`, "data-role": "evolution-montage", width: geometry.width, height: geometry.height });
  const highlight = h("div", { class: "hl", "aria-hidden": "true" });
  const montage = h("div", { class: "stu-montage" }, image, highlight);
  const slider = h("input", { type: "range", min: 0, max: cols - 1, step: 1, value: cols - 1, "data-role": "evolution-slider", "aria-label": "Epoch" });
  const label = h("output", { "data-role": "evolution-epoch" });
  const column = h("div", { class: "stu-column", "data-role": "evolution-column", "aria-live": "polite" });
  const canvases = doc.rows.map(() => h("canvas", { width: geometry.tile, height: geometry.tile }));
  const captions = doc.rows.map(() => h("span"));
  column.append(
    ...doc.rows.map((row, r) =>
      h("div", { class: "stu-cell", dataset: { row: r } }, canvases[r], h("span", {}, h("b", {}, `${row.layer.split(".").pop()} #${row.channel}`), h("br"), captions[r])),
    ),
  );

  const drift = doc.drift && doc.drift.layers.length ? driftTable(doc) : null;
  const draw = () => {
    const c = Number(slider.value);
    if (drift) for (const cell of drift.querySelectorAll("[data-col]")) cell.classList.toggle("on", cell.dataset.col === String(c));
    label.value = `epoch ${epochText(doc.epochs[c])}`;
    label.textContent = label.value;
    column.dataset.col = String(c);
    for (let r = 0; r < rows; r += 1) {
      const cell = doc.cells[r][c];
      captions[r].textContent = `max ${cell.activation.toFixed(2)} · image ${cell.image} (“${cell.label}”)`;
      const g = canvases[r].getContext("2d");
      g.imageSmoothingEnabled = false;
      if (image.complete && image.naturalWidth) {
        g.clearRect(0, 0, geometry.tile, geometry.tile);
        g.drawImage(image, geometry.col_x[c], geometry.row_y[r], geometry.tile, geometry.tile, 0, 0, geometry.tile, geometry.tile);
      }
    }
    const scale = image.clientWidth ? image.clientWidth / geometry.width : 1;
    const top = geometry.row_y[0];
    const bottom = geometry.row_y[rows - 1] + geometry.tile;
    Object.assign(highlight.style, {
      left: `${(geometry.col_x[c] - 2) * scale}px`,
      top: `${(top - 2) * scale}px`,
      width: `${(geometry.tile + 4) * scale}px`,
      height: `${(bottom - top + 4) * scale}px`,
    });
  };
  slider.addEventListener("input", draw);
  image.addEventListener("load", () => {
    root.dataset.montage = "loaded";
    draw();
  });
  image.addEventListener("click", (event) => {
    const scale = image.clientWidth / geometry.width;
    const x = event.offsetX / scale;
    const c = geometry.col_x.findIndex((left) => x >= left && x < left + geometry.tile + 2);
    if (c >= 0) {
      slider.value = String(c);
      draw();
    }
  });
  image.src = ctx.urls.withVersion(doc.image_url, doc.seconds);
  draw();

  return [
    facts([
      ["feature maps", rows],
      ["checkpoints", cols],
      ["images", `${doc.images.count} (${doc.images.dataset}${doc.images.split ? `, ${doc.images.split}` : ""})`],
      ["tiles", doc.crop === "rf" ? "receptive field" : "whole input"],
      ["time", seconds(doc.seconds)],
    ]),
    h("div", { class: "stu-step" }, h("span", {}, "Step through epochs"), slider, label),
    h("div", { class: "stu-evo" }, column, montage),
    h(
      "p",
      { class: "stu-note" },
      "Each tile: the strongest activation of that feature map across the image set at that checkpoint, projected to pixel space with the deconvnet (paper Fig. 4)" +
        (doc.color === "gray" ? ", shown as its grey component (the images are grey)" : "") +
        ". Rows are feature maps, columns epochs; in the paper lower layers settle within a few epochs, upper ones only after many.",
    ),
    drift,
  ];
}

function driftTable(doc) {
  const { h } = ctx;
  const head = ["Layer", ...doc.epochs.map(epochText)];
  const rows = doc.drift.layers.map((layer, i) =>
    h("tr", {}, h("td", {}, layer.split(".").pop()), ...doc.drift.values[i].map((v, c) => h("td", { dataset: { col: c } }, v.toFixed(2)))),
  );
  return h(
    "div",
    {},
    h("p", { class: "stu-note" }, "How far each layer's weights still are from the last checkpoint's, ‖W − W_last‖ / ‖W_last‖ (0: settled):"),
    h("table", { class: "stu-table stu-drift", "data-role": "evolution-drift" }, h("thead", {}, h("tr", {}, ...head.map((t) => h("th", {}, t)))), h("tbody", {}, ...rows)),
  );
}

// ---- training runs -------------------------------------------------------------------------
function renderTraining(doc) {
  const { h } = ctx;
  const epochs = doc.epochs || [];
  const top5 = epochs.some((e) => e.val_top5 !== null && e.val_top5 !== undefined);
  const head = ["Epoch", "Train loss", "Train top-1 %", "Val loss", "Val top-1 %", ...(top5 ? ["Val top-5 %"] : []), "lr", "Seconds"];
  const rows = epochs.map((e) =>
    h(
      "tr",
      {},
      h("td", {}, String(e.epoch)),
      h("td", {}, e.train_loss.toFixed(4)),
      h("td", {}, pct(e.train_top1)),
      h("td", {}, e.val_loss.toFixed(4)),
      h("td", {}, pct(e.val_top1)),
      top5 ? h("td", {}, pct(e.val_top5)) : null,
      h("td", {}, String(e.lr)),
      h("td", {}, e.seconds.toFixed(1)),
    ),
  );
  return [
    facts([
      ["architecture", doc.config?.arch],
      ["dataset", doc.dataset?.name],
      ["parameters", doc.parameters?.toLocaleString("en")],
      ["train / val", doc.dataset ? `${doc.dataset.train} / ${doc.dataset.val}` : null],
      ["checkpoints", (doc.checkpoints || []).map((c) => epochText(c.epoch)).join(", ")],
      ["time", seconds(doc.seconds)],
    ]),
    h("table", { class: "stu-table", "data-role": "training-table" }, h("thead", {}, h("tr", {}, ...head.map((t) => h("th", {}, t)))), h("tbody", {}, ...rows)),
  ];
}

async function mount(section, context) {
  ctx = context;
  root = section;
  injectStyle("css-studies", CSS);
  build();
  await load();
  root.dataset.ready = "true";
}

function show() {
  shown += 1;
  if (root && root.dataset.ready && shown > 1) load(); // the first show follows mount, which loaded
}

/** The view, as tabs.js takes it: createView({root, ctx}) → {ready, update, show}. */
export function createView({ root, ctx: context }) {
  return { ready: mount(root, context), show };
}
