// Top-5 predictions: always visible, refreshed whenever the model or image changes.
// Each one is clickable, and so is any class picked in the "Any class" search below them
// (classsearch.js): its class view is the projection of its logit (layer `logits`,
// channel = class) in the current mode, shown below the list; the class goes in the hash
// (`class=K`) and the Occlusion view opens with it as the target.

import { api, isAbort } from "../api.js";
import { $, busy, h, percent, showError } from "../util.js";
import { createClassSearch } from "./classsearch.js";

/** The predictions panel as a view (see tabs.js): ctx is { store }. `update` returns the loading
 *  it starts (the predictions on a new model or image, the class view on a new class or mode). */
export function createView({ root, ctx }) {
  const { store } = ctx;
  const list = $('[data-role="predictions"]', root);
  const errorBox = $('[data-role="preds-error"]', root);
  const note = $('[data-role="preds-note"]', root);
  let generation = 0;
  let viewGeneration = 0;
  let viewUrl = null;
  const viewImg = h("img", { class: "class-view-img", alt: "", dataset: { role: "class-view-img" } });
  const viewCaption = h("figcaption", { dataset: { role: "class-view-caption" } });
  const occlusionLink = h(
    "button",
    { type: "button", class: "link-btn", dataset: { role: "class-view-occlusion" }, onclick: () => store.set({ tab: "occlusion" }) },
    "occlusion map for this class",
  );
  const view = h("figure", { class: "class-view", hidden: true, dataset: { role: "class-view" } }, viewImg, viewCaption, occlusionLink);
  const search = createClassSearch({ onPick: (index) => choose(index) });
  list.after(search.root, view);

  function choose(index) {
    store.set({ class: index });
  }

  function render(rows) {
    // bar lengths are absolute probabilities (the top bar is not stretched to 100%)
    list.replaceChildren(
      ...rows.map((row) =>
        h(
          "li",
          {
            title: `${row.label} (class ${row.index}): ${(row.probability * 100).toFixed(2)}% · click: what drove this class`,
            dataset: { index: row.index },
            tabindex: 0,
            role: "button",
            onclick: () => choose(row.index),
            onkeydown: (event) => (event.key === "Enter" || event.key === " ") && (event.preventDefault(), choose(row.index)),
          },
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
    search.setModel(state.model).then(() => search.show(store.get().class));
    list.classList.add("is-stale");
    try {
      const rows = await busy(root, api.predictions(state.model, state.image, { slot: "predictions" }));
      if (mine !== generation) return;
      render(rows);
      await loadClassView(state);
    } catch (error) {
      if (isAbort(error) || mine !== generation) return;
      list.replaceChildren();
      showError(errorBox, `No predictions: ${error.message}`);
    } finally {
      if (mine === generation) list.classList.remove("is-stale");
    }
  }

  /** The chosen class's logit projected to pixels in the current mode (nothing while none is chosen). */
  async function loadClassView(state) {
    const mine = ++viewGeneration;
    for (const li of list.children) li.classList.toggle("is-chosen", Number(li.dataset.index) === state.class);
    search.show(state.class);
    if (state.class === null || state.class === undefined || !state.model || !state.image) {
      view.hidden = true;
      return;
    }
    view.hidden = false;
    view.dataset.loading = "true";
    try {
      const result = await api.projection(state.model, state.image, { layer: "logits", channel: state.class, mode: state.mode }, { slot: "class-view" });
      if (mine !== viewGeneration) return;
      if (viewUrl) URL.revokeObjectURL(viewUrl);
      viewUrl = URL.createObjectURL(result.blob);
      await new Promise((resolve) => {
        viewImg.onload = viewImg.onerror = resolve;
        viewImg.src = viewUrl;
      });
      if (mine !== viewGeneration) return;
      const name = search.labelOf(state.class);
      const called = name ? `class ${state.class} (${name})` : `class ${state.class}`;
      viewImg.alt = `projection of the logit of ${called} (${result.mode})`;
      viewCaption.textContent = `${called}: its logit projected to pixels (${result.mode})`;
      view.dataset.class = String(state.class);
      delete view.dataset.loading;
    } catch (error) {
      if (isAbort(error) || mine !== viewGeneration) return;
      delete view.dataset.loading;
      showError(errorBox, `No class view: ${error.message}`);
    }
  }

  function setModelInfo(model) {
    note.textContent = model && !model.pretrained ? "random weights" : "";
    note.title = model && !model.pretrained ? "This model has no trained weights: its predictions mean nothing." : "";
  }

  function update(state, changed) {
    if (changed.has("model") || changed.has("image")) return load(state);
    if (changed.has("class") || changed.has("mode")) return loadClassView(state);
    return null;
  }

  return { update, setModelInfo };
}
