// convscope atlas: a static page over data.js (window.CONVSCOPE_ATLAS). No network, no modules
// (ES modules do not load from file://). The view is in the hash: #layer=NAME[&channel=C].
(function () {
  "use strict";
  const data = window.CONVSCOPE_ATLAS;
  const $ = (selector) => document.querySelector(selector);
  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "dataset") Object.assign(el.dataset, value);
      else if (key === "class") el.className = value;
      else el.setAttribute(key, String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }
  const fmt = (v) => (v === null || v === undefined ? "–" : Math.abs(v) >= 100 ? v.toFixed(0) : Number(v).toPrecision(3));
  const hashFor = (layer, channel) => {
    const params = new URLSearchParams({ layer });
    if (channel !== undefined && channel !== null) params.set("channel", String(channel));
    return `#${params.toString()}`;
  };

  function parse() {
    const params = new URLSearchParams(location.hash.replace(/^#/, ""));
    const layer = data.layers.find((l) => l.name === params.get("layer")) || data.layers[0];
    const raw = params.get("channel");
    const channel = raw !== null && /^\d+$/.test(raw) ? Number(raw) : null;
    return { layer, channel };
  }

  function renderNav(current) {
    $('[data-role="atlas-layers"]').replaceChildren(
      ...data.layers.map((layer) =>
        h("button", {
          type: "button",
          "aria-current": String(layer === current),
          dataset: { role: "atlas-layer", layer: layer.name },
          title: `${layer.kind} · ${layer.channels}×${layer.height}×${layer.width}`,
          onclick: null,
        }, layer.name, h("small", {}, `${layer.units.length}/${layer.wanted}`)),
      ),
    );
    for (const button of document.querySelectorAll('[data-role="atlas-layer"]')) {
      button.addEventListener("click", () => { location.hash = hashFor(button.dataset.layer); });
    }
  }

  function renderLayer(layer) {
    const rf = layer.receptive_field || {};
    const grid = h("div", { class: "unit-grid", dataset: { role: "atlas-units" } },
      layer.units.map((unit) =>
        h("a", { class: "unit-card", href: hashFor(layer.name, unit.channel), dataset: { role: "atlas-unit", channel: unit.channel } },
          h("img", { src: unit.vis, alt: `optimised image of ${layer.name} channel ${unit.channel}`, width: 128, height: 128 }),
          h("span", {}, h("b", {}, `#${unit.channel}`), fmt(unit.value))),
      ));
    const missing = layer.wanted - layer.units.length;
    return [
      h("h2", {}, layer.name),
      h("p", { class: "atlas-note" },
        `${layer.kind} · ${layer.channels} channels of ${layer.height}×${layer.width} · receptive field ${fmt(rf.size)} px, stride ${fmt(rf.stride)}`,
        missing > 0 ? ` · ${missing} unit(s) not computed yet (run convscope atlas again)` : ""),
      grid,
    ];
  }

  function tiles(rows, kind) {
    return h("div", { class: "top-grid", dataset: { role: `unit-top-${kind === "projection" ? "projections" : "crops"}` } },
      rows.map((row) => h("img", { src: row[kind], alt: `${kind} ${row.rank + 1}: ${row.image}`, title: `#${row.rank + 1} ${row.image}: ${fmt(row.value)} at (${row.y}, ${row.x})` })));
  }

  function renderUnit(layer, unit) {
    const s = data.settings;
    const facts = h("dl", { class: "facts", dataset: { role: "unit-facts" } },
      h("dt", {}, "objective"), h("dd", {}, `${unit.objective}${unit.position ? ` at (${unit.position.join(", ")})` : ""}`),
      h("dt", {}, "reached"), h("dd", { dataset: { role: "unit-value" } }, fmt(unit.value)),
      h("dt", {}, "optimisation"), h("dd", {}, `${unit.steps} steps · ${unit.size}px · seed ${unit.seed}`),
      h("dt", { title: "the top entry of the scan: one position of the map, not its mean" }, "top-1 unit"), h("dd", {}, unit.top && unit.top.length ? fmt(unit.top[0].value) : "–"));
    const top = unit.top
      ? h("div", {},
          h("div", { class: "top-pair" },
            h("figure", {}, tiles(unit.top, "projection"), h("figcaption", {}, "deconvnet projections")),
            h("figure", {}, tiles(unit.top, "crop"), h("figcaption", {}, "image patches"))),
          h("p", { class: "values" }, `top ${unit.top.length} of ${data.scan.label}: `, unit.top.map((r) => `${r.image} ${fmt(r.value)}`).join(" · ")))
      : h("p", { class: "atlas-note" }, unit.top_note || "no scan for this layer");
    const index = layer.units.indexOf(unit);
    const prev = layer.units[index - 1];
    const next = layer.units[index + 1];
    return [
      h("div", { class: "unit-nav" },
        h("a", { href: hashFor(layer.name) }, `← ${layer.name}`),
        prev ? h("a", { href: hashFor(layer.name, prev.channel) }, `‹ #${prev.channel}`) : null,
        next ? h("a", { href: hashFor(layer.name, next.channel) }, `#${next.channel} ›`) : null),
      h("h2", {}, `${layer.name} · channel ${unit.channel}`),
      h("div", { class: "unit-detail", dataset: { role: "unit-detail", layer: layer.name, channel: unit.channel } },
        h("figure", {}, h("img", { class: "unit-vis", src: unit.vis, alt: "optimised image", dataset: { role: "unit-vis" } }),
          h("figcaption", {}, `optimised to maximise the ${s.objective} objective`), facts),
        top),
    ];
  }

  function render() {
    const main = $('[data-role="atlas-main"]');
    if (!data || !data.layers || !data.layers.length) {
      main.replaceChildren(h("p", {}, "This atlas is empty: data.js is missing or lists no layers."));
      document.documentElement.dataset.ready = "true";
      return;
    }
    $('[data-role="atlas-meta"]').textContent =
      `${data.model}${data.pretrained ? "" : " (random weights)"} · ${data.input_size}px · ${data.settings.steps} steps · top ${data.scan.top} of ${data.scan.label} (${data.scan.images} images)`;
    const { layer, channel } = parse();
    renderNav(layer);
    const unit = channel === null ? null : layer.units.find((u) => u.channel === channel);
    main.replaceChildren(...(unit ? renderUnit(layer, unit) : renderLayer(layer)));
    document.title = unit ? `${layer.name} #${unit.channel} · convscope atlas` : `${layer.name} · convscope atlas`;
    document.documentElement.dataset.view = unit ? "unit" : "layer";
    document.documentElement.dataset.ready = "true";
  }

  window.addEventListener("hashchange", render);
  render();
})();
