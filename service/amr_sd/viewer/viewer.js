"use strict";
// The amr-sd credit viewer. Every piece of model text enters the page through text nodes
// (el()'s string children, textContent), never innerHTML: a response holding a script tag shows as text.

const DATA = JSON.parse(document.getElementById("amr-data").textContent);
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...kids) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined) continue;
    node.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return node;
}

const pct = (x) => (100 * x).toFixed(1) + " %";
const num = (x, d = 3) => (x === null || x === undefined || Number.isNaN(x)) ? "–" : Number(x).toFixed(d);
const signed = (x, d = 3) => (x >= 0 ? "+" : "") + num(x, d);

// Per-token arrays arrive as base64 typed arrays, one buffer per field per batch; decoded once,
// the first time the batch is shown.
function decode(b64, Type) {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Type(bytes.buffer);
}
const arraysCache = new Map();
function arrays(batch) {
  if (!arraysCache.has(batch)) {
    const a = batch.arrays;
    arraysCache.set(batch, {
      ids: decode(a.ids, Int32Array), adv: decode(a.adv, Float32Array), cig: decode(a.cig, Float32Array),
      gated: decode(a.gated, Uint8Array), slp: decode(a.slp, Float32Array), tlp: decode(a.tlp, Float32Array),
    });
  }
  return arraysCache.get(batch);
}

// ---------------------------------------------------------------- charts (inline SVG)

function lineChart(series, xs, { width = 560, height = 170, yLabel = "", yMin = null, yMax = null, id = null } = {}) {
  const pad = { l: 44, r: 10, t: 10, b: 24 };
  // Loops, not Math.min(...values): a long response would overflow the call's argument list.
  let vmin = 0, vmax = 1e-9;
  for (const s of series) for (const v of s.values) if (Number.isFinite(v)) { vmin = Math.min(vmin, v); vmax = Math.max(vmax, v); }
  const lo = yMin ?? vmin, hi = yMax ?? vmax;
  const x0 = xs[0], x1 = xs[xs.length - 1];
  const X = (x) => pad.l + (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0)) * (width - pad.l - pad.r);
  const Y = (y) => pad.t + (1 - (y - lo) / ((hi - lo) || 1)) * (height - pad.t - pad.b);
  const svg = el("svg:svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", id });
  svg.append(el("svg:line", { x1: pad.l, y1: Y(lo), x2: width - pad.r, y2: Y(lo), stroke: "#aab4c0" }));
  for (const y of [lo, (lo + hi) / 2, hi]) {
    svg.append(el("svg:text", { x: pad.l - 4, y: Y(y) + 4, "text-anchor": "end" }, num(y, Math.abs(hi - lo) < 2 ? 2 : 1)));
  }
  svg.append(el("svg:text", { x: pad.l, y: height - 6 }, `${x0}`), el("svg:text", { x: width - pad.r, y: height - 6, "text-anchor": "end" }, `${x1}`));
  if (yLabel) svg.append(el("svg:text", { x: pad.l + 4, y: pad.t + 10 }, yLabel));
  for (const s of series) {
    let d = "";
    s.values.forEach((v, i) => { if (Number.isFinite(v)) d += `${d && !Number.isFinite(s.values[i - 1]) ? "M" : d ? "L" : "M"}${X(xs[i]).toFixed(1)},${Y(v).toFixed(1)}`; });
    if (d) svg.append(el("svg:path", { d, fill: "none", stroke: s.colour, "stroke-width": 1.5, "data-series": s.name }));
    if (xs.length <= 40) s.values.forEach((v, i) => Number.isFinite(v) && svg.append(el("svg:circle", { cx: X(xs[i]), cy: Y(v), r: 2.5, fill: s.colour })));
  }
  return svg;
}

function legend(items) {
  return el("div", { class: "legend" }, items.map(([name, colour, outline]) => el("span", {},
    el("span", { class: "swatch", style: outline ? "outline:1.5px solid #1d2430;outline-offset:-1.5px" : `background:${colour}` }), name)));
}

function histogram(summary) {
  const width = 560, height = 160, pad = { l: 36, r: 10, t: 8, b: 22 };
  const bins = summary.hist_bins, span = summary.hist_span;
  const pos = summary.branches.positive.hist, neg = summary.branches.negative.hist;
  const max = Math.max(1, ...pos, ...neg);
  const bw = (width - pad.l - pad.r) / bins;
  const H = (n) => (n / max) * (height - pad.t - pad.b);
  const svg = el("svg:svg", { width, height, viewBox: `0 0 ${width} ${height}`, id: "cig-hist", role: "img" });
  for (let i = 0; i < bins; i++) {
    const x = pad.l + i * bw, base = height - pad.b;
    const lo = -span + (2 * span * i) / bins, hi = lo + (2 * span) / bins;
    svg.append(el("svg:rect", { x, y: base - H(pos[i]), width: bw / 2, height: H(pos[i]), fill: "hsl(140 55% 42%)" },
      el("svg:title", {}, `hints, CIG ${num(lo, 2)}..${num(hi, 2)}: ${pos[i]} tokens`)));
    svg.append(el("svg:rect", { x: x + bw / 2, y: base - H(neg[i]), width: bw / 2, height: H(neg[i]), fill: "hsl(0 65% 50%)" },
      el("svg:title", {}, `critiques, CIG ${num(lo, 2)}..${num(hi, 2)}: ${neg[i]} tokens`)));
  }
  svg.append(el("svg:line", { x1: pad.l, x2: width - pad.r, y1: height - pad.b, y2: height - pad.b, stroke: "#aab4c0" }));
  svg.append(el("svg:text", { x: pad.l, y: height - 6 }, signed(-span, 2)), el("svg:text", { x: (pad.l + width - pad.r) / 2, y: height - 6, "text-anchor": "middle" }, "0 (CIG, nats)"),
    el("svg:text", { x: width - pad.r, y: height - 6, "text-anchor": "end" }, signed(span, 2)));
  svg.append(el("svg:text", { x: pad.l - 4, y: pad.t + 8, "text-anchor": "end" }, `${max}`));
  return svg;
}

// ---------------------------------------------------------------- page parts

function trend() {
  if (DATA.batches.length < 2) return null;
  const t = DATA.trend;
  const xs = t.map((b, i) => (b.step ?? i));
  return el("section", { id: "trend" }, el("h2", {}, `Across ${t.length} batches (by step)`),
    lineChart([
      { name: "gate rate", colour: "#1d2430", values: t.map((b) => b.gate_rate) },
      { name: "gate rate, hints", colour: "hsl(140 55% 42%)", values: t.map((b) => b.gate_rate_positive) },
      { name: "gate rate, critiques", colour: "hsl(0 65% 50%)", values: t.map((b) => b.gate_rate_negative) },
      { name: "acceptance", colour: "#6b5bd2", values: t.map((b) => b.acceptance_rate) },
    ], xs, { yMin: 0, yMax: 1, yLabel: "share", id: "trend-chart" }),
    legend([["gate rate", "#1d2430"], ["hints", "hsl(140 55% 42%)"], ["critiques", "hsl(0 65% 50%)"], ["reflection acceptance", "#6b5bd2"]]));
}

function summaryPart(batch) {
  const s = batch.summary, P = s.branches.positive, N = s.branches.negative;
  const figures = [
    ["groups / rollouts", `${s.groups} / ${s.rollouts}`],
    ["response tokens", s.tokens],
    ["reflections accepted", `${s.reflections_accepted} of ${s.reflections_requested} (${pct(s.acceptance_rate)})`],
    ["gated tokens", el("span", { id: "gated-total" }, `${s.gated_tokens}`)],
    ["gate rate", `${pct(s.gate_rate)} of ${s.reflected_tokens} reflected tokens`],
    ["hints (A > 0)", `${pct(P.gate_rate)}: ${P.gated_tokens} of ${P.reflected_tokens} tokens, ${P.rollouts} rollouts`],
    ["critiques (A < 0)", `${pct(N.gate_rate)}: ${N.gated_tokens} of ${N.reflected_tokens} tokens, ${N.rollouts} rollouts`],
    ["mean |Â| vs mean |A|", `${num(s.mean_abs_advantage, 4)} vs ${num(s.mean_abs_base_advantage, 4)}`],
    ["anneal weight", num(batch.anneal_weight, 3)],
  ];
  const reasons = Object.entries(s.reject_reasons);
  const most = Math.max(1, ...reasons.map(([, n]) => n), s.reflections_accepted);
  const bar = (label, n, colour) => el("div", { class: "bar" }, el("span", { class: "fill", style: `width:${Math.max(2, 140 * n / most)}px;background:${colour}` }), `${label} ${n}`);
  return el("section", { id: "summary" },
    el("div", { class: "cards" },
      el("div", {}, el("h2", {}, "Batch"), el("dl", { class: "figures" }, figures.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]))),
      el("div", { id: "acceptance" }, el("h2", {}, "Reflections: acceptance by reject reason"),
        bar("accepted", s.reflections_accepted, "#17803d"),
        reasons.map(([r, n]) => bar(r, n, "#b42318")),
        Object.keys(s.attempt_reject_reasons).length ? el("p", { class: "meta" }, "every rejected attempt, retries included: ",
          Object.entries(s.attempt_reject_reasons).map(([r, n]) => `${r} ${n}`).join(", ")) : null),
      el("div", { id: "top-gated" }, el("h2", {}, "Most gated tokens"),
        s.top_gated.length ? el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "token"), el("th", {}, "gated"), el("th", {}, "seen"))),
          el("tbody", {}, s.top_gated.map((t) => el("tr", {}, el("td", { class: "text" }, JSON.stringify(DATA.pieces[t.piece])), el("td", {}, t.gated), el("td", {}, t.seen)))))
          : el("p", { class: "meta" }, "no token was gated in this batch"))),
    el("h2", {}, "CIG of reflected tokens"), histogram(s),
    legend([["hints (A > 0)", "hsl(140 55% 42%)"], ["critiques (A < 0)", "hsl(0 65% 50%)"]]));
}

const COLUMNS = [
  ["id", "rollout", (r) => `${r.g}.${r.r}`, (r) => r.g * 1e6 + r.r],
  ["kind", "reflection", (r) => r.kind ?? "–"],
  ["reward", "reward", (r) => num(r.reward, 3), (r) => r.reward],
  ["A", "A (GRPO)", (r) => signed(r.A, 3), (r) => r.A],
  ["verdict", "verdict", (r) => r.accepted === undefined || r.accepted === null ? "–" : r.accepted ? "accepted" : `rejected: ${r.reason}`],
  ["n", "tokens", (r) => r.n, (r) => r.n],
  ["gated", "gated", (r) => r.gated, (r) => r.gated],
  ["max_amp", "max Â/A", (r) => num(r.max_amp, 3), (r) => r.max_amp],
  ["mean_cig", "mean CIG", (r) => signed(r.mean_cig, 3), (r) => r.mean_cig],
];

function rolloutTable(batch, onPick) {
  let sortKey = "id", dir = 1;
  const tbody = el("tbody");
  const head = el("tr", {}, COLUMNS.map(([key, label]) => el("th", { "data-key": key, onclick: () => {
    dir = sortKey === key ? -dir : 1; sortKey = key; fill();
  } }, label)));
  function fill() {
    const col = COLUMNS.find((c) => c[0] === sortKey);
    const keyOf = col[3] || ((r) => col[2](r));
    const rows = batch.rows.map((r, i) => [r, i]).sort(([a], [b]) => {
      const x = keyOf(a), y = keyOf(b);
      return (x < y ? -1 : x > y ? 1 : 0) * dir;
    });
    for (const th of head.children) th.setAttribute("aria-sort", th.dataset.key === sortKey ? (dir > 0 ? "ascending" : "descending") : "none");
    tbody.replaceChildren(...rows.map(([r, i]) => el("tr", { "data-row": i, "data-gated": r.gated, onclick: (e) => {
      for (const tr of tbody.children) tr.classList.toggle("selected", tr === e.currentTarget);
      onPick(i);
    } }, COLUMNS.map(([key, , show]) => el("td", { "data-col": key, class: key === "verdict" && r.accepted !== undefined && r.accepted !== null ? `verdict-${r.accepted ? "accepted" : "rejected"}` : null }, show(r))))));
  }
  fill();
  return el("section", {}, el("h2", {}, `Rollouts (${batch.rows.length}; click a header to sort, a row to open it)`),
    el("div", { class: "table-wrap" }, el("table", { id: "rollouts" }, el("thead", {}, head), tbody)));
}

function tokenColour(ratio, A, scale) {
  // Â = A up to float32 rounding on an ungated token: no colour there.
  if (!(A !== 0 && ratio > 1 + 1e-5)) return null;
  // Relative to the batch's largest amplification; the square root keeps small ones visible.
  const t = Math.sqrt(Math.min(1, (ratio - 1) / scale));
  return A > 0 ? `hsla(140, 60%, 45%, ${0.2 + 0.7 * t})` : `hsla(0, 75%, 52%, ${0.2 + 0.7 * t})`;
}

function rolloutDetail(batch, index) {
  const r = batch.rows[index], a = arrays(batch);
  const readout = el("div", { id: "readout" }, "hover a token: its Â/A, CIG and log-probabilities");
  const scale = batch.rows.reduce((m, x) => Math.max(m, x.max_amp - 1), 0.05);  // no spread: rows may be many
  const tokens = el("div", { class: "tokens", id: "tokens" });
  for (let t = 0; t < r.n; t++) {
    const k = r.off + t, piece = DATA.pieces[a.ids[k]];
    const ratio = r.A !== 0 ? a.adv[k] / r.A : 1;
    const gated = a.gated[k] === 1;
    const info = `#${t} ${JSON.stringify(piece)}  Â/A ${num(ratio, 3)}  CIG ${signed(a.cig[k], 3)}  log p student ${num(a.slp[k], 3)} teacher ${num(a.tlp[k], 3)}${gated ? "  gated" : ""}`;
    const colour = tokenColour(ratio, r.A, scale);
    tokens.append(el("span", {
      class: `tok${gated ? " gated" : ""}`, style: colour ? `background:${colour}` : null, title: info,
      "data-cig": a.cig[k].toFixed(4), "data-ratio": ratio.toFixed(4), onmouseenter: () => { readout.textContent = info; },
    }, piece === "" ? "∅" : piece));
  }
  let reflection;
  if (!r.kind) {
    reflection = el("p", { class: "meta" }, r.A === 0 ? "A = 0: no reflection is written and the advantage is 0 on every token." : "no reflection record in the file (scored without reflections returned)");
  } else {
    const verdict = r.accepted ? "accepted: the teacher saw this " + r.kind : `rejected (${r.reason}): the teacher saw no ${r.kind}, so Â = A on every token`;
    reflection = el("div", { id: "reflection" },
      el("p", {}, el("strong", {}, `${r.kind}, ${verdict}`), ` · ${r.attempts ?? "?"} attempt(s), ${r.source}${r.cached ? ", from the cache" : ""}`),
      el("div", { class: `reflection ${r.accepted ? "accepted" : "rejected"}`, id: "reflection-text" }, r.text ?? "(no text)"),
      r.reasons.length ? el("div", { id: "reasons" }, el("p", {}, "reasons, one per rejected attempt:"), el("ul", { class: "reasons" }, r.reasons.map((x) => el("li", {}, x)))) : null);
  }
  const xs = Array.from({ length: r.n }, (_, t) => t);
  const slp = a.slp.subarray(r.off, r.off + r.n);
  const curves = Array.from(slp).some(Number.isFinite)
    ? [lineChart([
      { name: "student", colour: "#2f6fd6", values: Array.from(slp) },
      { name: "teacher", colour: "#d6772f", values: Array.from(a.tlp.subarray(r.off, r.off + r.n)) },
    ], xs, { width: 1100, height: 180, yLabel: "log p per token", id: "logprob-chart" }),
    legend([["student (no reflection)", "#2f6fd6"], ["teacher (with the reflection)", "#d6772f"]])]
    : el("p", { class: "meta" }, batch.summary.has_logprobs
      ? "no log-probabilities for this rollout: the teacher saw no reflection, so it was not re-scored"
      : "log-probabilities were not returned (amr-sd score --return-logprobs, or returns={'logprobs': True})");
  return el("section", { id: "detail", "data-row": index },
    el("h2", {}, `Rollout ${r.g}.${r.r}: reward ${num(r.reward, 3)}, A ${signed(r.A, 3)}, ${r.gated} gated of ${r.n} tokens, max Â/A ${num(r.max_amp, 3)}`),
    el("details", {}, el("summary", {}, "prompt"), el("pre", { class: "prompt" }, batch.prompts[r.g])),
    r.feedback ? el("p", {}, el("strong", {}, "verifier feedback: "), r.feedback) : null,
    reflection,
    el("h2", {}, "Response, coloured by Â/A"),
    legend([["hint credit (A > 0)", "hsl(140 60% 45%)"], ["critique blame (A < 0)", "hsl(0 75% 52%)"], ["outlined: gated (the gate opened)", null, true]]),
    readout, tokens,
    el("h2", {}, "Student and teacher log-probabilities"), curves);
}

function show(batchIndex) {
  const batch = DATA.batches[batchIndex];
  const detail = el("div", { id: "detail-slot" }, el("p", { class: "meta" }, "Click a rollout to see its tokens and reflection."));
  const pick = (i) => { detail.replaceChildren(rolloutDetail(batch, i)); };
  const picker = DATA.batches.length > 1
    ? el("label", {}, "batch ", el("select", { id: "batch", onchange: (e) => show(Number(e.target.value)) },
      DATA.batches.map((b, i) => el("option", { value: i, selected: i === batchIndex }, `${b.label} (step ${b.step ?? "?"})`))))
    : null;
  document.getElementById("app").replaceChildren(
    el("h1", {}, "amr-sd credit viewer"),
    el("p", { class: "meta" }, `${batch.label} · step ${batch.step ?? "?"} · model ${batch.model ?? "?"} · policy ${batch.policy_version ?? "?"}`),
    ...[picker, trend(), summaryPart(batch), rolloutTable(batch, pick), detail].filter(Boolean));
}

show(DATA.batches.length - 1);
document.body.dataset.readyMs = performance.now().toFixed(1);  // read by `make bench` (viewer)
document.body.dataset.ready = "true";
