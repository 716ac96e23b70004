// Talking to the convscope REST API (docs/api.md).
//
// Every request goes through `request()`. Requests made in a named *slot*
// cancel the slot's previous request (AbortController), so a newer click always
// wins and a stale response can never overwrite a newer one. Errors come back
// as ApiError with a message meant for a person.

export class ApiError extends Error {
  constructor(message, { status = 0, aborted = false } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.aborted = aborted;
  }
}

const slots = new Map(); // slot name -> AbortController of its in-flight request

/** Abort the in-flight request of a slot, if any. */
export function cancel(slot) {
  const controller = slots.get(slot);
  if (controller) {
    controller.abort();
    slots.delete(slot);
  }
}

/** True for the rejection of a request that was cancelled on purpose. */
export function isAbort(error) {
  return Boolean(error && (error.aborted || error.name === "AbortError"));
}

/** Turn FastAPI's `detail` (a string, or a list of validation errors) into plain words. */
export function describeDetail(detail, status) {
  if (typeof detail === "string" && detail) return detail;
  if (Array.isArray(detail) && detail.length) {
    return detail
      .map((item) => {
        const where = Array.isArray(item.loc) ? item.loc.filter((p) => p !== "query" && p !== "body").join(".") : "";
        return where ? `${where}: ${item.msg}` : String(item.msg ?? item);
      })
      .join("; ");
  }
  if (detail && typeof detail === "object") return JSON.stringify(detail);
  return fallbackMessage(status);
}

function fallbackMessage(status) {
  if (status === 404) return "Not found on the server.";
  if (status === 413) return "That file is too large for the server.";
  if (status === 415) return "That file is not an image the server can read.";
  if (status === 503) return "The server is still loading its models; try again in a moment.";
  if (status >= 500) return `The server failed on this request (HTTP ${status}); see its log for details.`;
  return `The request failed (HTTP ${status}).`;
}

async function errorFrom(response) {
  let detail = null;
  try {
    const type = response.headers.get("content-type") || "";
    if (type.includes("json")) detail = (await response.json()).detail;
    else detail = (await response.text()).slice(0, 300) || null;
  } catch {
    detail = null;
  }
  return new ApiError(describeDetail(detail, response.status), { status: response.status });
}

// A server started with CONVSCOPE_TOKEN answers 401 without it: ask once, keep it in localStorage, send it
// as a bearer header (the server then also sets an HttpOnly cookie, so <img> requests pass too).
const TOKEN_KEY = "convscope.token";
let asking = null; // one prompt for every request that got a 401 at the same time

function withToken(init) {
  const token = globalThis.localStorage?.getItem(TOKEN_KEY);
  if (!token) return init;
  return { ...init, headers: { ...(init.headers || {}), Authorization: `Bearer ${token}` } };
}

function askForToken() {
  asking ??= Promise.resolve().then(() => {
    const token = globalThis.prompt?.("This convscope server needs its access token (CONVSCOPE_TOKEN):");
    if (token) globalThis.localStorage?.setItem(TOKEN_KEY, token.trim());
    else globalThis.localStorage?.removeItem(TOKEN_KEY);
    asking = null;
    return Boolean(token);
  });
  return asking;
}

/**
 * fetch() with slot cancellation and readable errors.
 * @param {string} url
 * @param {{slot?: string, signal?: AbortSignal, as?: "json"|"blob"|"response", init?: RequestInit}} options
 */
export async function request(url, { slot = null, signal = null, as = "json", init = {} } = {}) {
  const controller = new AbortController();
  if (slot) {
    cancel(slot);
    slots.set(slot, controller);
  }
  if (signal) {
    if (signal.aborted) controller.abort();
    else signal.addEventListener("abort", () => controller.abort(), { once: true });
  }
  let response;
  try {
    const sent = globalThis.localStorage?.getItem(TOKEN_KEY) ?? null;
    response = await fetch(url, { ...withToken(init), signal: controller.signal });
    if (response.status === 401) {
      const now = globalThis.localStorage?.getItem(TOKEN_KEY) ?? null;
      // sent before another request's prompt stored the token: retry with it, do not ask again
      if ((now && now !== sent) || (await askForToken())) {
        response = await fetch(url, { ...withToken(init), signal: controller.signal });
      }
    }
    if (!response.ok) throw await errorFrom(response);
    if (as === "json") return await response.json();
    if (as === "blob") return { blob: await response.blob(), headers: response.headers };
    return response;
  } catch (error) {
    if (error instanceof ApiError) throw error;
    if (controller.signal.aborted || error.name === "AbortError") {
      throw new ApiError("cancelled", { aborted: true });
    }
    throw new ApiError("Cannot reach the convscope server. Is it still running?", { status: 0 });
  } finally {
    if (slot && slots.get(slot) === controller) slots.delete(slot);
  }
}

const enc = encodeURIComponent;

/** A `data:` URL (as the batch endpoints send PNGs) as a Blob, without a network request. */
export async function dataBlob(dataUrl) {
  const comma = dataUrl.indexOf(",");
  const type = dataUrl.slice(5, comma).split(";")[0] || "application/octet-stream";
  const bytes = Uint8Array.from(atob(dataUrl.slice(comma + 1)), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type });
}

function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null) search.set(key, String(value));
  }
  return search.toString();
}

export const urls = {
  health: () => "/api/health",
  models: () => "/api/models",
  layers: (model) => `/api/models/${enc(model)}/layers`,
  samples: () => "/api/samples",
  thumbnail: (id) => `/api/samples/${enc(id)}/thumbnail.png`,
  images: () => "/api/images",
  image: (id, model) => `/api/images/${enc(id)}?${query({ model })}`,
  predictions: (model, id, top = 5) => `/api/models/${enc(model)}/images/${enc(id)}/predictions?${query({ top })}`,
  activations: (model, id, layer) => `/api/models/${enc(model)}/images/${enc(id)}/activations?${query({ layer })}`,
  /** The activations sprite (its URL from the activations answer), signed for layers with negative values. */
  sprite: (spriteUrl, signed = false) => (signed ? `${spriteUrl}&${query({ signed: true })}` : spriteUrl),
  // a view without a mode of its own (an empty choice) gets auto, as the Explore view's default
  projection: (model, id, { layer, channel, mode, select, y = null, x = null }) =>
    `/api/models/${enc(model)}/images/${enc(id)}/projection?${query({ layer, channel, mode: mode || "auto", select, y, x })}`,
  /** POST: many projections of one image and layer in one request (a list of seeds). */
  projections: (model, id) => `/api/models/${enc(model)}/images/${enc(id)}/projections`,
  occlusion: (model, id) => `/api/models/${enc(model)}/images/${enc(id)}/occlusion`,
  labels: (model) => `/api/models/${enc(model)}/labels`,
  filters: (model, layer = null) => `/api/models/${enc(model)}/filters${layer ? `?${query({ layer })}` : ""}`,
  analysis: (model, name) => `/api/models/${enc(model)}/analyses/${name}`,
  /** `params`: { image, transform, value, edge } */
  invariancePreview: (model, params) => `/api/models/${enc(model)}/analyses/invariance/preview.png?${query(params)}`,
  studies: () => "/api/studies",
  study: (id) => `/api/studies/${enc(id)}`,
  studyRun: (name) => `/api/studies/${enc(name)}`,
  withVersion: (url, version) => `${url}?${query({ v: version ?? "" })}`,
  scans: (model) => `/api/models/${enc(model)}/scans`,
  /** POST: start optimising units; with `params` ({ layer, channel, steps, … }): whether one unit is stored. */
  visualizations: (model, params = null) => `/api/models/${enc(model)}/visualizations${params ? `?${query(params)}` : ""}`,
  atlas: () => "/api/atlas",
  scanRoots: () => "/api/scan-roots",
  /** A scan's top-k of one channel; `scanUrl` is the scan's own `url`. */
  scanTop: (scanUrl, { layer, channel, mode }) => `${scanUrl}/top?${query({ layer, channel, mode })}`,
  scanMontage: (scanUrl, { layer, channels, mode, tile }) => `${scanUrl}/montage.png?${query({ layer, channels, mode, tile })}`,
  /** A scan's top-k projections of one channel, all in one answer; `scanUrl` is the scan's own `url`. */
  scanTopProjections: (scanUrl, { layer, channel, mode }) => `${scanUrl}/top/projections?${query({ layer, channel, mode })}`,
};

export const api = {
  health: (opts) => request(urls.health(), opts),
  models: (opts) => request(urls.models(), opts),
  /** The model's 4-D layers (what the layer tree, scans and occlusion choose from). */
  layers: async (model, opts) => (await request(urls.layers(model), opts)).filter((row) => row.units == null),
  /** Every projection start, the 2-D ones (`logits`, linear layers: rows with `units`) included. */
  projectionStarts: (model, opts) => request(urls.layers(model), opts),
  samples: (opts) => request(urls.samples(), opts),
  predictions: (model, id, opts) => request(urls.predictions(model, id), opts),
  activations: (model, id, layer, opts) => request(urls.activations(model, id, layer), opts),
  /** The S×S model input as a Blob. */
  image: (id, model, opts) => request(urls.image(id, model), { ...opts, as: "blob" }),
  /** → {blob, mode, seedValue, seedY, seedX} */
  async projection(model, id, params, opts) {
    const { blob, headers } = await request(urls.projection(model, id, params), { ...opts, as: "blob" });
    const num = (name, fallback) => {
      const value = Number.parseFloat(headers.get(name));
      return Number.isFinite(value) ? value : fallback;
    };
    const mode = headers.get("X-Mode"); // the rule the server used (auto resolved)
    return { blob, mode, seedValue: num("X-Seed-Value", null), seedY: num("X-Seed-Y", -1), seedX: num("X-Seed-X", -1) };
  },
  /**
   * Many projections of one image and layer in one request: `seeds` = [{channel, select?, y?, x?}, ...].
   * → one {blob, mode, seedValue, seedY, seedX} per seed, in order (the bytes of `projection()`'s blob).
   */
  async projections(model, id, { layer, mode, seeds }, opts = {}) {
    const body = { layer, mode: mode || "auto", seeds };
    const entries = await api.postJson(urls.projections(model, id), body, opts);
    return Promise.all(
      entries.map(async (e) => ({ blob: await dataBlob(e.png), mode: e.mode, seedValue: e.seed_value, seedY: e.seed_y, seedX: e.seed_x })),
    );
  },
  /**
   * The pictures of a scan's top-k of one channel (`top`: the answer of `urls.scanTop`), all in one
   * request (`urls.scanTopProjections`: data URLs, the bytes of each entry's `projection_url`) in the
   * answer's mode. → one {src, mode, batched} per entry of `top.entries`, in order, for an img src.
   * Should that request fail (not cancelled: that rejects), or its answer lack an entry, the entry gets
   * its own `projection_url` (batched: false), so one unreadable image breaks only its tile.
   */
  async topProjections(scanUrl, top, opts = {}) {
    let items = [];
    if (top.entries.length) {
      try {
        items = await request(urls.scanTopProjections(scanUrl, { layer: top.layer, channel: top.channel, mode: top.mode }), opts);
      } catch (error) {
        if (isAbort(error)) throw error;
        items = [];
      }
    }
    const byRank = new Map(items.map((item) => [item.rank, item]));
    return top.entries.map((entry) => {
      const item = byRank.get(entry.rank);
      return item ? { src: item.png, mode: item.mode, batched: true } : { src: entry.projection_url, mode: top.mode, batched: false };
    });
  },
  /** Upload a File/Blob; → {id, width, height} */
  upload(file, filename = "image.png", opts = {}) {
    const form = new FormData();
    form.append("file", file, file.name || filename);
    return request(urls.images(), { ...opts, init: { method: "POST", body: form } });
  },
  /** For later panels (occlusion): POST JSON. */
  postJson(url, body, opts = {}) {
    return request(url, {
      ...opts,
      init: { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) },
    });
  },
};
