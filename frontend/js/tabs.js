// Views ("tabs") of the dashboard.
//
// To add a view, give it an entry in TABS with `module` naming an ES module that exports
//
//     export function createView({ root, ctx }) {
//       return { ready, update(state, changed) {}, show() {}, hide() {} };   // all but ready optional
//     }
//
// called once, the first time the tab opens (`ready`: a promise, resolved once it is built).
// `root` is the tab's <section data-tab-panel="ID"> (created if index.html has none); `ctx`
// is { store, api, urls, request, busy, showError, h, layers(), models() }. The current model
// and image are store.get().model / .image. The tab id is kept in the URL hash as `tab=ID`.
// Long work goes through jobs.js, every URL through api.js's `urls`. The Explore tab's panels
// (js/panels/*.js) are views of the same shape, made by main.js with their own ctx.

import { h } from "./util.js";

export const TABS = [
  { id: "explore", label: "Explore" },
  { id: "occlusion", label: "Occlusion", module: "./panels/occlusion.js" },
  { id: "invariance", label: "Invariance", module: "./invariance.js" },
  { id: "correspondence", label: "Correspondence", module: "./correspondence.js" },
  { id: "architecture", label: "Architecture", module: "./architecture.js" },
  { id: "studies", label: "Studies", module: "./studies.js" },
  { id: "unit", label: "Unit", module: "./unit.js" },
];

export function createTabs({ nav, main, store, ctx }) {
  const buttons = new Map();
  const mounted = new Map(); // id -> its view (null while it loads)
  const panelFor = (id) => {
    let panel = main.querySelector(`[data-tab-panel="${id}"]`);
    if (!panel) {
      panel = h("section", { class: "tab-panel", id: `tab-${id}`, role: "tabpanel", "aria-labelledby": `tabbtn-${id}`, dataset: { tabPanel: id }, hidden: true });
      main.append(panel);
    }
    return panel;
  };

  for (const tab of TABS) {
    const button = h(
      "button",
      {
        type: "button",
        role: "tab",
        id: `tabbtn-${tab.id}`,
        "aria-controls": `tab-${tab.id}`,
        "aria-selected": "false",
        tabindex: "-1",
        dataset: { tab: tab.id },
        onclick: () => store.set({ tab: tab.id }),
      },
      tab.label,
      tab.id !== "explore" && !tab.module ? h("span", { class: "soon" }, "soon") : null,
    );
    buttons.set(tab.id, button);
    nav.append(button);
    panelFor(tab.id);
  }

  nav.addEventListener("keydown", (event) => {
    const ids = TABS.map((t) => t.id);
    const at = ids.indexOf(store.get().tab);
    let to = null;
    if (event.key === "ArrowRight") to = ids[(at + 1) % ids.length];
    else if (event.key === "ArrowLeft") to = ids[(at - 1 + ids.length) % ids.length];
    else if (event.key === "Home") to = ids[0];
    else if (event.key === "End") to = ids[ids.length - 1];
    if (to === null) return;
    event.preventDefault();
    event.stopPropagation();
    store.set({ tab: to });
    buttons.get(to).focus();
  });

  async function sync(state, changed = new Set(["tab"])) {
    const id = TABS.some((t) => t.id === state.tab) ? state.tab : "explore";
    for (const tab of TABS) {
      const on = tab.id === id;
      const button = buttons.get(tab.id);
      button.setAttribute("aria-selected", String(on));
      button.tabIndex = on ? 0 : -1;
      const panel = panelFor(tab.id);
      const wasHidden = panel.hidden;
      panel.hidden = !on;
      const mod = mounted.get(tab.id);
      if (mod && on && wasHidden) mod.show?.();
      if (mod && !on && !wasHidden) mod.hide?.();
    }
    const tab = TABS.find((t) => t.id === id);
    if (tab.module && !mounted.has(id)) {
      mounted.set(id, null);
      try {
        const view = (await import(tab.module)).createView({ root: panelFor(id), ctx });
        mounted.set(id, view);
        await view.ready;
        view.show?.();
      } catch (error) {
        panelFor(id).append(h("div", { class: "error", role: "alert" }, `The ${tab.label} view failed to load: ${error.message}`));
      }
    }
    if (changed.size) for (const mod of mounted.values()) mod?.update?.(state, changed);
  }

  return { sync, current: () => store.get().tab };
}
