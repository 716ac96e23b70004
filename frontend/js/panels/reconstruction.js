// Reconstruction: the model input (with the receptive field of the strongest
// activation marked), the deconvnet projection beside it, and both patches under
// that receptive field (as in the paper's Fig. 2). Mode and select switches.
//
// Projections are fetched with fetch() + AbortController and shown through
// object URLs; a small cache makes flipping back and forth instant, and while
// the user walks channels with the keyboard the next few are fetched ahead, in one
// request to the batch endpoint (`api.projections`: the same PNG bytes as one by one).
//
// Every projection request gets an id; the panel exposes `data-request-wanted` (the
// newest request asked for), `data-request-shown` (the one whose answer is on screen)
// and `data-projections-pending` (requests not yet settled), so that a test (or a
// script) can wait for a condition instead of a fixed time.
//
// The mode `auto` is resolved per layer by `modeFor(state)` (layermeta.resolveMode):
// the control reads "auto · guided", its reason is one click away, and a deconvnet on
// a layer without switches says plainly that its picture does not depend on the image.

import { api, isAbort } from "../api.js";
import { autoContrast } from "../imageops.js";
import { $, $$, busy, fmt, h, showError } from "../util.js";

const CACHE_SIZE = 48;
const PREFETCH_AHEAD = 4; // channels fetched ahead of a keyboard walk, in one batch request
const PREFS_KEY = "convscope.recon";
const CROP = 144; // canvas pixels of the patches (CSS scales them to the column)
const OUTSIDE = "#6b717c"; // a patch's part outside the image
const EMPTY_TEXT = "Click a feature map to project it into pixel space";

/** The Reconstruction panel as a view (see tabs.js): ctx is { store, maps, layerInfo, modeFor, describeImage, onImageMissing }. */
export function createView({ root, ctx }) {
  const { store, maps, layerInfo, modeFor, describeImage, onImageMissing } = ctx;
  const inputImg = $('[data-role="input-image"]', root);
  const projImg = $('[data-role="projection"]', root);
  const projEmpty = $('[data-role="projection-empty"]', root);
  const projStage = $('[data-role="projection-stage"]', root);
  const marker = $('[data-role="marker"]', root);
  const overlay = $('[data-role="map-overlay"]', root);
  const inputCaption = $('[data-role="input-caption"]', root);
  const projCaption = $('[data-role="projection-caption"]', root);
  const heading = $('[data-role="recon-heading"]', root);
  const facts = $('[data-role="recon-facts"]', root);
  const cropInput = $('[data-role="crop-input"]', root);
  const cropProj = $('[data-role="crop-projection"]', root);
  const cropMap = $('[data-role="crop-map"]', root);
  const detail = $(".recon-detail", root);
  const overlayToggle = $('[data-role="overlay-toggle"]', root);
  const errorBox = $('[data-role="recon-error"]', root);
  const inputStage = $('[data-role="input-stage"]', root);
  const unitChip = $('[data-role="unit-chip"]', root);
  const modeHint = $('[data-role="mode-hint"]', root);
  const modeResolved = $('[data-role="mode-resolved"]', root);
  const modeWhy = $('[data-role="mode-why"]', root);
  const modeReason = $('[data-role="mode-reason"]', root);
  const rulesNote = $('[data-role="rules-note"]', root);

  let prefs = { overlay: false, contrast: "auto" };
  try {
    prefs = { ...prefs, ...JSON.parse(localStorage.getItem(PREFS_KEY) || "{}") };
  } catch {
    /* defaults */
  }
  overlayToggle.checked = Boolean(prefs.overlay);
  if (!["auto", "paper"].includes(prefs.contrast)) prefs.contrast = "auto";
  const savePrefs = () => {
    try {
      localStorage.setItem(PREFS_KEY, JSON.stringify(prefs));
    } catch {
      /* not persisted */
    }
  };

  let inputSize = 224;
  let inputKey = null; // model|image shown in inputImg
  let inputUrl = null;
  let inputGeneration = 0;
  let shown = null; // {key, result} of the projection on screen
  let wanted = null; // key the user asked for last
  const cache = new Map(); // key -> {id, promise, controller, result?}
  let requests = 0; // ids of projection requests
  let pending = 0;

  /** The mode a projection of state's layer is made in (auto resolved; null while the layers load). */
  const effectiveMode = (s) => modeFor(s)?.mode ?? (s.mode === "auto" ? null : s.mode);
  const projKey = (s) => `${s.model}|${s.image}|${s.layer}|${s.channel}|${effectiveMode(s)}|${s.unit ? `@${s.unit}` : s.select}`;
  const setPending = (delta) => {
    pending += delta;
    root.dataset.projectionsPending = String(pending);
  };
  const parseUnit = (unit) => (unit ? unit.split(",").map(Number) : null);

  // ---- the input image -------------------------------------------------------------
  async function loadInput(state, size) {
    inputSize = size || inputSize;
    marker.setAttribute("viewBox", `0 0 ${inputSize} ${inputSize}`);
    const key = `${state.model}|${state.image}`;
    if (key === inputKey) return;
    const mine = ++inputGeneration;
    try {
      const { blob } = await busy(root, api.image(state.image, state.model, { slot: "input-image" }));
      if (mine !== inputGeneration) return;
      const url = URL.createObjectURL(blob);
      await decode(inputImg, url);
      if (mine !== inputGeneration) return URL.revokeObjectURL(url);
      if (inputUrl) URL.revokeObjectURL(inputUrl);
      inputUrl = url;
      inputKey = key;
      inputCaption.replaceChildren(h("b", {}, "input"), ` ${inputSize}×${inputSize} · ${describeImage(state.image)}`);
      refreshGeometry();
    } catch (error) {
      if (isAbort(error) || mine !== inputGeneration) return;
      if (error.status === 404 && onImageMissing) onImageMissing(state, error);
      else showError(errorBox, `The input image could not be loaded: ${error.message}`);
    }
  }

  function decode(img, url) {
    return new Promise((resolve, reject) => {
      img.onload = () => resolve();
      img.onerror = () => reject(new Error("the browser could not decode the image"));
      img.src = url;
    });
  }

  // ---- projections ---------------------------------------------------------------------
  function start(state) {
    const key = projKey(state);
    const controller = new AbortController();
    const t0 = performance.now();
    const entry = { id: ++requests, key, controller, result: null, promise: null };
    setPending(1);
    entry.promise = api
      .projection(
        state.model,
        state.image,
        {
          layer: state.layer,
          channel: state.channel,
          mode: effectiveMode(state) ?? "auto",
          select: state.select,
          y: state.unit ? parseUnit(state.unit)[0] : null,
          x: state.unit ? parseUnit(state.unit)[1] : null,
        },
        { signal: controller.signal },
      )
      .then((result) => {
        entry.result = { ...result, rawUrl: URL.createObjectURL(result.blob), autoUrl: null, ms: performance.now() - t0 };
        remember(entry);
        return entry.result;
      })
      .catch((error) => {
        if (cache.get(key) === entry) cache.delete(key);
        throw error;
      })
      .finally(() => setPending(-1));
    cache.set(key, entry);
    return entry;
  }

  function remember(entry) {
    cache.delete(entry.key);
    cache.set(entry.key, entry);
    for (const [key, old] of cache) {
      if (cache.size <= CACHE_SIZE) break;
      if (!old.result || key === shown?.key) continue;
      URL.revokeObjectURL(old.result.rawUrl);
      if (old.result.autoUrl) URL.revokeObjectURL(old.result.autoUrl);
      cache.delete(key);
    }
  }

  /** Cancel every in-flight projection except `keep` (a newer click wins) and the batch it is part of. */
  function cancelOthers(keep) {
    const kept = new Set(keep.map((key) => cache.get(key)?.controller).filter(Boolean));
    for (const [key, entry] of cache) {
      if (!entry.result && !keep.includes(key) && !kept.has(entry.controller)) {
        entry.controller.abort();
        cache.delete(key);
      }
    }
  }

  /** One batch request for several channels of one image, layer, mode and seed kind: a cache entry each. */
  function startBatch(states) {
    const first = states[0];
    const controller = new AbortController();
    const t0 = performance.now();
    const unit = parseUnit(first.unit);
    const seeds = states.map((s) => (unit ? { channel: s.channel, y: unit[0], x: unit[1] } : { channel: s.channel, select: s.select }));
    setPending(1);
    const batch = api
      .projections(first.model, first.image, { layer: first.layer, mode: effectiveMode(first) ?? "auto", seeds }, { signal: controller.signal })
      .finally(() => setPending(-1));
    states.forEach((state, i) => {
      const entry = { id: ++requests, key: projKey(state), controller, result: null, promise: null };
      entry.promise = batch
        .then((results) => {
          entry.result = { ...results[i], rawUrl: URL.createObjectURL(results[i].blob), autoUrl: null, ms: performance.now() - t0 };
          remember(entry);
          return entry.result;
        })
        .catch((error) => {
          if (cache.get(entry.key) === entry) cache.delete(entry.key);
          throw error;
        });
      entry.promise.catch(() => {}); // a prefetched channel nobody asks for
      cache.set(entry.key, entry);
    });
  }

  async function loadProjection(state, { prefetch = 0 } = {}) {
    showError(errorBox, "");
    if (state.channel === null || !state.layer) {
      wanted = null;
      return;
    }
    const key = projKey(state);
    wanted = key;
    cancelOthers([key]);
    projStage.classList.add("is-stale");
    const entry = cache.get(key) || start(state);
    root.dataset.requestWanted = String(entry.id);
    try {
      const result = entry.result || (await busy(root, entry.promise));
      if (wanted !== key) return;
      const url = await displayUrl(result);
      if (wanted !== key) return;
      await decode(projImg, url);
      if (wanted !== key) return;
      shown = { key, state, result };
      root.dataset.requestShown = String(entry.id);
      // what the image shows, for people and tests (data-proj-*; data-channel is the tiles' hook)
      Object.assign(projImg.dataset, {
        projLayer: state.layer,
        projChannel: String(state.channel),
        projMode: result.mode || effectiveMode(state), // the server's word on the rule it used
        projRequested: state.mode,
        projSelect: state.select,
        projUnit: state.unit || "",
        projSeed: String(result.seedValue),
        projContrast: prefs.contrast,
      });
      projImg.hidden = false;
      projEmpty.hidden = true;
      projEmpty.textContent = EMPTY_TEXT;
      projStage.classList.remove("is-stale");
      projImg.alt = `${effectiveMode(state)} projection of ${state.layer} channel ${state.channel} (${seedWords(state)})`;
      projCaption.replaceChildren(
        h("b", {}, state.mode === "auto" ? `auto · ${effectiveMode(state)}` : state.mode),
        ` · ${seedWords(state)} · ${prefs.contrast === "auto" ? "auto contrast" : "min–max"} · ${Math.round(result.ms)} ms`,
      );
      refreshGeometry();
      if (prefetch) prefetchNeighbour(state, prefetch);
    } catch (error) {
      if (isAbort(error) || wanted !== key) return;
      projStage.classList.remove("is-stale");
      shown = null;
      projImg.hidden = true;
      projEmpty.hidden = false;
      projEmpty.textContent = "No projection: see the message below";
      refreshGeometry();
      showError(errorBox, `No projection for ${state.layer} channel ${state.channel}: ${error.message}`);
    }
  }

  function seedWords(state) {
    if (state.unit) {
      const [y, x] = parseUnit(state.unit);
      return `unit (y ${y}, x ${x})`;
    }
    return state.select === "max" ? "strongest unit" : "whole map";
  }

  /** The URL to show for a result under the current contrast setting (auto contrast is computed once). */
  async function displayUrl(result) {
    if (prefs.contrast === "paper") return result.rawUrl;
    if (!result.autoUrl) {
      try {
        result.autoUrl = URL.createObjectURL(await autoContrast(result.blob));
      } catch {
        return result.rawUrl;
      }
    }
    return result.autoUrl;
  }

  // While walking channels with the keyboard, fetch the next few ahead of time, in one request.
  function prefetchNeighbour(state, direction) {
    const ahead = [];
    let channel = state.channel;
    for (let step = 0; step < PREFETCH_AHEAD; step += 1) {
      const next = maps.neighbour(channel, direction);
      if (next === null || next === undefined || next === channel || next === state.channel) break;
      channel = next;
      const nextState = { ...state, channel: next };
      if (!cache.has(projKey(nextState))) ahead.push(nextState);
    }
    if (ahead.length) startBatch(ahead);
  }

  // ---- geometry: marker, overlay, crops, facts ---------------------------------------------
  /** The receptive-field box of unit (y, x) in input pixels: {x0, y0, side, cx, cy}. */
  function fieldBox(info, y, x) {
    const field = info.receptive_field || { size: inputSize, stride: 1, offset: 0 };
    const cx = field.offset + x * field.stride;
    const cy = field.offset + y * field.stride;
    let side = field.size;
    if (side >= inputSize) return { x0: 0, y0: 0, side: inputSize, cx, cy, whole: true };
    side = Math.max(1, side);
    return { x0: cx - side / 2, y0: cy - side / 2, side, cx, cy, whole: false };
  }

  function currentPeak(state, data) {
    if (state.unit) return parseUnit(state.unit);
    const seedFromHeaders = shown && shown.key === projKey(state) && state.select === "max" && shown.result.seedY >= 0;
    if (seedFromHeaders) return [shown.result.seedY, shown.result.seedX];
    if (data && data.argmax && state.channel !== null && data.argmax[state.channel]) return data.argmax[state.channel];
    return null;
  }

  // Parts whose inputs are not in yet keep their last picture, dimmed, so that
  // live webcam frames and channel walks do not flicker through black.
  function refreshGeometry() {
    const state = store.get();
    const info = layerInfo(state.layer);
    const data = maps.dataFor(state);
    const peak = info ? currentPeak(state, data) : null;
    const box = peak ? fieldBox(info, peak[0], peak[1]) : null;
    const inputReady = inputKey === `${state.model}|${state.image}` && inputImg.complete && inputImg.naturalWidth > 0;
    const projReady = Boolean(shown && shown.key === projKey(state) && projImg.complete && projImg.naturalWidth > 0);
    const waiting = state.channel !== null && (!data || !projReady || !inputReady || !box);
    if (box || state.channel === null) drawMarker(box, state);
    drawOverlay(state, data);
    if (!waiting) {
      drawCrop(cropInput, inputImg, box, inputReady);
      drawCrop(cropProj, projImg, box, projReady);
      drawMapCrop(state, data, peak);
      drawFacts(state, info, data, peak, box);
    } else if (state.channel === null) {
      drawFacts(state, info, data, peak, box);
    }
    detail.classList.toggle("is-stale", waiting || state.channel === null);
    facts.classList.toggle("is-stale", waiting);
    marker.classList.toggle("is-stale", !box && state.channel !== null);
    const ch = state.channel === null ? "–" : state.channel;
    heading.replaceChildren(h("b", {}, state.layer || ""), state.layer ? ` · channel ${ch}` : "");
  }

  function drawMarker(box, state) {
    const S = inputSize;
    const ns = "http://www.w3.org/2000/svg";
    const el = (tag, attrs) => {
      const node = document.createElementNS(ns, tag);
      for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
      return node;
    };
    marker.replaceChildren();
    if (!box) return;
    const x0 = Math.max(0, box.x0);
    const y0 = Math.max(0, box.y0);
    const x1 = Math.min(S, box.x0 + box.side);
    const y1 = Math.min(S, box.y0 + box.side);
    if (!box.whole) {
      marker.append(el("path", { class: "dim", d: `M0 0H${S}V${S}H0Z M${x0} ${y0}V${y1}H${x1}V${y0}Z` }));
      marker.append(el("rect", { class: "rf-shadow", x: x0, y: y0, width: x1 - x0, height: y1 - y0 }));
      marker.append(el("rect", { class: "rf", x: x0, y: y0, width: x1 - x0, height: y1 - y0, "stroke-dasharray": state.select === "map" && !state.unit ? "4 3" : "none" }));
    }
    marker.append(el("circle", { class: "dot", cx: Math.min(S, Math.max(0, box.cx)), cy: Math.min(S, Math.max(0, box.cy)), r: S / 70 }));
  }

  function drawOverlay(state, data) {
    const ctx = overlay.getContext("2d");
    overlay.hidden = !overlayToggle.checked;
    if (!overlayToggle.checked || !data || state.channel === null) {
      ctx.clearRect(0, 0, overlay.width, overlay.height);
      return;
    }
    const tileCanvas = maps.channelCanvas(state.channel);
    overlay.width = overlay.height = inputSize;
    ctx.clearRect(0, 0, inputSize, inputSize);
    if (!tileCanvas) return;
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(tileCanvas, 0, 0, inputSize, inputSize);
  }

  /** The patch shown: the receptive field, widened to some context when the field is tiny. */
  function patchBox(box) {
    const least = Math.min(inputSize, Math.max(24, Math.round(inputSize / 8)));
    if (!box || box.whole || box.side >= least) return box;
    return { ...box, x0: box.cx - least / 2, y0: box.cy - least / 2, side: least, context: true };
  }

  function drawCrop(canvas, img, field, ready, size = CROP) {
    const ctx = canvas.getContext("2d");
    canvas.width = canvas.height = size;
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, size, size);
    const box = patchBox(field);
    if (!box || !ready) return;
    const scale = size / box.side;
    const sx = Math.max(0, box.x0);
    const sy = Math.max(0, box.y0);
    const sw = Math.min(inputSize, box.x0 + box.side) - sx;
    const sh = Math.min(inputSize, box.y0 + box.side) - sy;
    if (sw <= 0 || sh <= 0) return;
    ctx.imageSmoothingEnabled = scale < 1;
    const k = img.naturalWidth / inputSize; // the images are S×S; stay robust if not
    ctx.drawImage(img, sx * k, sy * k, sw * k, sh * k, (sx - box.x0) * scale, (sy - box.y0) * scale, sw * scale, sh * scale);
    if (sw < box.side || sh < box.side) {
      // the part of the patch outside the image: a neutral grey, the image edge dashed (as in Top 9)
      const [ix, iy, iw, ih] = [(sx - box.x0) * scale, (sy - box.y0) * scale, sw * scale, sh * scale];
      ctx.save();
      ctx.fillStyle = OUTSIDE;
      ctx.beginPath();
      ctx.rect(0, 0, size, size);
      ctx.rect(ix, iy, iw, ih);
      ctx.fill("evenodd");
      ctx.setLineDash([4, 3]);
      ctx.lineWidth = 1;
      ctx.strokeStyle = "#f3f4f6";
      ctx.strokeRect(ix + 0.5, iy + 0.5, iw - 1, ih - 1);
      ctx.restore();
    }
    if (box.context) {
      // the field itself, inside its context
      const x = (field.x0 - box.x0) * scale;
      const y = (field.y0 - box.y0) * scale;
      const side = field.side * scale;
      ctx.lineWidth = 3;
      ctx.strokeStyle = "rgba(0, 0, 0, 0.7)";
      ctx.strokeRect(x, y, side, side);
      ctx.lineWidth = 1.5;
      ctx.strokeStyle = getComputedStyle(root).getPropertyValue("--marker").trim() || "#3ee0ff";
      ctx.strokeRect(x, y, side, side);
    }
  }

  function drawMapCrop(state, data, peak) {
    const ctx = cropMap.getContext("2d");
    cropMap.width = cropMap.height = CROP;
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, CROP, CROP);
    const tile = data && state.channel !== null ? maps.channelCanvas(state.channel, { alpha: false }) : null;
    if (!tile) return;
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(tile, 0, 0, CROP, CROP);
    if (peak && data.height && data.width) {
      const cw = CROP / data.width;
      const chh = CROP / data.height;
      ctx.lineWidth = 1.5;
      ctx.strokeStyle = "#000";
      ctx.strokeRect(peak[1] * cw - 1, peak[0] * chh - 1, cw + 2, chh + 2);
      ctx.strokeStyle = getComputedStyle(root).getPropertyValue("--marker").trim() || "#3ee0ff";
      ctx.strokeRect(peak[1] * cw, peak[0] * chh, cw, chh);
    }
  }

  // The same six rows always ("–" until known), so the controls below never move.
  function drawFacts(state, info, data, peak, box) {
    const rows = [];
    const add = (term, ...value) => {
      const text = value.filter((v) => v !== "").join("");
      rows.push(h("dt", {}, term), h("dd", { title: text || null }, ...(value.length && text ? value : ["–"])));
    };
    const known = data && state.channel !== null && state.channel < data.channels;
    const [my, mx] = known ? (data.argmax?.[state.channel] ?? [null, null]) : [null, null];
    add("channel", known ? `${state.channel} of ${data.channels}` : "");
    add("max", known ? fmt(data.max[state.channel]) : "", known && my !== null ? ` at (y ${my}, x ${mx})` : "");
    add("sum", known ? fmt(data.sum[state.channel]) : "");
    const seed = shown && shown.key === projKey(state) ? shown.result.seedValue : null;
    add("seed", seed === null ? "" : state.unit || state.select === "max" ? `${fmt(seed)} (one unit)` : `${fmt(seed)} (whole map)`);
    const field = info?.receptive_field || null;
    add("field", field ? `${Math.round(field.size)} px, stride ${Math.round(field.stride)}` : "");
    let patch = "";
    if (box && box.whole) patch = "whole input";
    else if (box) patch = `centre (y ${Math.round(box.cy)}, x ${Math.round(box.cx)}) px${patchBox(box).context ? ", with context" : ""}`;
    add("patch", patch);
    facts.replaceChildren(...rows);
  }

  // ---- controls ----------------------------------------------------------------------------
  for (const radio of $$('input[name="mode"]', root)) {
    radio.addEventListener("change", () => radio.checked && store.set({ mode: radio.value }));
  }
  for (const radio of $$('input[name="select"]', root)) {
    // click, not change: choosing "strongest" again must also drop a chosen unit
    radio.addEventListener("click", () => store.set({ select: radio.value, unit: null }));
  }
  unitChip.addEventListener("click", () => store.set({ unit: null }));

  // ---- click to zoom: input and projection side by side, large; small fields zoomed to the field ----
  const zoom = $('[data-role="recon-zoom"]');
  const zoomInput = $('[data-role="zoom-input"]', zoom);
  const zoomProj = $('[data-role="zoom-projection"]', zoom);
  const zoomInputCaption = $('[data-role="zoom-input-caption"]', zoom);
  const zoomProjCaption = $('[data-role="zoom-projection-caption"]', zoom);
  const ZOOM = 560; // canvas pixels (CSS fits them to the screen)
  const smallField = (box) => Boolean(box && !box.whole && box.side < inputSize / 3);

  function currentBox() {
    const state = store.get();
    const info = layerInfo(state.layer);
    const peak = info ? currentPeak(state, maps.dataFor(state)) : null;
    return peak ? fieldBox(info, peak[0], peak[1]) : null;
  }

  function drawZoom() {
    const box = currentBox();
    const view = zoom.querySelector('input[name="zoom-view"]:checked')?.value ?? "whole";
    const toField = view === "field" && box && !box.whole;
    zoom.dataset.view = toField ? "field" : "whole";
    const whole = { x0: 0, y0: 0, side: inputSize, cx: inputSize / 2, cy: inputSize / 2, whole: true };
    const projReady = Boolean(shown && projImg.complete && projImg.naturalWidth > 0);
    drawCrop(zoomInput, inputImg, toField ? box : whole, inputImg.complete && inputImg.naturalWidth > 0, ZOOM);
    drawCrop(zoomProj, projImg, toField ? box : whole, projReady, ZOOM);
    const where = toField ? `the ${Math.round(box.side)} px field (${patchBox(box).context ? "with context" : "exact"})` : `${inputSize}×${inputSize}`;
    zoomInputCaption.textContent = `input · ${where}`;
    zoomProjCaption.textContent = `${projImg.dataset.projMode || ""} projection · ${where}`;
  }

  function openZoom() {
    if (projImg.hidden) return;
    const radio = zoom.querySelector(`input[name="zoom-view"][value="${smallField(currentBox()) ? "field" : "whole"}"]`);
    if (radio) radio.checked = true;
    drawZoom();
    if (!zoom.open) zoom.showModal();
  }
  projStage.addEventListener("click", openZoom);
  for (const radio of zoom.querySelectorAll('input[name="zoom-view"]')) radio.addEventListener("change", drawZoom);
  $('[data-role="zoom-close"]', zoom).addEventListener("click", () => zoom.close());
  zoom.addEventListener("click", (event) => {
    if (event.target === zoom) zoom.close();
  });
  // After a mouse click on a switch, give the arrow keys back to the feature maps
  // (a focused radio group would take them); keyboard users keep the native radios.
  let pointing = false;
  const controls = $(".recon-controls", root);
  controls.addEventListener("pointerdown", () => (pointing = true));
  controls.addEventListener("click", (event) => {
    if (pointing && event.target.matches('input[type="radio"]')) setTimeout(() => event.target.blur(), 0);
    pointing = false;
  });

  // ---- probing one unit: click the input (or the map) -----------------------------------------
  function unitAt(event, element, fromMap) {
    const state = store.get();
    const info = layerInfo(state.layer);
    if (!info || state.channel === null) return null;
    const rect = element.getBoundingClientRect();
    const fx = (event.clientX - rect.left) / rect.width;
    const fy = (event.clientY - rect.top) / rect.height;
    let y;
    let x;
    if (fromMap) {
      y = Math.floor(fy * info.height);
      x = Math.floor(fx * info.width);
    } else {
      const field = info.receptive_field || { stride: 1, offset: 0 };
      const stride = field.stride || 1;
      y = Math.round((fy * inputSize - field.offset) / stride);
      x = Math.round((fx * inputSize - field.offset) / stride);
    }
    y = Math.min(info.height - 1, Math.max(0, y));
    x = Math.min(info.width - 1, Math.max(0, x));
    return [y, x];
  }

  inputStage.addEventListener("click", (event) => {
    const unit = unitAt(event, inputStage, false);
    if (unit) store.set({ unit: unit.join(",") });
  });
  cropMap.addEventListener("click", (event) => {
    const unit = unitAt(event, cropMap, true);
    if (unit) store.set({ unit: unit.join(",") });
  });
  inputStage.addEventListener("mousemove", (event) => {
    const state = store.get();
    const info = layerInfo(state.layer);
    const unit = unitAt(event, inputStage, false);
    marker.querySelector(".ghost")?.remove();
    if (!unit || !info) return;
    const box = fieldBox(info, unit[0], unit[1]);
    if (box.whole) return;
    const ghost = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    ghost.setAttribute("class", "ghost");
    for (const [k, v] of Object.entries({ x: box.x0, y: box.y0, width: box.side, height: box.side })) ghost.setAttribute(k, String(v));
    marker.append(ghost);
  });
  inputStage.addEventListener("mouseleave", () => marker.querySelector(".ghost")?.remove());
  for (const radio of $$('input[name="contrast"]', root)) {
    radio.checked = radio.value === prefs.contrast;
    radio.addEventListener("change", () => radio.checked && setContrast(radio.value));
  }

  function setContrast(value) {
    prefs.contrast = value;
    for (const radio of $$('input[name="contrast"]', root)) radio.checked = radio.value === value;
    savePrefs();
    const state = store.get();
    if (state.channel !== null && state.layer) loadProjection(state);
  }
  overlayToggle.addEventListener("change", () => setOverlay(overlayToggle.checked));

  function modeReasonFor(resolved, state) {
    if (resolved.mode === "deconvnet") {
      return resolved.switches === false
        ? `deconvnet chosen: ${state.layer} has no max-pool switches below it, so the picture is the same for every image.`
        : `deconvnet chosen: max-pool switches below ${state.layer} carry this image down (Zeiler & Fergus).`;
    }
    if (resolved.mode === "guided") return "guided backprop chosen: the deconvnet's rectified signal, also masked by the forward ReLUs.";
    return "gradient chosen: plain backprop, the forward ReLU masks only.";
  }

  function setReasonOpen(open) {
    modeWhy.setAttribute("aria-expanded", String(open));
    modeReason.hidden = !open || !modeReason.textContent;
  }
  modeWhy.addEventListener("click", () => setReasonOpen(modeWhy.getAttribute("aria-expanded") !== "true"));

  function setOverlay(on) {
    prefs.overlay = on;
    overlayToggle.checked = on;
    savePrefs();
    refreshGeometry();
  }

  function syncControls(state) {
    const resolved = modeFor(state); // null while the layer list loads
    modeResolved.textContent = resolved && state.mode === "auto" ? ` · ${resolved.mode}` : resolved ? "" : " · …";
    const reason = resolved?.reason ?? (resolved ? modeReasonFor(resolved, state) : "");
    modeReason.textContent = reason;
    modeWhy.disabled = !reason;
    if (!reason) setReasonOpen(false);
    modeReason.hidden = !reason || modeWhy.getAttribute("aria-expanded") !== "true";
    // a deconvnet without max-pool switches below the layer reads nothing of the image: say so plainly
    const blind = Boolean(resolved && resolved.mode === "deconvnet" && resolved.switches === false);
    modeHint.hidden = !blind;
    if (blind) {
      modeHint.textContent =
        `This picture does not depend on the image: no max-pooling lies below ${state.layer}, so the deconvnet ` +
        "has no switches to carry the image down, and every photo gives the same projection of this unit " +
        "(only its position follows the image; Mahendran & Vedaldi, 2016). Guided backprop (or auto) shows the image's structure.";
    }
    const uncovered = resolved?.uncovered ?? [];
    rulesNote.hidden = !uncovered.length;
    rulesNote.textContent = uncovered.length
      ? `Not covered by the ${effectiveMode(state)} rules at ${state.layer}: ${uncovered.join(", ")}; these layers pass the signal through with their plain gradient, so read the picture with care.`
      : "";
    for (const radio of $$('input[name="mode"]', root)) radio.checked = radio.value === state.mode;
    for (const radio of $$('input[name="select"]', root)) radio.checked = !state.unit && radio.value === state.select;
    unitChip.hidden = !state.unit;
    if (state.unit) {
      const [y, x] = parseUnit(state.unit);
      unitChip.textContent = `unit y ${y} · x ${x}  ✕`;
      unitChip.setAttribute("aria-label", `Projecting unit y ${y}, x ${x}; click to go back to the strongest activation`);
    }
    if (state.channel === null) {
      projEmpty.textContent = EMPTY_TEXT;
      projEmpty.hidden = false;
      projImg.hidden = true;
    }
  }

  return {
    loadInput,
    loadProjection,
    refreshGeometry,
    update: syncControls,
    toggleOverlay: () => setOverlay(!overlayToggle.checked),
    toggleContrast: () => setContrast(prefs.contrast === "auto" ? "paper" : "auto"),
    reset() {
      shown = null;
      wanted = null;
      cancelOthers([]);
      projImg.hidden = true;
      projEmpty.hidden = false;
      refreshGeometry();
    },
    showError: (message) => showError(errorBox, message),
  };
}
