// convscope dashboard: wiring. Each panel is its own module; this file loads the
// server's models and samples, restores the state from the URL hash, and routes
// state changes to the panels that need to fetch something.

import { api, request, urls } from "./api.js";
import { installKeyboard } from "./keyboard.js";
import { resolveMode, uncoveredRules } from "./layermeta.js";
import { createView as createInput } from "./panels/input.js";
import { createView as createLayers, defaultLayer } from "./panels/layers.js";
import { createView as createMaps } from "./panels/featuremaps.js";
import { createView as createPredictions } from "./panels/predictions.js";
import { createView as createRecon } from "./panels/reconstruction.js";
import { createView as createStart } from "./panels/start.js";
import { HASH_KEYS, parseHash, startHashSync, store } from "./state.js";
import { createTabs } from "./tabs.js";
import { createView as createTop9 } from "./top9.js";
import { $, busy, h, showError } from "./util.js";

// ---- request tracking: the global activity line, and "settled" for live webcam ----
const inflight = new Set();
let activityTimer = null;
function track(promise) {
  if (!promise || typeof promise.then !== "function") return promise;
  inflight.add(promise);
  if (!activityTimer) activityTimer = setTimeout(() => document.body.classList.toggle("is-busy", inflight.size > 0), 150);
  const done = () => {
    inflight.delete(promise);
    if (!inflight.size) {
      clearTimeout(activityTimer);
      activityTimer = null;
      document.body.classList.remove("is-busy");
    }
  };
  promise.then(done, done);
  return promise;
}
/** Resolves once nothing is in flight (waits for requests started meanwhile too). */
async function settled() {
  while (inflight.size) await Promise.allSettled([...inflight]);
}

// ---- panels -------------------------------------------------------------------------
// Every panel, like every tab (tabs.js), is a view: createView({ root, ctx }) -> { update(state, changed), ... }.
const tooltip = $('[data-role="tooltip"]');
const help = $('[data-role="help"]');
let models = [];
let layersModel = null; // the model whose layer list is rendered
let navDirection = 0; // the last keyboard step (-1, +1), for prefetching
let navAt = 0;
let quietFallback = false; // a model switch drops a layer the new model lacks without complaint
let fallbackNote = null; // the layer a "no such layer" note is about; the note goes when the layer changes

const input = createInput({ root: $('[data-panel="input"]'), ctx: { store, settled } });
const predictions = createPredictions({ root: $('[data-panel="predictions"]'), ctx: { store } });
const layers = createLayers({ root: $('[data-panel="layers"]'), ctx: { store } });
const maps = createMaps({ root: $('[data-panel="maps"]'), ctx: { store, tooltip } });
const recon = createRecon({
  root: $('[data-panel="reconstruction"]'),
  ctx: {
    store,
    maps,
    layerInfo: (name) => (layersModel === store.get().model ? layers.layer(name) : null),
    modeFor: (state) => modeFor(state),
    describeImage: (id) => input.describeImage(id),
    // an image id the server does not know (an old link to an upload): say so once, show a sample
    onImageMissing: (state, error) => {
      if (store.get().image !== state.image) return;
      const fallback = defaultSample();
      if (!fallback || fallback === state.image) return;
      input.showError(`Image “${state.image}” is not on the server (${error.message}); uploads are kept only for a while. Showing a sample instead.`);
      store.set({ image: fallback });
    },
  },
});
const tabs = createTabs({
  nav: $('[data-role="tabs"]'),
  main: $("main"),
  store,
  ctx: { store, api, urls, request, busy, showError, h, layers: () => layers.layers, models: () => models },
});
maps.onData(() => recon.refreshGeometry());
const top9 = createTop9({
  root: $('[data-panel="top9"]'),
  ctx: {
    store,
    upload: (blob, name) => input.upload(blob, name),
    modeFor: (state) => modeFor(state),
    inputSize: () => currentModel()?.input_size ?? 224,
  },
});

installKeyboard({
  store,
  maps,
  layers,
  recon,
  input,
  help,
  onNavigate: (delta) => {
    navDirection = delta;
    navAt = performance.now();
  },
});
$('[data-role="help-open"]').addEventListener("click", () => help.showModal());
createStart({ root: $('[data-role="start-strip"]'), ctx: { store } });
// A map picked where the reconstruction is out of sight (a phone: one column): bring it into view.
$('[data-panel="maps"]').addEventListener("map-picked", () => {
  const stage = $('[data-role="projection-stage"]');
  const box = stage.getBoundingClientRect();
  if (box.top < 0 || box.bottom > window.innerHeight) stage.scrollIntoView({ block: "center" });
});

// ---- state routing --------------------------------------------------------------------
/** The mode a projection of the state's layer is made in (auto resolved), null while the layers load. */
function modeFor(state) {
  const info = layersModel === state.model ? layers.layer(state.layer) : null;
  return info ? { ...resolveMode(state.mode, info), uncovered: uncoveredRules(info) } : null;
}

const currentModel = () => models.find((m) => m.name === store.get().model) || null;
const defaultSample = () => (input.samples.find((s) => s.id === "chelsea") || input.samples[0])?.id || null;

async function loadLayers(model) {
  layersModel = null;
  layers.showError("");
  const waking = currentModel()?.loaded === false; // offered, not loaded yet: the server loads it now
  if (waking) $('[data-role="layers-count"]').textContent = `loading ${model} on the server…`;
  try {
    const rows = await busy($('[data-panel="layers"]'), api.layers(model, { slot: "layers" }));
    if (store.get().model !== model) return;
    layers.render(rows);
    layersModel = model;
    if (waking) refreshModels();
    recon.update(store.get()); // the no-switches hint depends on the layer kinds
    proceed(store.get(), new Set(HASH_KEYS));
  } catch (error) {
    if (error.aborted) return;
    layers.showError(`The layers of ${model} could not be listed: ${error.message}`);
  }
}

async function loadMaps(state) {
  const info = layers.layer(state.layer);
  const data = await maps.load(state, info);
  if (!data) return;
  const now = store.get();
  if (now.model !== state.model || now.image !== state.image || now.layer !== state.layer) return;
  if (now.channel === null || now.channel >= data.channels) {
    // no channel chosen yet: start with the strongest feature map of the layer
    let best = 0;
    for (let c = 1; c < data.channels; c++) if (data.max[c] > data.max[best]) best = c;
    store.set({ channel: best });
  }
}

/** Everything that needs the model's layer list. */
function proceed(state, changed) {
  if (layersModel !== state.model) return;
  const all = layers.layers;
  const info = state.layer ? layers.layer(state.layer) : null;
  if (!info) {
    const fallback = defaultLayer(all, currentModel()?.input_size ?? 224);
    if (state.layer && !quietFallback) {
      layers.showError(`${state.model} has no layer “${state.layer}”; showing ${fallback} instead.`);
      fallbackNote = fallback;
    }
    quietFallback = false;
    if (fallback) store.set({ layer: fallback, channel: null, unit: null });
    return;
  }
  quietFallback = false;
  if (fallbackNote && state.layer !== fallbackNote) {
    layers.showError("");
    fallbackNote = null;
  }
  if (state.channel !== null && state.channel >= info.channels) {
    store.set({ channel: null });
    return;
  }
  if (state.unit) {
    const [y, x] = state.unit.split(",").map(Number);
    if (!(y < info.height && x < info.width)) {
      store.set({ unit: null });
      return;
    }
  }
  layers.update(state, changed);
  if (changed.has("model") || changed.has("image") || changed.has("layer")) track(loadMaps(state));
  maps.update(state, changed);
  const projectionKeys = ["model", "image", "layer", "channel", "mode", "select", "unit"];
  if (projectionKeys.some((k) => changed.has(k))) {
    const keyboard = performance.now() - navAt < 80 && changed.has("channel") ? navDirection : 0;
    if (state.channel === null) recon.reset();
    else track(recon.loadProjection(state, { prefetch: keyboard }));
  }
  recon.refreshGeometry();
}

function onChange(state, changed) {
  tabs.sync(state, changed);
  input.update(state, changed);
  recon.update(state, changed);
  if (changed.has("model")) {
    renderModelInfo();
    track(loadLayers(state.model));
  }
  const predicting = predictions.update(state, changed);
  if (predicting) track(predicting);
  if (changed.has("model") || changed.has("image")) track(recon.loadInput(state, currentModel()?.input_size));
  if (!changed.has("model")) proceed(state, changed);
  top9.update(state, changed);
}

// ---- models -----------------------------------------------------------------------------------
function renderModelInfo() {
  const model = currentModel();
  const badge = $('[data-role="model-badge"]');
  predictions.setModelInfo(model);
  if (!model) return badge.replaceChildren();
  badge.replaceChildren(
    ...(models.length > 1 ? [] : [h("b", {}, model.name), " · "]),
    `${model.num_classes} classes · ${model.input_size}px`,
    model.pretrained || models.length > 1 ? "" : h("span", { class: "warn" }, " · random weights"),
  );
  badge.title = model.description || "The model the server has loaded";
  const select = $('[data-role="model-select"]');
  if (select.value !== model.name) select.value = model.name;
  select.title = `${model.name}: ${model.description || ""}`; // the full name where the select is narrow
}

const modelLabel = (m) => m.name + (m.pretrained ? "" : " (random weights)") + (m.loaded === false ? " · loads when chosen" : "");

function renderModelOptions() {
  const select = $('[data-role="model-select"]');
  select.replaceChildren(...models.map((m) => h("option", { value: m.name, title: m.description || m.name }, modelLabel(m))));
  select.value = store.get().model || select.value;
}

/** The model list again (a model loaded since), for the switcher's labels. */
async function refreshModels() {
  try {
    models = await api.models();
    renderModelOptions();
    renderModelInfo();
  } catch {
    /* the old list stays */
  }
}

function setupModelPicker() {
  const picker = $('[data-role="model-picker"]');
  const select = $('[data-role="model-select"]');
  renderModelOptions();
  picker.hidden = models.length < 2;
  select.addEventListener("change", () => {
    quietFallback = true;
    store.set({ model: select.value });
  });
}

// ---- boot ----------------------------------------------------------------------------------------
const bootBox = $('[data-role="boot"]');
const bootMessage = $('[data-role="boot-message"]');
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitForHealth() {
  for (let attempt = 0; ; attempt++) {
    try {
      const response = await fetch(urls.health(), { cache: "no-store" });
      if (response.ok) return;
      bootMessage.textContent = response.status === 503 ? "The server is loading its models…" : `The server answered HTTP ${response.status}; retrying…`;
    } catch {
      bootMessage.textContent = "Cannot reach the convscope server; retrying…";
    }
    await sleep(Math.min(2000, 400 + attempt * 200));
  }
}

async function boot() {
  await waitForHealth();
  bootMessage.textContent = "Loading models and samples…";
  let samples;
  try {
    [models, samples] = await Promise.all([api.models(), api.samples()]);
  } catch (error) {
    bootBox.classList.add("is-error");
    bootMessage.textContent = `The dashboard could not start: ${error.message}`;
    return;
  }
  if (!models.length) {
    bootBox.classList.add("is-error");
    bootMessage.textContent = "The server has no model loaded.";
    return;
  }
  setupModelPicker();
  input.renderSamples(samples);

  const wanted = parseHash(location.hash);
  const fallbackModel = (models.find((m) => m.default) || models[0]).name;
  const model = models.some((m) => m.name === wanted.model) ? wanted.model : fallbackModel;
  if (wanted.model && wanted.model !== model) input.showError(`The server has no model “${wanted.model}”; showing ${model}.`);
  const image = wanted.image || defaultSample();

  store.subscribe(onChange);
  store.set({ ...wanted, model, image });
  startHashSync();
  bootBox.hidden = true;
  document.documentElement.dataset.ready = "true";
}

boot();
