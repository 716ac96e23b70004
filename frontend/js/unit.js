// "Unit" view (issue 17): the selected channel's whole story, side by side —
//   its reconstruction on the current image (projection in the view's mode, auto resolved),
//   its Top 9 across a scan (projections in that mode and image patches, paper Fig. 2; the nine
//   projections in one request, api.topProjections, as the Explore view's Top 9 panel),
//   its optimised image (feature visualisation by optimisation), computed on demand as a
//   server job with progress, cached by the server after.
// "unit card" is a link to just this unit: #model=…&image=…&layer=…&channel=…&tab=unit.
//
// Shape: createView({root, ctx}) → {update(state, changed), show(), hide()} (js/tabs.js).

import { cancelJob, startJob } from "./jobs.js";
import { fmt } from "./util.js";

const STEPS = [64, 256, 512];
const DEFAULT_STEPS = 256;

function addStylesheet() {
  if (document.querySelector('link[data-style="unit"]')) return;
  const link = document.createElement("link");
  link.rel = "stylesheet";
  link.href = "css/unit.css";
  link.dataset.style = "unit";
  document.head.append(link);
}

export function unitHash(state) {
  const params = new URLSearchParams();
  for (const key of ["model", "image", "layer", "channel", "mode", "select"]) {
    if (state[key] !== null && state[key] !== undefined) params.set(key, String(state[key]));
  }
  params.set("tab", "unit");
  return `#${params.toString()}`;
}

export function createView({ root, ctx }) {
  const { h, api, request, urls, showError } = ctx;
  addStylesheet();
  root.classList.add("unit-view");
  root.dataset.role = "unit-page";

  const title = h("h2", { dataset: { role: "unit-title" } });
  const card = h("a", { dataset: { role: "unit-card-link" }, title: "A link that opens just this unit" }, "unit card ↗");
  const atlasLink = h("a", { dataset: { role: "atlas-link" }, target: "_blank", rel: "noopener", hidden: true }, "atlas ↗");
  const explore = h("a", { href: "#", title: "Back to the Explore view" }, "← explore");

  const projection = h("img", { alt: "Reconstruction of the unit on the current image", dataset: { role: "unit-projection" }, hidden: true });
  const projectionEmpty = h("div", { class: "stage-empty" }, "");
  const projectionNote = h("p", { class: "unit-note", dataset: { role: "unit-projection-note" } });

  const topProjections = h("div", { class: "top9-grid", dataset: { role: "unit-top9-projections" } });
  const topCrops = h("div", { class: "top9-grid", dataset: { role: "unit-top9-crops" } });
  const topNote = h("p", { class: "unit-note", dataset: { role: "unit-top9-note" } });

  const featvis = h("img", { alt: "Optimised image of the unit", dataset: { role: "unit-featvis" }, hidden: true });
  const featvisEmpty = h("div", { class: "stage-empty" }, "not computed yet");
  const steps = h("select", { "aria-label": "Optimisation steps", dataset: { role: "featvis-steps" } },
    ...STEPS.map((n) => h("option", { value: String(n), selected: n === DEFAULT_STEPS }, `${n} steps`)));
  const compute = h("button", { type: "button", class: "btn", dataset: { role: "featvis-compute" } }, "Compute");
  const cancel = h("button", { type: "button", class: "btn", dataset: { role: "featvis-cancel" }, hidden: true }, "Cancel");
  const progress = h("progress", { max: 1, value: 0, dataset: { role: "featvis-progress" }, hidden: true });
  const featvisNote = h("p", { class: "unit-note", dataset: { role: "featvis-note" } });
  const errorBox = h("div", { class: "error", role: "alert", dataset: { role: "unit-error" }, hidden: true });
  const empty = h("p", { class: "unit-note", dataset: { role: "unit-empty" } }, "Select a feature map in the Explore view to see its unit.");

  const cols = h("div", { class: "unit-cols" },
    h("section", { class: "unit-col panel" },
      h("h3", {}, "Reconstruction"), h("div", { class: "unit-stage" }, projection, projectionEmpty), projectionNote),
    h("section", { class: "unit-col panel" },
      h("h3", {}, "Top 9"),
      h("div", { class: "unit-top9" },
        h("figure", {}, topProjections, h("figcaption", {}, "projections")),
        h("figure", {}, topCrops, h("figcaption", {}, "image patches"))),
      topNote),
    h("section", { class: "unit-col panel" },
      h("h3", {}, "Optimised image"), h("div", { class: "unit-stage" }, featvis, featvisEmpty),
      h("div", { class: "unit-controls" }, steps, compute, cancel, progress), featvisNote));
  root.replaceChildren(h("header", { class: "unit-head" }, title, card, atlasLink, explore), empty, cols, errorBox);

  let shownKey = null;
  let visible = !root.hidden;
  let generation = 0;
  let top9Set = 0; // the Top 9 load now on screen: its own count, so a featvis reload (steps) leaves it be
  let top9Loading = null; // the newest Top 9 load (a promise; null when the one on screen stays)
  let shownTop9 = null; // model|layer|channel|mode of the Top 9 on screen
  let job = null;
  let scans = new Map();

  const ready = (state) => state.model && state.image && state.layer && state.channel !== null && state.channel !== undefined;
  const lookupUrl = (state) => urls.visualizations(state.model, { layer: state.layer, channel: state.channel, steps: steps.value });

  function setFeatvisState(name) {
    root.dataset.featvis = name;
  }

  function showFeatvis(url, value, cached) {
    featvis.src = url;
    featvis.hidden = false;
    featvisEmpty.hidden = true;
    featvisNote.textContent = `objective reached: ${fmt(value)} (mean activation of the channel)${cached ? " · from the server's cache" : ""}`;
    featvis.dataset.value = String(value);
    compute.hidden = true;
    setFeatvisState("ready");
  }

  function clearFeatvis(text = "not computed yet") {
    featvis.hidden = true;
    featvis.removeAttribute("src");
    featvisEmpty.hidden = false;
    featvisEmpty.textContent = text;
    featvisNote.textContent = "";
    progress.hidden = true;
    compute.hidden = false;
    setFeatvisState("idle");
  }

  async function loadFeatvis(state, mine) {
    clearFeatvis("…");
    try {
      const stored = await request(lookupUrl(state));
      if (mine !== generation) return;
      if (stored.cached) showFeatvis(stored.url, stored.value, true);
      else clearFeatvis(`not computed yet: Compute runs ${steps.value} optimisation steps on the server`);
    } catch (error) {
      if (mine === generation) {
        clearFeatvis("");
        showError(errorBox, `The optimised image could not be looked up: ${error.message}`);
      }
    }
  }

  async function computeFeatvis() {
    const state = ctx.store.get();
    if (!ready(state) || job) return;
    const mine = generation;
    const handle = {};
    job = handle;
    compute.disabled = true;
    cancel.hidden = false;
    progress.hidden = false;
    progress.value = 0;
    setFeatvisState("running");
    showError(errorBox, "");
    featvisEmpty.textContent = "optimising…";
    try {
      const body = { layer: state.layer, channels: [state.channel], steps: Number(steps.value) };
      const onProgress = (s) => {
        progress.value = s.progress;
        featvisNote.textContent = s.state === "queued" ? "queued…" : `step ${s.done} of ${s.total}`;
      };
      const result = await startJob(urls.visualizations(state.model), body, { onProgress, job: handle, failure: "the optimisation failed on the server" });
      if (mine === generation) showFeatvis(result.units[0].url, result.units[0].value, result.units[0].cached);
    } catch (error) {
      if (mine !== generation) return;
      if (error.aborted) clearFeatvis("cancelled");
      else {
        clearFeatvis("");
        setFeatvisState("error");
        showError(errorBox, `The optimised image could not be computed: ${error.message}`);
      }
    } finally {
      job = null;
      compute.disabled = false;
      cancel.hidden = true;
      progress.hidden = true;
    }
  }

  compute.addEventListener("click", computeFeatvis);
  cancel.addEventListener("click", () => cancelJob(job));
  steps.addEventListener("change", () => {
    const state = ctx.store.get();
    if (!ready(state) || job) return;
    const mine = ++generation;
    settle(mine, [top9Loading, loadFeatvis(state, mine)]);
  });

  // data-state="ready" once the newest view's loads are done: the Top 9 (if one is on its way)
  // and the optimised image's lookup, whichever of refresh() and a steps change came last
  function settle(mine, loads) {
    Promise.all(loads).then(() => {
      if (mine === generation) root.dataset.state = "ready";
    });
  }

  function loadProjection(state) {
    projection.hidden = true;
    projectionEmpty.hidden = false;
    projectionEmpty.textContent = "…";
    projection.onload = () => {
      projection.hidden = false;
      projectionEmpty.hidden = true;
      projection.dataset.loaded = "true";
    };
    projection.onerror = () => {
      projectionEmpty.textContent = "the projection could not be loaded";
    };
    projection.dataset.loaded = "false";
    projection.src = urls.projection(state.model, state.image, { layer: state.layer, channel: state.channel, mode: state.mode, select: state.select });
    projectionNote.textContent = `on ${state.image} · ${state.mode || "auto"} · ${state.select === "map" ? "whole map" : "strongest activation"}`;
  }

  /** Show `src` in `img`; → true once it has loaded, false if it could not be. */
  function draw(img, src) {
    return new Promise((resolve) => {
      img.addEventListener("load", () => resolve(true), { once: true });
      img.addEventListener("error", () => resolve(false), { once: true });
      img.src = src;
    });
  }

  // The Top 9: the scan's entries, then their nine projections in one request (api.topProjections,
  // as the Explore view's Top 9 panel); the crops are the scan's static PNGs. data-top9 is "ready"
  // once the nine projections are drawn.
  async function loadTop9(state, mine) {
    topProjections.replaceChildren();
    topCrops.replaceChildren();
    topNote.textContent = "";
    root.dataset.top9 = "loading";
    try {
      let list = scans.get(state.model);
      if (!list) {
        list = await request(urls.scans(state.model));
        scans.set(state.model, list);
      }
      if (mine !== top9Set) return;
      const scan = list.find((s) => s.weights_match && s.status === "complete" && s.layers.some((l) => l.name === state.layer));
      if (!scan) {
        scans.delete(state.model); // look again next time: a scan may be running
        topNote.textContent = "No finished scan covers this layer yet (the Explore view's Top 9 panel starts one for the sample photos).";
        root.dataset.top9 = "none";
        return;
      }
      const params = { layer: state.layer, channel: state.channel, mode: state.mode || "auto" }; // the server resolves auto
      const body = await request(urls.scanTop(scan.url, params), { slot: "unit-top9" });
      if (mine !== top9Set) return;
      const img = (entry, kind) => h("img", {
        alt: `${kind} ${entry.rank + 1}: ${entry.image.id}`,
        title: `#${entry.rank + 1} ${entry.image.id}: ${fmt(entry.value)} at (${entry.y}, ${entry.x})`,
        dataset: { rank: String(entry.rank) },
      });
      const pictures = body.entries.map((e) => img(e, "projection"));
      topProjections.replaceChildren(...pictures);
      topCrops.replaceChildren(...body.entries.map((e) => Object.assign(img(e, "crop"), { src: e.crop_url })));
      const summary = `${scan.label} · ${scan.images} images · ${body.mode} · strongest ${fmt(body.entries[0]?.value)}`;
      topNote.textContent = summary;
      const sources = await api.topProjections(scan.url, body, { slot: "unit-top9-projections" });
      if (mine !== top9Set) return;
      const drawn = await Promise.all(pictures.map((picture, i) => {
        picture.dataset.mode = sources[i].mode;
        return draw(picture, sources[i].src);
      }));
      if (mine !== top9Set) return;
      const missing = drawn.filter((ok) => !ok).length;
      if (missing) topNote.textContent = `${summary} · ${missing} of ${drawn.length} projections could not be loaded`;
      root.dataset.top9 = missing ? "error" : "ready";
    } catch (error) {
      if (mine === top9Set) {
        root.dataset.top9 = "error";
        topNote.textContent = `The top 9 could not be loaded: ${error.message}`;
      }
    }
  }

  async function loadAtlasLink() {
    try {
      const info = await request(urls.atlas());
      if (info.available) {
        atlasLink.href = info.url;
        atlasLink.hidden = false;
      }
    } catch {
      /* no atlas: no link */
    }
  }

  function refresh() {
    const state = ctx.store.get();
    const key = ready(state) ? [state.model, state.image, state.layer, state.channel, state.mode, state.select].join("|") : null;
    if (key === shownKey) return;
    shownKey = key;
    const mine = ++generation;
    showError(errorBox, "");
    empty.hidden = Boolean(key);
    cols.hidden = !key;
    card.hidden = !key;
    if (!key) {
      title.textContent = "Unit";
      root.dataset.state = "empty";
      return;
    }
    title.textContent = `${state.layer} · channel ${state.channel}`;
    card.href = unitHash(state);
    explore.href = unitHash(state).replace("tab=unit", "tab=explore");
    loadProjection(state);
    // the Top 9 depends on neither the image nor select: it stays while only those change
    const top9Key = [state.model, state.layer, state.channel, state.mode].join("|");
    const top9Stays = top9Key === shownTop9 && root.dataset.top9 === "ready";
    shownTop9 = top9Key;
    top9Loading = top9Stays ? null : loadTop9(state, ++top9Set);
    settle(mine, [top9Loading, loadFeatvis(state, mine)]);
  }

  loadAtlasLink();
  return {
    update(state, changed) {
      if (["model", "image", "layer", "channel", "mode", "select"].some((k) => changed.has(k))) {
        if (changed.has("model")) scans = new Map();
        if (visible) refresh();
      }
    },
    show() {
      visible = true;
      refresh();
    },
    hide() {
      visible = false;
    },
  };
}
