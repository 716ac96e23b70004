// "Top 9" panel (paper Fig. 2): for the selected channel, the nine strongest
// activations across a dataset — the bundled sample photos (scanned by the server at
// start-up) or any folder scanned under the server's scan roots. Each activation is a
// pair: its projection (in the current mode, auto resolved) beside the image patch
// under its receptive field. Patches that reach past the image border keep their true
// position; the part outside the image is drawn in a neutral hatch with the image edge
// marked. Tiles show a placeholder until their picture arrives; a click enlarges a pair
// to the full receptive field, with a button that opens the image in the Explore view.
// The nine projections come in one request (`api.topProjections`, data URLs); should
// it fail, each tile asks for its own PNG, so one unreadable image breaks only its tile.
//
// It owns its DOM (built inside the `[data-panel="top9"]` section) and reads the view
// state only; main.js calls `sync(state, changed)` on every change. Scans are jobs,
// followed with the shared job runner (jobs.js).

import { api, isAbort, request, urls } from "./api.js";
import { cancelJob, followJob, isFinished, startJob } from "./jobs.js";
import { busy, fmt, h, showError, svg } from "./util.js";

const DEBOUNCE_MS = 120; // keyboard walks through channels: fetch the one the user stops at
const SAMPLES_LABEL = "the bundled sample photos";
const SCAN_FOLDER = "\u0000scan-folder"; // the picker's "Scan a folder…" entry

/** The Top 9 panel as a view (see tabs.js): ctx is { store, upload, modeFor, inputSize }. */
export function createView({ root, ctx }) {
  const { store, upload, modeFor, inputSize } = ctx;
  if (!root) return { update() {} };
  const note = h("span", { class: "panel-note top9-note", dataset: { role: "top9-note" } });
  const picker = h("select", { class: "top9-dataset", "aria-label": "Dataset of the top 9", title: "Which scanned images to take the top 9 from", dataset: { role: "top9-dataset" } });
  const montageLink = h("a", {
    class: "top9-montage",
    target: "_blank",
    rel: "noopener",
    title: "Fig. 2-style montage of this channel and the next ones (PNG)",
    hidden: true,
    dataset: { role: "top9-montage" },
  }, "montage ↗");
  // folder scans
  const folderSelect = h("select", { "aria-label": "Folder to scan", dataset: { role: "top9-folder" } });
  const scanButton = h("button", { type: "button", class: "btn", dataset: { role: "top9-scan-start" } }, "Scan");
  const scanCancel = h("button", { type: "button", class: "btn", hidden: true, dataset: { role: "top9-scan-cancel" } }, "Cancel");
  const scanProgress = h("progress", { max: 1, value: 0, hidden: true, "aria-label": "Scan progress", dataset: { role: "top9-scan-progress" } });
  const scanText = h("span", { class: "top9-scan-text", "aria-live": "polite", dataset: { role: "top9-scan-text" } });
  const folderForm = h("div", { class: "top9-folder", hidden: true, dataset: { role: "top9-folder-form" } },
    h("span", { class: "top9-folder-label" }, "Scan a folder"), folderSelect, scanButton, scanCancel, scanProgress, scanText);
  // tiles: two lists (hooks for scripts), laid out as projection | patch pairs by CSS
  const projections = h("div", { class: "top9-list", role: "list", "aria-label": "Projections of the top activations", dataset: { role: "top9-projections" } });
  const crops = h("div", { class: "top9-list", role: "list", "aria-label": "Image patches of the top activations", dataset: { role: "top9-crops" } });
  const grid = h("div", { class: "top9-grid", dataset: { role: "top9-grid" } }, projections, crops);
  const progressLine = h("div", { class: "top9-loading", "aria-live": "polite", dataset: { role: "top9-progress" } });
  const hover = h("div", { class: "top9-hover", "aria-live": "polite", dataset: { role: "top9-hover" } });
  const message = h("div", { class: "top9-message", dataset: { role: "top9-message" }, hidden: true });
  const errorBox = h("div", { class: "error", role: "alert", dataset: { role: "top9-error" }, hidden: true });
  const zoom = createZoom();
  // The server renders a montage as a job (202 until it is ready): follow it, then open the PNG.
  montageLink.addEventListener("click", async (event) => {
    event.preventDefault();
    const url = montageLink.href;
    const tab = window.open("about:blank", "_blank"); // opened in the click, so no popup blocker stops it
    montageLink.dataset.state = "rendering";
    try {
      const response = await fetch(url);
      if (response.status === 202) await followJob(await response.json());
      else if (!response.ok) throw new Error((await response.json()).detail || response.statusText);
      if (tab) tab.location.href = url;
      montageLink.dataset.state = "ready";
    } catch (error) {
      tab?.close();
      montageLink.dataset.state = "failed";
      showError(errorBox, `The montage could not be rendered: ${error.message}`);
    }
  });
  root.replaceChildren(
    h("header", { class: "panel-head" }, h("h2", { id: "top9-title" }, "Top 9"), picker, note, montageLink),
    folderForm,
    grid,
    progressLine,
    hover,
    message,
    errorBox,
    zoom.dialog,
  );
  root.setAttribute("aria-labelledby", "top9-title");
  root.closest(".explore")?.classList.add("has-top9");

  const scans = new Map(); // model -> the list of its scans
  const following = new Map(); // job url -> promise of its end (one follower per job)
  const started = new Map(); // "model|layer" -> "started" | "failed": sample scans started on demand
  let dataset = SAMPLES_LABEL; // the label of the scans the top 9 come from
  let folderJob = null; // {url, cancelled} of the folder scan started here
  let roots = null; // the server's scan roots (loaded when the form opens)
  let timer = null;
  let shownKey = null;
  let generation = 0;
  let tileSet = 0; // the projection tiles' current set (see loadProjections)

  const resolvedMode = (state) => modeFor(state)?.mode ?? state.mode; // the server resolves auto too

  function clearTiles() {
    tileSet += 1;
    projections.replaceChildren();
    crops.replaceChildren();
    hover.textContent = "";
    progressLine.textContent = "";
    root.dataset.tilesLoading = "0";
  }

  function say(text, nodes = []) {
    clearTiles();
    shownKey = null;
    montageLink.hidden = true;
    message.replaceChildren(text, ...nodes);
    message.hidden = !text;
  }

  // ---- datasets ----------------------------------------------------------------------------------
  async function listScans(model, { fresh = false } = {}) {
    const known = scans.get(model);
    if (known && !fresh) return known;
    const list = await request(urls.scans(model), { slot: "top9-scans" });
    scans.set(model, list);
    renderPicker(list);
    return list;
  }

  function renderPicker(list) {
    const labels = [...new Set(list.filter((s) => s.weights_match).map((s) => s.label))];
    if (!labels.includes(SAMPLES_LABEL)) labels.unshift(SAMPLES_LABEL);
    const images = (label) => Math.max(0, ...list.filter((s) => s.label === label).map((s) => s.images));
    picker.replaceChildren(
      ...labels.map((label) =>
        h("option", { value: label, title: label }, label === SAMPLES_LABEL ? "sample photos" : label, images(label) ? ` · ${images(label)} images` : ""),
      ),
      h("option", { value: SCAN_FOLDER }, "Scan a folder…"),
    );
    picker.value = folderForm.hidden ? dataset : SCAN_FOLDER;
  }

  picker.addEventListener("change", () => {
    if (picker.value === SCAN_FOLDER) {
      openFolderForm();
      return;
    }
    folderForm.hidden = Boolean(!folderJob);
    dataset = picker.value;
    shownKey = null;
    refresh(store.get());
  });

  async function openFolderForm() {
    folderForm.hidden = false;
    showError(errorBox, "");
    try {
      roots = await request(urls.scanRoots(), { slot: "top9-roots" });
    } catch (error) {
      if (!isAbort(error)) showError(errorBox, `The scan roots could not be listed: ${error.message}`);
      return;
    }
    const folders = roots.flatMap((r) => r.folders);
    folderSelect.replaceChildren(...folders.map((f) => h("option", { value: f }, f)));
    folderSelect.disabled = scanButton.disabled = !folders.length || Boolean(folderJob);
    if (!folders.length) {
      scanText.textContent = "This server has no scan roots: start it with CONVSCOPE_SCAN_ROOTS=/path/to/photos (see the README).";
    } else if (!folderJob) {
      scanText.textContent = "";
    }
  }

  async function scanFolder(folder, layer) {
    const state = store.get();
    if (!folder || folderJob) return;
    const job = { url: null, cancelled: false };
    folderJob = job;
    folderForm.hidden = false;
    scanButton.disabled = folderSelect.disabled = true;
    scanCancel.hidden = false;
    scanProgress.hidden = false;
    scanProgress.value = 0;
    scanText.textContent = `Scanning ${folder}…`;
    root.dataset.scan = "running";
    try {
      const result = await startJob(urls.scans(state.model), { folder, layers: [layer] }, {
        job,
        onProgress: (s) => {
          scanProgress.value = s.progress || 0;
          scanText.textContent = s.total ? `Scanning ${folder}: ${s.done} of ${s.total} images` : `Scanning ${folder}… (queued)`;
        },
      });
      scanText.textContent = `Scanned ${folder}: ${result.images ?? ""} images.`;
      root.dataset.scan = "done";
      dataset = folder;
      await listScans(state.model, { fresh: true });
      folderForm.hidden = true;
      picker.value = dataset;
      shownKey = null;
      refresh(store.get());
    } catch (error) {
      root.dataset.scan = error.aborted ? "cancelled" : "failed";
      scanText.textContent = error.aborted ? "Scan cancelled." : "";
      if (!error.aborted) showError(errorBox, `${folder} could not be scanned: ${error.message}`);
    } finally {
      folderJob = null;
      scanButton.disabled = folderSelect.disabled = false;
      scanCancel.hidden = true;
      scanProgress.hidden = true;
    }
  }

  scanButton.addEventListener("click", () => scanFolder(folderSelect.value, store.get().layer));
  scanCancel.addEventListener("click", () => cancelJob(folderJob));

  /** Follow a running scan's job to its end (once per job), then look at the list again. */
  function follow(model, jobUrl, what) {
    if (!following.has(jobUrl)) {
      const done = request(jobUrl)
        .then((first) => followJob(first, { onProgress: (s) => showScanning(what, s) }))
        .catch(() => null) // a failed or vanished job: the list says what there is
        .finally(() => following.delete(jobUrl));
      following.set(jobUrl, done);
      done.then(() => {
        const state = store.get();
        if (state.model === model) refresh(state, { force: true });
      });
    }
  }

  function showScanning(what, job) {
    if (shownKey !== null || isFinished(job)) return;
    const progress = job.total ? ` ${job.done} of ${job.total} images.` : " (queued)";
    message.replaceChildren(`Scanning ${what}…${progress}`);
    message.hidden = false;
  }

  function pick(list, layer) {
    const usable = list.filter((s) => s.weights_match && s.label === dataset);
    const done = usable.find((s) => s.status === "complete" && s.layers.some((l) => l.name === layer));
    if (done) return { scan: done };
    const running = usable.find((s) => s.status === "running" && s.layers.some((l) => l.name === layer));
    if (running) return { running };
    return { other: usable.find((s) => s.status === "complete") };
  }

  // ---- tiles ----------------------------------------------------------------------------------------
  function open(entry, state) {
    const patch = { channel: state.channel, unit: null };
    zoom.close();
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

  /** The parts of an entry's box outside the S×S image, and the image edge, over a tile. */
  function borderOverlay(box) {
    const S = inputSize();
    const [top, left, bottom, right] = box;
    const w = right - left;
    const hgt = bottom - top;
    if (top >= 0 && left >= 0 && bottom <= S && right <= S) return null;
    const ix = Math.max(0, -left);
    const iy = Math.max(0, -top);
    const iw = Math.min(S, right) - Math.max(0, left);
    const ih = Math.min(S, bottom) - Math.max(0, top);
    return svg(
      "svg",
      { class: "top9-border", viewBox: `0 0 ${w} ${hgt}`, preserveAspectRatio: "none", "aria-hidden": "true" },
      // the whole box minus the image part (even-odd), so corners are drawn once
      svg("path", { class: "top9-outside", "fill-rule": "evenodd", d: `M0 0H${w}V${hgt}H0Z M${ix} ${iy}V${iy + ih}H${ix + iw}V${iy}Z` }),
      svg("rect", { class: "top9-edge", x: ix, y: iy, width: iw, height: ih }),
    );
  }

  function tile(entry, url, kind, state, scan, onSettled) {
    const label = `#${entry.rank + 1} ${entry.image.id}: ${fmt(entry.value)} at (${entry.y}, ${entry.x})`;
    const img = h("img", { alt: `${kind} ${entry.rank + 1}: ${entry.image.id}`, decoding: "async", draggable: false });
    const border = borderOverlay(entry.box);
    const button = h("button", {
      type: "button",
      class: "top9-tile is-loading",
      role: "listitem",
      title: `${label}\nclick: enlarge`,
      "aria-label": `${kind} ${entry.rank + 1}, value ${fmt(entry.value)}, ${entry.image.id}: enlarge`,
      style: { order: String(entry.rank * 2 + (kind === "patch" ? 1 : 0)) },
      dataset: { rank: String(entry.rank), value: String(entry.value), image: entry.image.id, kind, state: "loading", outside: border ? "true" : "false" },
      onmouseenter: () => (hover.textContent = `${label} · ${scan.label}`),
      onfocus: () => (hover.textContent = `${label} · ${scan.label}`),
      onclick: () => zoom.show(entry, state, scan),
    }, img, border);
    const settle = (ok) => {
      button.classList.remove("is-loading");
      button.classList.toggle("is-broken", !ok);
      button.dataset.state = ok ? "ready" : "broken";
      onSettled();
    };
    img.addEventListener("load", () => settle(true), { once: true });
    img.addEventListener("error", () => settle(false), { once: true });
    if (url) img.src = url;
    return button;
  }

  /** The projection tiles' pictures, all nine in one request (`api.topProjections`; each tile's own URL if that fails). */
  async function loadProjections(body, scanUrl, tiles) {
    const mine = ++tileSet; // tiles rebuilt since: this answer is not theirs
    let sources;
    try {
      sources = await api.topProjections(scanUrl, body, { slot: "top9-projections" });
    } catch {
      return; // cancelled: a newer set of tiles asked
    }
    if (mine !== tileSet) return;
    body.entries.forEach((entry, i) => {
      entry.projectionSrc = sources[i].src;
      tiles[i].dataset.mode = sources[i].mode;
      tiles[i].querySelector("img").src = sources[i].src;
    });
  }

  async function show(state, scan) {
    const mode = resolvedMode(state);
    const key = `${state.model}|${scan.id}|${state.layer}|${state.channel}|${mode}`;
    if (key === shownKey) return;
    const mine = ++generation;
    try {
      const body = await busy(root, request(urls.scanTop(scan.url, { layer: state.layer, channel: state.channel, mode }), { slot: "top9" }));
      if (mine !== generation) return;
      showError(errorBox, "");
      message.hidden = true;
      shownKey = key;
      const total = body.entries.length * 2;
      let settled = 0;
      const onSettled = () => {
        settled += 1;
        root.dataset.tilesLoading = String(total - settled);
        progressLine.textContent = settled < total ? `loading ${settled} of ${total} pictures…` : "";
      };
      root.dataset.tilesLoading = String(total);
      root.dataset.mode = body.mode;
      progressLine.textContent = total ? `loading 0 of ${total} pictures…` : "";
      const projectionTiles = body.entries.map((e) => tile(e, null, "projection", state, scan, onSettled));
      projections.replaceChildren(...projectionTiles);
      loadProjections(body, scan.url, projectionTiles);
      crops.replaceChildren(...body.entries.map((e) => tile(e, e.crop_url, "patch", state, scan, onSettled)));
      hover.textContent = body.entries.length ? "" : "No activations were recorded for this channel.";
      note.textContent = `${body.mode} · ${scan.images} images`;
      note.title = `${scan.label}: projections in ${body.mode} mode`;
      const layerInfo = scan.layers.find((l) => l.name === state.layer);
      const last = Math.min((layerInfo?.channels ?? state.channel + 1) - 1, state.channel + 7);
      montageLink.href = urls.scanMontage(scan.url, { layer: state.layer, channels: `${state.channel}-${last}`, mode: body.mode });
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
    const { scan, running, other } = pick(list, state.layer);
    if (scan) return show(state, scan);
    const what = dataset === SAMPLES_LABEL ? "the sample photos" : dataset;
    if (running) {
      say(`Scanning ${what}… ${running.progress.images_done} of ${running.images} images.`);
      if (running.job) follow(state.model, running.job, what);
      return;
    }
    const key = `${state.model}|${state.layer}`;
    if (dataset === SAMPLES_LABEL && !started.has(key)) {
      // No scan of the samples has this layer yet: scan them for it (once per page and layer).
      started.set(key, "started");
      say(`Scanning the sample photos for ${state.layer}…`);
      startJob(urls.scans(state.model), { samples: true, layers: [state.layer] }, { onProgress: (s) => showScanning(what, s) })
        .then(() => {
          const now = store.get();
          if (now.model === state.model) refresh(now, { force: true });
        })
        .catch((error) => {
          started.set(key, "failed");
          if (store.get().layer === state.layer) showError(errorBox, `The sample photos could not be scanned for ${state.layer}: ${error.message}`);
        });
      return;
    }
    if (dataset === SAMPLES_LABEL && started.get(key) === "started") return; // its job is being followed
    if (other) {
      const rescan = other.source === "folder"
        ? [" · ", h("button", { type: "button", class: "linkish", dataset: { role: "top9-rescan" }, onclick: () => scanFolder(other.label, state.layer) }, `scan ${other.label} for ${state.layer}`)]
        : [];
      say(`${state.layer} is not in the scan of ${other.label}. Scanned layers: `, [...layerButtons(other), ...rescan]);
      return;
    }
    say("No scan of this model yet: run `convscope scan` (see docs/scan.md).");
  }

  function layerButtons(scan) {
    return scan.layers.map((l) =>
      h("button", { type: "button", class: "linkish", onclick: () => store.set({ layer: l.name, unit: null }) }, l.name),
    );
  }

  // ---- the enlarged pair -------------------------------------------------------------------------
  function createZoom() {
    const projImg = h("img", { alt: "Projection, enlarged", dataset: { role: "top9-zoom-projection" } });
    const cropImg = h("img", { alt: "Image patch, enlarged", dataset: { role: "top9-zoom-patch" } });
    const projFig = h("figure", {}, h("div", { class: "top9-zoom-stage" }, projImg), h("figcaption", {}, "projection"));
    const cropFig = h("figure", {}, h("div", { class: "top9-zoom-stage" }, cropImg), h("figcaption", {}, "image patch (receptive field)"));
    const caption = h("p", { class: "top9-zoom-caption", dataset: { role: "top9-zoom-caption" } });
    const openButton = h("button", { type: "button", class: "btn", dataset: { role: "top9-open" } }, "Open this image in Explore");
    const closeButton = h("button", { type: "button", class: "btn", "aria-label": "Close", dataset: { role: "top9-zoom-close" } }, "Close");
    const dialog = h("dialog", { class: "top9-zoom", "aria-label": "Top 9 activation, enlarged", dataset: { role: "top9-zoom" } },
      h("div", { class: "top9-zoom-pair" }, projFig, cropFig), caption, h("div", { class: "top9-zoom-tools" }, openButton, closeButton));
    let current = null;
    openButton.addEventListener("click", () => current && open(current.entry, current.state));
    closeButton.addEventListener("click", () => dialog.close());
    dialog.addEventListener("click", (event) => {
      if (event.target === dialog) dialog.close(); // a click on the backdrop
    });
    return {
      dialog,
      show(entry, state, scan) {
        current = { entry, state };
        const [top, left, bottom, right] = entry.box;
        for (const [img, url] of [[projImg, entry.projectionSrc || entry.projection_url], [cropImg, entry.crop_url]]) {
          img.src = url;
          img.parentElement.querySelector(".top9-border")?.remove();
          const border = borderOverlay(entry.box);
          if (border) img.parentElement.append(border);
        }
        caption.textContent = `#${entry.rank + 1} of ${scan.label}: ${entry.image.id}, value ${fmt(entry.value)} at (y ${entry.y}, x ${entry.x}) · field ${bottom - top}×${right - left} px at (${top}, ${left})`;
        if (!dialog.open) dialog.showModal();
      },
      close: () => dialog.open && dialog.close(),
    };
  }

  function update(state, changed) {
    if (!["model", "layer", "channel", "mode"].some((k) => changed.has(k))) return;
    if (changed.has("model")) {
      shownKey = null;
      dataset = SAMPLES_LABEL;
    }
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

  return { update, refresh: () => refresh(store.get(), { force: true }) };
}
