// The first-run strip: the path through the dashboard in six steps. Dismissed once,
// it does not come back (localStorage); steps that lead somewhere are links.

import { $ } from "../util.js";

const KEY = "convscope.start-dismissed";

/** The first-run strip as a view (see tabs.js): ctx is { store }. */
export function createView({ root, ctx }) {
  const { store } = ctx;
  if (!root) return {};
  let dismissed = false;
  try {
    dismissed = localStorage.getItem(KEY) === "1";
  } catch {
    /* private mode: show it */
  }
  root.hidden = dismissed;
  $('[data-role="start-dismiss"]', root).addEventListener("click", () => {
    root.hidden = true;
    try {
      localStorage.setItem(KEY, "1");
    } catch {
      /* not remembered */
    }
  });
  $('[data-role="start-top9"]', root)?.addEventListener("click", () => {
    store.set({ tab: "explore" });
    document.querySelector('[data-panel="top9"]')?.scrollIntoView({ block: "start" });
  });
  $('[data-role="start-occlusion"]', root)?.addEventListener("click", () => store.set({ tab: "occlusion" }));
  return {};
}
