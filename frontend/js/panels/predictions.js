// Top-5 predictions: always visible, refreshed whenever the model or image changes.

import { api, isAbort } from "../api.js";
import { $, busy, h, percent, showError } from "../util.js";

export function createPredictionsPanel({ root }) {
  const list = $('[data-role="predictions"]', root);
  const errorBox = $('[data-role="preds-error"]', root);
  const note = $('[data-role="preds-note"]', root);
  let generation = 0;

  function render(rows) {
    // bar lengths are absolute probabilities (the top bar is not stretched to 100%)
    list.replaceChildren(
      ...rows.map((row) =>
        h(
          "li",
          { title: `${row.label} (class ${row.index}): ${(row.probability * 100).toFixed(2)}%`, dataset: { index: row.index } },
          h("span", { class: "bar", style: { width: `${Math.max(0.8, row.probability * 100)}%` } }),
          h("span", { class: "label" }, row.label),
          h("span", { class: "prob" }, percent(row.probability)),
        ),
      ),
    );
  }

  async function load(state) {
    const mine = ++generation;
    showError(errorBox, "");
    if (!state.model || !state.image) return;
    list.classList.add("is-stale");
    try {
      const rows = await busy(root, api.predictions(state.model, state.image, { slot: "predictions" }));
      if (mine !== generation) return;
      render(rows);
    } catch (error) {
      if (isAbort(error) || mine !== generation) return;
      list.replaceChildren();
      showError(errorBox, `No predictions: ${error.message}`);
    } finally {
      if (mine === generation) list.classList.remove("is-stale");
    }
  }

  function setModelInfo(model) {
    note.textContent = model && !model.pretrained ? "random weights" : "";
    note.title = model && !model.pretrained ? "This model has no trained weights: its predictions mean nothing." : "";
  }

  return { load, setModelInfo };
}
