// Global keyboard shortcuts, in the spirit of the Deep Visualization Toolbox:
// arrows walk the feature maps, [ ] walk the layers, single letters flip switches.
// Keys typed into text fields, selects and radio groups are left alone.

import { MODES } from "./state.js";
import { isTyping } from "./util.js";

export function installKeyboard({ store, maps, layers, recon, input, help, onNavigate }) {
  document.addEventListener("keydown", (event) => {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
    if (isTyping(event)) {
      if (event.key === "Escape") event.target.blur?.();
      return;
    }
    const target = event.target instanceof Element ? event.target : null;
    const onRadio = target?.matches('input[type="radio"]');
    if (help.open) return;

    if (event.key === "?") {
      help.showModal();
      event.preventDefault();
      return;
    }
    if (store.get().tab !== "explore") return;

    const key = event.key;
    const arrows = { ArrowLeft: [-1, false], ArrowRight: [1, false], ArrowUp: [-1, true], ArrowDown: [1, true] };
    if (key in arrows) {
      if (onRadio) return; // radios move their own selection with the arrows
      const [delta, rows] = arrows[key];
      onNavigate?.(rows ? 0 : delta);
      maps.move(delta, { rows });
    } else if (key === "Home" || key === "End") {
      maps.jump(key === "Home" ? "first" : "last");
    } else if (key === "[" || key === "]") {
      layers.step(key === "]" ? 1 : -1);
    } else if (key === "m") {
      const mode = store.get().mode;
      store.set({ mode: MODES[(MODES.indexOf(mode) + 1) % MODES.length] });
    } else if (key === "s") {
      const { select, unit } = store.get();
      store.set(unit ? { unit: null } : { select: select === "max" ? "map" : "max" });
    } else if (key === "x" || (key === "Escape" && store.get().unit)) {
      store.set({ unit: null });
    } else if (key === "o") {
      maps.cycleSort();
    } else if (key === "c") {
      maps.cycleCmap();
    } else if (key === "g") {
      maps.toggleScale();
    } else if (key === "n") {
      recon.toggleContrast();
    } else if (key === "v") {
      recon.toggleOverlay();
    } else if (key === "+" || key === "=") {
      maps.zoom(1);
    } else if (key === "-" || key === "_") {
      maps.zoom(-1);
    } else if (key === "/") {
      layers.focusFilter();
    } else if (key === "u") {
      input.openFilePicker();
    } else if (key === " ") {
      if (target?.matches("button, a, summary, label")) return;
      if (!input.captureIfOpen()) return;
    } else {
      return;
    }
    event.preventDefault();
  });
}
