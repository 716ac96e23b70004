// Small DOM and formatting helpers shared by the panels.

/** Create an element: h("div", {class: "x", dataset: {a: 1}, onclick: fn}, child, "text") */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "style" && typeof value === "object") {
      for (const [prop, v] of Object.entries(value)) {
        if (prop.startsWith("--")) el.style.setProperty(prop, v);
        else el.style[prop] = v;
      }
    }
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/**
 * A dashboard panel: <section class="panel {className}" aria-labelledby={id}> with a
 * <header class="panel-head"> holding its <h2 id={id}>{title}</h2> and the `head` nodes (tools,
 * notes), then the `children`.
 */
export function panel({ id, title, className = "" }, head, ...children) {
  return h(
    "section",
    { class: className ? `panel ${className}` : "panel", "aria-labelledby": id },
    h("header", { class: "panel-head" }, h("h2", { id }, title), ...head),
    ...children,
  );
}

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

/**
 * Show a panel as busy while `promise` runs, but only once it has taken longer
 * than `delay` ms (fast answers never flash a spinner). Returns the promise.
 */
export function busy(panel, promise, delay = 150) {
  if (!panel) return promise;
  const count = Number(panel.dataset.pending || 0) + 1;
  panel.dataset.pending = String(count);
  const timer = setTimeout(() => {
    if (Number(panel.dataset.pending || 0) > 0) {
      panel.classList.add("is-busy");
      panel.setAttribute("aria-busy", "true");
    }
  }, delay);
  const done = () => {
    clearTimeout(timer);
    const left = Math.max(0, Number(panel.dataset.pending || 1) - 1);
    panel.dataset.pending = String(left);
    if (!left) {
      panel.classList.remove("is-busy");
      panel.removeAttribute("aria-busy");
    }
  };
  promise.then(done, done);
  return promise;
}

/** Put a message in an inline error box (empty message: hide it). */
export function showError(box, message) {
  if (!box) return;
  box.textContent = message || "";
  box.hidden = !message;
}

/** Compact number: 3 significant digits, k/M suffixes for big values. */
export function fmt(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  const abs = Math.abs(value);
  if (abs === 0) return "0";
  if (abs >= 1e6) return `${(value / 1e6).toPrecision(3)}M`;
  if (abs >= 1e4) return `${(value / 1e3).toPrecision(3)}k`;
  if (abs >= 100) return value.toFixed(0);
  if (abs >= 0.01) return value.toPrecision(3).replace(/\.?0+$/, "");
  return value.toExponential(1);
}

export function percent(p) {
  if (p >= 0.995) return `${(p * 100).toFixed(0)}%`;
  if (p >= 0.001) return `${(p * 100).toFixed(1)}%`;
  return "<0.1%";
}

/** True when a keyboard event is aimed at a text field (global shortcuts stay out of the way). */
export function isTyping(event) {
  const el = event.target;
  if (!el || !(el instanceof Element)) return false;
  if (el.isContentEditable) return true;
  const tag = el.tagName;
  if (tag === "TEXTAREA") return true;
  if (tag === "SELECT") return true;
  if (tag === "INPUT") {
    const type = (el.getAttribute("type") || "text").toLowerCase();
    return !["checkbox", "radio", "button", "range", "file"].includes(type);
  }
  return false;
}

/** Decode a Blob into an HTMLImageElement (resolves once it can be drawn). */
export function blobToImage(blob) {
  return new Promise((resolve, reject) => {
    const url = URL.createObjectURL(blob);
    const img = new Image();
    img.onload = () => resolve({ img, url });
    img.onerror = () => {
      URL.revokeObjectURL(url);
      reject(new Error("the server sent an image the browser cannot decode"));
    };
    img.src = url;
  });
}

/** Add a module's stylesheet to the page once: a <style id=...> in <head>. */
export function injectStyle(id, css) {
  if (document.getElementById(id)) return;
  const style = document.createElement("style");
  style.id = id;
  style.textContent = css;
  document.head.append(style);
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** Create an SVG element: svg("rect", {x: 1, width: 4}, child); null/undefined attributes and children are left out. */
export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== null && v !== undefined) node.setAttribute(k, String(v));
  for (const child of children) if (child) node.append(child);
  return node;
}

/**
 * Scroll `container` (only it, never the page) so that `el` is in view, like
 * scrollIntoView({block: "nearest"}); a page opened on a phone stays at its top.
 */
export function scrollWithin(container, el) {
  if (!container || !el) return;
  const box = container.getBoundingClientRect();
  const item = el.getBoundingClientRect();
  if (item.top < box.top) container.scrollTop -= box.top - item.top;
  else if (item.bottom > box.bottom) container.scrollTop += Math.min(item.bottom - box.bottom, item.top - box.top);
  if (item.left < box.left) container.scrollLeft -= box.left - item.left;
  else if (item.right > box.right) container.scrollLeft += Math.min(item.right - box.right, item.left - box.left);
}
