// What the dashboard needs to know about a layer, read from the server's /layers rows:
// whether max-pool switches lie below it (the deconvnet then carries the image down),
// whether it only passes its input on, which activation rules cover it, and the mode
// `auto` resolves to there. One place for these decisions (no class-name guessing
// elsewhere in the dashboard).

// /layers rows carry no pass-through flag (yet): these kinds repeat their input.
const PASS_THROUGH_KINDS = /^(Identity|Dropout\d?d?|DropPath|Flatten)$/;

/** True for a layer that repeats its input (Identity, Dropout, ...). */
export function isPassThrough(layer) {
  if (typeof layer?.pass_through === "boolean") return layer.pass_through;
  return PASS_THROUGH_KINDS.test(layer?.kind || "");
}

/** True when max-pool switches lie below `layer` (the server's `has_switches`; null if it does not say). */
export function hasSwitches(layer) {
  return typeof layer?.has_switches === "boolean" ? layer.has_switches : null;
}

/** Activation rules the engine does not cover for this layer (names), from `rules.uncovered`. */
export function uncoveredRules(layer) {
  const rules = layer?.rules;
  return Array.isArray(rules?.uncovered) ? rules.uncovered.map(String) : [];
}

/**
 * The mode a projection of `layer` is made in, and why.
 * → {mode, requested, switches, reason}: `auto` becomes deconvnet where switches lie below
 * the layer, guided backprop otherwise (the deconvnet would read nothing of the image there).
 */
export function resolveMode(requested, layer) {
  const switches = hasSwitches(layer);
  if (requested !== "auto") return { mode: requested, requested, switches, reason: null };
  const name = layer?.name ?? "this layer";
  if (switches === null) return { mode: "auto", requested, switches, reason: "auto: the server resolves the mode for this layer." };
  if (switches === false) {
    return {
      mode: "guided",
      requested,
      switches,
      reason:
        `auto chose guided backprop: no max-pool lies below ${name}, so the deconvnet has no switches ` +
        "and its picture would be the same for every image (only where the unit sits would change). " +
        "Guided backprop adds the forward ReLU masks and shows what this image contributed.",
    };
  }
  return {
    mode: "deconvnet",
    requested,
    switches,
    reason:
      `auto chose the deconvnet: max-pool switches below ${name} carry this image's structure down, ` +
      "as in Zeiler & Fergus.",
  };
}
