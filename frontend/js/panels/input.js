// Input panel: sample photos, upload (button, drag-and-drop, paste) and the webcam.
// Uploads get a thumbnail beside the samples and stay selectable; an image smaller than
// MIN_SIDE on its shorter side is accepted with a visible warning about the upscaling.

import { api, isAbort, urls } from "../api.js";
import { $, busy, h, showError } from "../util.js";


const MIN_SIDE = 32; // below this, the model sees mostly interpolation
const MAX_UPLOAD_THUMBS = 8;

/** The Input panel as a view (see tabs.js): ctx is { store, settled }. */
export function createView({ root, ctx }) {
  const { store, settled } = ctx;
  const panel = root;
  const samplesBox = $('[data-role="samples"]', panel);
  const fileInput = $('[data-role="upload-input"]', panel);
  const errorBox = $('[data-role="input-error"]', panel);
  const currentLabel = $('[data-role="current-image"]', panel);
  const cameraBox = $('[data-role="camera"]', panel);
  const cameraButton = $('[data-role="camera-open"]', panel);
  const video = $('[data-role="camera-video"]', panel);
  const captureButton = $('[data-role="camera-capture"]', panel);
  const liveButton = $('[data-role="camera-live"]', panel);
  const rateSelect = $('[data-role="camera-rate"]', panel);
  const cameraStat = $('[data-role="camera-stat"]', panel);
  const dropOverlay = $('[data-role="drop-overlay"]');
  const uploadsBox = $('[data-role="uploads"]', panel);
  const warningBox = $('[data-role="input-warning"]', panel);

  let samples = [];
  const uploadNames = new Map(); // upload id -> what to call it
  const uploadSizes = new Map(); // upload id -> [width, height] of the file as sent

  // ---- samples ---------------------------------------------------------------
  function renderSamples(list) {
    samples = list;
    samplesBox.replaceChildren(
      ...list.map((sample) =>
        h(
          "button",
          {
            type: "button",
            dataset: { sample: sample.id },
            "aria-label": `Sample photo: ${sample.name}`,
            "aria-pressed": "false",
            title: `${sample.name} (${sample.width}×${sample.height})`,
            onclick: () => {
              showError(errorBox, "");
              store.set({ image: sample.id });
            },
          },
          h("img", { src: urls.thumbnail(sample.id), alt: "", loading: "lazy", decoding: "async" }),
        ),
      ),
    );
    sync(store.get());
  }

  function describeImage(id) {
    if (!id) return "";
    const sample = samples.find((s) => s.id === id);
    if (sample) return sample.name;
    return uploadNames.get(id) || `upload ${id.slice(0, 10)}`;
  }

  function sync(state) {
    for (const button of samplesBox.querySelectorAll("button[data-sample]")) {
      button.setAttribute("aria-pressed", String(button.dataset.sample === state.image));
    }
    for (const button of uploadsBox.querySelectorAll("button[data-upload]")) {
      button.setAttribute("aria-pressed", String(button.dataset.upload === state.image));
    }
    currentLabel.textContent = describeImage(state.image);
    currentLabel.title = currentLabel.textContent;
    const size = uploadSizes.get(state.image);
    const small = size && Math.min(...size) < MIN_SIDE;
    warningBox.hidden = !small;
    if (small) {
      warningBox.textContent =
        `This image is only ${size[0]}×${size[1]} px: the model sees it upscaled to its input size, ` +
        "so its maps and projections show the interpolation more than any detail.";
    }
  }

  /** A thumbnail of an upload beside the samples (the newest first); a click goes back to it. */
  function addUploadThumb(id, file, name) {
    const url = URL.createObjectURL(file);
    const button = h(
      "button",
      {
        type: "button",
        dataset: { upload: id },
        "aria-label": `Uploaded image: ${name}`,
        "aria-pressed": "false",
        title: name,
        onclick: () => {
          showError(errorBox, "");
          store.set({ image: id });
        },
      },
      h("img", { src: url, alt: "", decoding: "async" }),
    );
    uploadsBox.prepend(button);
    uploadsBox.hidden = false;
    for (const old of [...uploadsBox.children].slice(MAX_UPLOAD_THUMBS)) {
      URL.revokeObjectURL(old.querySelector("img")?.src || "");
      old.remove();
    }
  }

  // ---- uploads -----------------------------------------------------------------
  async function upload(file, name) {
    showError(errorBox, "");
    try {
      const result = await busy(panel, api.upload(file, name, { slot: "upload" }));
      const label = name || file.name || "uploaded image";
      uploadNames.set(result.id, label);
      uploadSizes.set(result.id, [result.width, result.height]);
      if (!label.startsWith("webcam frame")) addUploadThumb(result.id, file, label);
      store.set({ image: result.id });
      return result;
    } catch (error) {
      if (isAbort(error)) return null;
      const what = file.name ? `“${file.name}”` : "that file";
      const why =
        error.status === 0 && file.size > 5 * 1024 * 1024
          ? `the upload was cut off (${(file.size / 1048576).toFixed(1)} MB may be over the server's size limit)`
          : error.message;
      showError(errorBox, `Could not use ${what}: ${why}`);
      return null;
    }
  }

  fileInput.addEventListener("change", () => {
    const file = fileInput.files && fileInput.files[0];
    if (file) upload(file, file.name);
    fileInput.value = "";
  });

  // drag-and-drop anywhere on the page
  let dragDepth = 0;
  const hasFiles = (event) => Array.from(event.dataTransfer?.types || []).includes("Files");
  document.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    dragDepth += 1;
    dropOverlay.hidden = false;
  });
  document.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  document.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) dropOverlay.hidden = true;
  });
  document.addEventListener("drop", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    dragDepth = 0;
    dropOverlay.hidden = true;
    const file = event.dataTransfer.files[0];
    if (file) upload(file, file.name);
  });
  // paste an image from the clipboard
  document.addEventListener("paste", (event) => {
    const item = Array.from(event.clipboardData?.items || []).find((i) => i.kind === "file" && i.type.startsWith("image/"));
    if (!item) return;
    event.preventDefault();
    upload(item.getAsFile(), "pasted image");
  });

  // ---- webcam -------------------------------------------------------------------
  let stream = null;
  let liveTimer = null;
  let live = false;
  let frames = 0;
  const grabCanvas = document.createElement("canvas");

  async function openCamera() {
    showError(errorBox, "");
    if (!navigator.mediaDevices?.getUserMedia) {
      showError(errorBox, "This browser gives no webcam access here (it needs https or localhost).");
      return;
    }
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 }, height: { ideal: 480 } }, audio: false });
    } catch (error) {
      const why = error && error.name === "NotAllowedError" ? "permission was denied" : error?.message || "no camera found";
      showError(errorBox, `The webcam could not be opened: ${why}.`);
      return;
    }
    video.srcObject = stream;
    await video.play().catch(() => {});
    cameraBox.hidden = false;
    samplesBox.hidden = true; // the camera is the source now; closing it brings the samples back
    cameraButton.setAttribute("aria-pressed", "true");
  }

  function closeCamera() {
    setLive(false);
    if (stream) for (const track of stream.getTracks()) track.stop();
    stream = null;
    video.srcObject = null;
    cameraBox.hidden = true;
    samplesBox.hidden = false;
    cameraButton.setAttribute("aria-pressed", "false");
  }

  /** Grab the centre square of the current frame and analyse it. */
  async function capture() {
    if (!stream || !video.videoWidth) return null;
    const side = Math.min(video.videoWidth, video.videoHeight);
    const out = Math.min(side, 448);
    grabCanvas.width = grabCanvas.height = out;
    const ctx = grabCanvas.getContext("2d");
    ctx.drawImage(video, (video.videoWidth - side) / 2, (video.videoHeight - side) / 2, side, side, 0, 0, out, out);
    const blob = await new Promise((resolve) => grabCanvas.toBlob(resolve, "image/jpeg", 0.9));
    if (!blob) return null;
    frames += 1;
    return upload(blob, `webcam frame ${frames}`);
  }

  function setLive(on) {
    live = on;
    liveButton.setAttribute("aria-pressed", String(on));
    cameraBox.classList.toggle("is-live", on);
    clearTimeout(liveTimer);
    if (on) tick();
    else cameraStat.textContent = "";
  }

  // Steady rate: one frame per interval, never two in flight; a slow server lowers the rate.
  async function tick() {
    if (!live) return;
    const started = performance.now();
    await capture();
    await settled();
    if (!live) return;
    const spent = performance.now() - started;
    cameraStat.textContent = `frame ${frames} · ${Math.round(spent)} ms`;
    const interval = Number(rateSelect.value) || 1000;
    liveTimer = setTimeout(tick, Math.max(0, interval - spent));
  }

  cameraButton.addEventListener("click", () => (stream ? closeCamera() : openCamera()));
  captureButton.addEventListener("click", () => capture());
  liveButton.addEventListener("click", () => setLive(!live));

  return {
    renderSamples,
    update: sync,
    upload,
    describeImage,
    openFilePicker: () => fileInput.click(),
    captureIfOpen: () => (stream ? (capture(), true) : false),
    get samples() {
      return samples;
    },
    showError: (message) => showError(errorBox, message),
  };
}
