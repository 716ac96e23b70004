// The view state, mirrored in the URL hash so that a link restores the view.
//
//   #model=efficientnet_lite0&image=chelsea&layer=blocks.3.1&channel=17&mode=auto&select=max&tab=explore
//
// `unit=y,x` (optional) seeds the projection with that one unit of the channel's
// map instead of its strongest activation or the whole map.
//
// Panels read `store.get()` and call `store.set({...})`; subscribers get the new
// state and the set of keys that changed.

// `auto` (the default) resolves per layer: see layermeta.resolveMode
export const MODES = ["auto", "deconvnet", "guided", "gradient"];
export const SELECTS = ["max", "map"];
export const HASH_KEYS = ["model", "image", "layer", "channel", "mode", "select", "unit", "tab", "class"];

const DEFAULTS = {
  model: null,
  image: null,
  layer: null,
  channel: null,
  mode: "auto",
  select: "max",
  unit: null,
  tab: "explore",
  class: null, // the class whose logit the Top-5 panel projects (its class view)
};

/** Parse a hash like "#model=a&channel=3" into a partial state (unknown or bad values dropped). */
export function parseHash(hash) {
  const params = new URLSearchParams(String(hash || "").replace(/^#/, ""));
  const out = {};
  for (const key of HASH_KEYS) {
    if (!params.has(key)) continue;
    const raw = params.get(key);
    if (key === "channel" || key === "class") {
      const n = Number.parseInt(raw, 10);
      if (Number.isInteger(n) && n >= 0 && String(n) === raw.trim()) out[key] = n;
    } else if (key === "mode") {
      if (MODES.includes(raw)) out.mode = raw;
    } else if (key === "select") {
      if (SELECTS.includes(raw)) out.select = raw;
    } else if (key === "unit") {
      const match = /^(\d+),(\d+)$/.exec(raw.trim());
      if (match) out.unit = `${Number(match[1])},${Number(match[2])}`;
    } else if (raw) {
      out[key] = raw;
    }
  }
  return out;
}

/** The hash for a state (keys in a stable order, empty values left out). */
export function formatHash(state) {
  const params = new URLSearchParams();
  for (const key of HASH_KEYS) {
    const value = state[key];
    if (value === null || value === undefined || value === "") continue;
    if ((key === "tab" || key === "mode") && value === DEFAULTS[key]) continue;
    params.set(key, String(value));
  }
  // URLSearchParams encodes "." and "_" as-is, which keeps layer names readable.
  return `#${params.toString()}`;
}

function createStore(initial) {
  let state = { ...DEFAULTS, ...initial };
  const listeners = new Set();
  return {
    get: () => state,
    /** Merge a patch; notify listeners with the changed keys (none: no call). */
    set(patch) {
      const changed = new Set();
      for (const [key, value] of Object.entries(patch)) {
        if (!(key in DEFAULTS)) continue;
        if (state[key] !== value) changed.add(key);
      }
      if (!changed.size) return changed;
      state = { ...state, ...patch };
      for (const listener of listeners) listener(state, changed);
      return changed;
    },
    subscribe(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
  };
}

export const store = createStore({});

let hashSyncEnabled = false;

/** Keep location.hash equal to the state (replaceState: no history spam). */
export function startHashSync() {
  if (hashSyncEnabled) return;
  hashSyncEnabled = true;
  const write = (state) => {
    const hash = formatHash(state);
    if (hash !== location.hash && !(hash === "#" && !location.hash)) {
      history.replaceState(null, "", `${location.pathname}${location.search}${hash}`);
    }
  };
  store.subscribe(write);
  write(store.get());
  // A hash typed or pasted by hand (or a link followed in the same tab).
  window.addEventListener("hashchange", () => {
    const wanted = parseHash(location.hash);
    const current = store.get();
    const patch = {};
    for (const key of HASH_KEYS) {
      // keys a hash leaves out: no channel/unit; the default mode and tab (formatHash omits those)
      const absent = key === "channel" || key === "unit" ? null : key === "mode" || key === "tab" ? DEFAULTS[key] : current[key];
      const value = key in wanted ? wanted[key] : absent;
      if (value !== current[key]) patch[key] = value;
    }
    store.set(patch);
  });
}
