// "Top 9" panel (paper Fig. 2): for the selected channel, the nine strongest
// activations across a scanned dataset (by default the bundled sample photos, which
// the server scans at start-up). Left: the deconvnet projection of each activation,
// cropped to its receptive field; right: the image patch under it. Hover shows the
// value; click opens that image in the main view at the same layer and channel.
//
// It owns its DOM (built inside the `[data-panel="top9"]` section) and reads the
// view state only; main.js calls `sync(state, changed)` on every change.

import { api, isAbort, request } from "./api.js";
import { busy, fmt, h, showError } from "./util.js";

const enc = encodeURIComponent;
const DEBOUNCE_MS = 120; // keyboard walks through channels: fetch the one the user stops at
const POLL_MS = 1000; // while a scan runs

const scansUrl = (model) => `/api/models/${enc(model)}/scans`;

export function createTop9Panel({ root, store, upload }) {
  if (!root) return { sync() {} };
  const note = h("span", { class: "panel-note top9-note", dataset: { role: "top9-note" } });
  const montageLink = h("a", {
    class: "top9-montage",
    target: "_blank",
    rel: "noopener",
    title: "Fig. 2-style montage of this channel and the next ones (PNG)",
    hidden: true,
    dataset: { role: "top9-montage" },
  }, "montage ↗");
  const projections = h("div", { class: "top9-grid", role: "list", "aria-label": "Projections of the top activations", dataset: { role: "top9-projections" } });
  const crops = h("div", { class: "top9-grid", role: "list", "aria-label": "Image patches of the top activations", dataset: { role: "top9-crops" } });
  const hover = h("div", { class: "top9-hover", "aria-live": "polite", dataset: { role: "top9-hover" } });
  const message = h("div", { class: "top9-message", dataset: { role: "top9-message" }, hidden: true });
  const errorBox = h("div", { class: "error", role: "alert", dataset: { role: "top9-error" }, hidden: true });
  root.replaceChildren(
    h("header", { class: "panel-head" }, h("h2", { id: "top9-title" }, "Top 9"), note, montageLink),
    h("div", { class: "top9-pair" },
      h("figure", {}, projections, h("figcaption", {}, "projections")),
      h("figure", {}, crops, h("figcaption", {}, "image patches"))),
    hover,
    message,
    errorBox,
  );
  root.setAttribute("aria-labelledby", "top9-title");
  root.closest(".explore")?.classList.add("has-top9");

  const scans = new Map(); // model -> the list of its scans
  const started = new Map(); // "model|layer" -> job url of the sample scan started for it, "starting", "done" or "failed"
  let timer = null;
  let poller = null;
  let shownKey = null;
  let generation = 0;

  function clearTiles() {
    projections.replaceChildren();
    crops.replaceChildren();
    hover.textContent = "";
  }

  function say(text, nodes = []) {
    clearTiles();
    shownKey = null;
    montageLink.hidden = true;
    message.replaceChildren(text, ...nodes);
    message.hidden = !text;
  }

  async function listScans(model, { fresh = false } = {}) {
    const known = scans.get(model);
    if (known && !fresh) return known;
    const list = await request(scansUrl(model), { slot: "top9-scans" });
    scans.set(model, list);
    return list;
  }

  function pollUntilDone(model) {
    if (poller) return;
    poller = setTimeout(async () => {
      poller = null;
      try {
        await listScans(model, { fresh: true });
      } catch (error) {
        if (!isAbort(error)) showError(errorBox, `The scans could not be listed: ${error.message}`);
      }
      const state = store.get();
      if (state.model === model) refresh(state, { force: true });
    }, POLL_MS);
  }

  function pick(list, layer) {
    const usable = list.filter((s) => s.weights_match);
    const done = usable.find((s) => s.status === "complete" && s.layers.some((l) => l.name === layer));
    if (done) return { scan: done };
    const running = usable.find((s) => s.status === "running" && s.layers.some((l) => l.name === layer));
    if (running) return { running };
    const other = usable.find((s) => s.status === "complete");
    return { other, anyRunning: usable.some((s) => s.status === "running") };
  }

  function open(entry, state) {
    const patch = { channel: state.channel, unit: null };
    if (entry.image.sample) {
      store.set({ ...patch, image: entry.image.id });
      return;
    }
    // an image of a scanned folder: the server has it, the main view needs an upload id
    busy(root, request(entry.image.url, { as: "blob" }))
      .then(({ blob }) => upload(blob, entry.image.id.split("/").pop()))
      .then(() => store.set(patch))
      .catch((error) => {
        if (!isAbort(error)) showError(errorBox, `That image could not be opened: ${error.message}`);
      });
  }

  function tile(entry, url, kind, state, scan) {
    const label = `#${entry.rank + 1} ${entry.image.id}: ${fmt(entry.value)} at (${entry.y}, ${entry.x})`;
    const img = h("img", {
      src: url,
      alt: `${kind} ${entry.rank + 1}: ${entry.image.id}`,
      loading: "eager",
      decoding: "async",
      draggable: false,
    });
    img.addEventListener("error", () => button.classList.add("is-broken"), { once: true });
    const button = h("button", {
      type: "button",
      class: "top9-tile",
      role: "listitem",
      title: `${label}\nclick: open ${entry.image.sample ? "this sample" : "this image"} at channel ${state.channel}`,
      "aria-label": `${kind} ${entry.rank + 1}, value ${fmt(entry.value)}, ${entry.image.id}: open it`,
      dataset: { rank: String(entry.rank), value: String(entry.value), image: entry.image.id, kind },
      onmouseenter: () => {
        hover.textContent = `${label} · ${scan.label}`;
      },
      onfocus: () => {
        hover.textContent = `${label} · ${scan.label}`;
      },
      onclick: () => open(entry, store.get()),
    }, img);
    return button;
  }

  async function show(state, scan) {
    const key = `${state.model}|${scan.id}|${state.layer}|${state.channel}`;
    if (key === shownKey) return;
    const mine = ++generation;
    const url = `${scan.url}/top?layer=${enc(state.layer)}&channel=${state.channel}`;
    try {
      const body = await busy(root, request(url, { slot: "top9" }));
      if (mine !== generation) return;
      showError(errorBox, "");
      message.hidden = true;
      shownKey = key;
      projections.replaceChildren(...body.entries.map((e) => tile(e, e.projection_url, "projection", state, scan)));
      crops.replaceChildren(...body.entries.map((e) => tile(e, e.crop_url, "patch", state, scan)));
      hover.textContent = body.entries.length ? "" : "No activations were recorded for this channel.";
      note.textContent = `${scan.label} · ${scan.images} images`;
      const layerInfo = scan.layers.find((l) => l.name === state.layer);
      const last = Math.min((layerInfo?.channels ?? state.channel + 1) - 1, state.channel + 7);
      montageLink.href = `${scan.url}/montage.png?layer=${enc(state.layer)}&channels=${state.channel}-${last}`;
      montageLink.hidden = false;
    } catch (error) {
      if (isAbort(error) || mine !== generation) return;
      say("");
      showError(errorBox, `The top 9 could not be loaded: ${error.message}`);
    }
  }

  async function refresh(state, { force = false } = {}) {
    if (!state.model || !state.layer || state.channel === null || state.channel === undefined) {
      say("Select a feature map to see the images that drive it most.");
      return;
    }
    const mine = ++generation;
    let list;
    try {
      list = await listScans(state.model, { fresh: force });
    } catch (error) {
      if (isAbort(error) || mine !== generation) return;
      say("");
      showError(errorBox, `The scans could not be listed: ${error.message}`);
      return;
    }
    if (mine !== generation) return;
    showError(errorBox, "");
    const { scan, running, other, anyRunning } = pick(list, state.layer);
    if (scan) return show(state, scan);
    if (running) {
      const { images_done: done } = running.progress;
      note.textContent = running.label;
      say(`Scanning ${running.label}… ${done} of ${running.images} images.`);
      pollUntilDone(state.model);
      return;
    }
    // No scan has this layer yet: scan the sample photos for it (once per page and layer).
    const key = `${state.model}|${state.layer}`;
    if (!started.has(key)) {
      started.set(key, "starting");
      note.textContent = "";
      say(`Scanning the sample photos for ${state.layer}…`);
      try {
        const job = await api.postJson(scansUrl(state.model), { samples: true, layers: [state.layer] });
        started.set(key, job.url);
      } catch (error) {
        started.set(key, "failed");
        if (mine !== generation) return;
        say(other ? `${state.layer} is not in the scan of ${other.label}. Scanned layers: ` : "", other ? layerButtons(other) : []);
        showError(errorBox, `The sample photos could not be scanned for ${state.layer}: ${error.message}`);
        return;
      }
      pollUntilDone(state.model);
      return;
    }
    const jobUrl = started.get(key);
    if (!["failed", "starting", "done"].includes(jobUrl)) {
      let job = null;
      try {
        job = await request(jobUrl, { slot: "top9-job" });
      } catch (error) {
        if (isAbort(error)) return;
      }
      if (mine !== generation) return;
      if (job && !["succeeded", "failed", "cancelled"].includes(job.state)) {
        const progress = job.total ? ` ${job.done} of ${job.total} images.` : " (queued)";
        say(`Scanning the sample photos for ${state.layer}…${progress}`);
        pollUntilDone(state.model);
        return;
      }
      if (job && job.state === "succeeded") {
        started.set(key, "done");
        pollUntilDone(state.model); // list the new scan
        return;
      }
      started.set(key, "failed");
      const reason = job?.error?.detail || job?.state || "the job is gone";
      showError(errorBox, `The sample photos could not be scanned for ${state.layer}: ${reason}`);
    } else if (jobUrl === "starting" || anyRunning) {
      pollUntilDone(state.model);
      return;
    }
    if (other) {
      note.textContent = other.label;
      say(`${state.layer} is not in the scan of ${other.label}. Scanned layers: `, layerButtons(other));
      return;
    }
    note.textContent = "";
    say("No scan of this model yet: run `convscope scan` (see docs/scan.md).");
  }

  function layerButtons(scan) {
    return scan.layers.map((l) =>
      h("button", { type: "button", class: "linkish", onclick: () => store.set({ layer: l.name, unit: null }) }, l.name),
    );
  }

  function sync(state, changed) {
    if (!["model", "layer", "channel"].some((k) => changed.has(k))) return;
    if (changed.has("model")) shownKey = null;
    clearTimeout(timer);
    timer = setTimeout(() => refresh(store.get()), changed.has("channel") && !changed.has("layer") ? DEBOUNCE_MS : 0);
  }

  // A finished job may have added a scan: look again when the tab becomes visible.
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") {
      const state = store.get();
      if (state.model) scans.delete(state.model);
    }
  });

  return { sync, refresh: () => refresh(store.get(), { force: true }) };
}
