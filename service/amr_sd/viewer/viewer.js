"use strict";
// The amr-sd credit viewer. Every piece of model text enters the page through text nodes
// (el()'s string children, textContent), never innerHTML: a response holding a script tag shows as text.
//
// What is on screen is one `state` (batch, selected rollout and token, colour, sort, filters),
// mirrored in the URL hash (#group=3&rollout=2&token=17) so that a view survives a reload and can
// be shared. Only what is looked at is built: the table's rows, and the selected rollout and its
// group; a batch's per-token arrays are decoded the first time one of its rollouts is opened.

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
const clamp = (x, lo, hi) => Math.min(hi, Math.max(lo, x));
const GREEN = "hsl(140 55% 42%)", RED = "hsl(0 65% 50%)", PURPLE = "#6b5bd2";

// Per-token arrays arrive as base64 typed arrays, one buffer per field per batch; decoded once,
// the first time the batch is shown.
function decode(b64, Type) {
  // Uint8Array.fromBase64 (Chromium 140+, Firefox 133+) is four times faster than the loop.
  if (Uint8Array.fromBase64) return new Type(Uint8Array.fromBase64(b64).buffer);
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

// Each rollout's response text, lower-cased, for the search; built on the first search.
const textsCache = new Map();
function rowTexts(batch) {
  if (!textsCache.has(batch)) {
    const ids = arrays(batch).ids;
    textsCache.set(batch, batch.rows.map((r) => {
      let s = "";
      for (let k = r.off; k < r.off + r.n; k++) s += DATA.pieces[ids[k]];
      return s.toLowerCase();
    }));
  }
  return textsCache.get(batch);
}

// ---------------------------------------------------------------- colour scales

// Â/A: relative to the batch's largest amplification; the square root keeps small ones visible.
function advColour(ratio, A, scale) {
  // Â = A up to float32 rounding on an ungated token: no colour there.
  if (!(A !== 0 && ratio > 1 + 1e-5)) return null;
  const t = Math.sqrt(Math.min(1, (ratio - 1) / scale));
  return A > 0 ? `hsla(140, 60%, 45%, ${0.2 + 0.7 * t})` : `hsla(0, 75%, 52%, ${0.2 + 0.7 * t})`;
}

// CIG: diverging around 0, full colour at |Î| = κ (where Î is clipped); the square root keeps the
// sub-threshold signal, the one τ is tuned against, visible.
function cigColour(c, kappa) {
  if (!(Math.abs(c) > 1e-6)) return null;
  const t = Math.sqrt(Math.min(1, Math.abs(c) / kappa));
  return c > 0 ? `hsla(212, 85%, 48%, ${0.12 + 0.83 * t})` : `hsla(28, 95%, 50%, ${0.12 + 0.83 * t})`;
}

const scaleCache = new Map();
function scales(batch) {
  if (!scaleCache.has(batch)) {
    const s = batch.settings;
    scaleCache.set(batch, {
      amp: batch.rows.reduce((m, x) => Math.max(m, x.max_amp - 1), 0.05),  // no spread: rows may be many
      kappa: s.kappa.value ?? batch.summary.hist_span,
      tauPos: s.tau_pos.value, tauNeg: s.tau_neg.value,
    });
  }
  return scaleCache.get(batch);
}

// The colour of token k (an index into the batch's arrays) of `row`, in the current mode.
function colourer(batch, row) {
  const a = arrays(batch), sc = scales(batch);
  if (state.colour === "cig") return (k) => cigColour(a.cig[k], sc.kappa);
  return (k) => advColour(row.A !== 0 ? a.adv[k] / row.A : 1, row.A, sc.amp);
}

function tokenInfo(batch, row, t) {
  const a = arrays(batch), k = row.off + t, piece = DATA.pieces[a.ids[k]];
  const ratio = row.A !== 0 ? a.adv[k] / row.A : 1;
  return `#${t} ${JSON.stringify(piece)}  Â/A ${num(ratio, 3)}  CIG ${signed(a.cig[k], 3)}  ` +
    `log p student ${num(a.slp[k], 3)} teacher ${num(a.tlp[k], 3)}${a.gated[k] ? "  gated" : ""}`;
}

// The tokens of the search's matches in one rollout (a match may span several tokens).
function matchedTokens(batch, i) {
  const q = state.filters.q.trim().toLowerCase(), row = batch.rows[i];
  const hits = new Set();
  if (!q) return hits;
  const a = arrays(batch), text = rowTexts(batch)[i];
  const ends = new Array(row.n);
  let pos = 0;
  for (let t = 0; t < row.n; t++) { pos += DATA.pieces[a.ids[row.off + t]].length; ends[t] = pos; }
  for (let at = text.indexOf(q); at >= 0; at = text.indexOf(q, at + 1)) {
    let t = 0;
    while (t < row.n && ends[t] <= at) t++;
    for (; t < row.n && (t === 0 ? 0 : ends[t - 1]) < at + q.length; t++) hits.add(t);
  }
  return hits;
}

// One span per token, the token's index in its container's children; no listener per span.
function tokenSpans(batch, i) {
  const row = batch.rows[i], a = arrays(batch), hits = matchedTokens(batch, i), box = el("div", { class: "tokens" });
  const colourOf = colourer(batch, row);
  for (let t = 0; t < row.n; t++) {
    const k = row.off + t, piece = DATA.pieces[a.ids[k]], span = document.createElement("span");
    span.className = a.gated[k] ? (hits.has(t) ? "tok gated match" : "tok gated") : hits.has(t) ? "tok match" : "tok";
    span.dataset.t = t;
    const colour = colourOf(k);
    if (colour) span.style.background = colour;
    span.textContent = piece === "" ? "∅" : piece;
    box.append(span);
  }
  return box;
}

// ---------------------------------------------------------------- charts (inline SVG)

function lineChart(series, xs, { width = 560, height = 180, yLabel = "", yMin = null, yMax = null, id = null } = {}) {
  // The y label sits above the plot, in its own band, so that no curve runs through it.
  const pad = { l: 44, r: 10, t: 22, b: 24 };
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
  if (yLabel) svg.append(el("svg:text", { x: pad.l, y: 12, class: "axis-label" }, yLabel));
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
    colour || outline ? el("span", { class: "swatch", style: outline ? "outline:1.5px solid #1d2430;outline-offset:-1.5px" : `background:${colour}` }) : null, name)));
}

function histogram(batch) {
  const summary = batch.summary, sc = scales(batch);
  const width = 560, height = 176, pad = { l: 36, r: 10, t: 22, b: 22 };
  const bins = summary.hist_bins, span = summary.hist_span;
  const pos = summary.branches.positive.hist, neg = summary.branches.negative.hist;
  const max = Math.max(1, ...pos, ...neg);
  const bw = (width - pad.l - pad.r) / bins;
  const H = (n) => (n / max) * (height - pad.t - pad.b);
  const X = (v) => pad.l + ((v + span) / (2 * span)) * (width - pad.l - pad.r);
  const svg = el("svg:svg", { width, height, viewBox: `0 0 ${width} ${height}`, id: "cig-hist", role: "img" });
  for (let i = 0; i < bins; i++) {
    const x = pad.l + i * bw, base = height - pad.b;
    const lo = -span + (2 * span * i) / bins, hi = lo + (2 * span) / bins;
    svg.append(el("svg:rect", { x, y: base - H(pos[i]), width: bw / 2, height: H(pos[i]), fill: GREEN },
      el("svg:title", {}, `hints, CIG ${num(lo, 2)}..${num(hi, 2)}: ${pos[i]} tokens`)));
    svg.append(el("svg:rect", { x: x + bw / 2, y: base - H(neg[i]), width: bw / 2, height: H(neg[i]), fill: RED },
      el("svg:title", {}, `critiques, CIG ${num(lo, 2)}..${num(hi, 2)}: ${neg[i]} tokens`)));
  }
  svg.append(el("svg:line", { x1: pad.l, x2: width - pad.r, y1: height - pad.b, y2: height - pad.b, stroke: "#aab4c0" }));
  // The gate's margins: hints are gated right of τ+, critiques left of -τ-.
  for (const [branch, at, label, colour] of [["positive", sc.tauPos, "τ+", GREEN], ["negative", sc.tauNeg === null ? null : -sc.tauNeg, "−τ−", RED]]) {
    if (at === null || Math.abs(at) > span) continue;
    svg.append(el("svg:line", { class: "tau", "data-branch": branch, "data-value": Math.abs(at), x1: X(at), x2: X(at), y1: pad.t - 4, y2: height - pad.b, stroke: colour, "stroke-dasharray": "4 3", "stroke-width": 1.5 }),
      el("svg:text", { x: X(at), y: pad.t - 8, "text-anchor": "middle", class: "tau-label" }, `${label} ${num(Math.abs(at), 2)}`));
  }
  svg.append(el("svg:text", { x: pad.l, y: height - 6 }, signed(-span, 2)), el("svg:text", { x: (pad.l + width - pad.r) / 2, y: height - 6, "text-anchor": "middle" }, "0 (CIG, nats)"),
    el("svg:text", { x: width - pad.r, y: height - 6, "text-anchor": "end" }, signed(span, 2)));
  svg.append(el("svg:text", { x: pad.l - 4, y: pad.t + 8, "text-anchor": "end" }, `${max}`));
  return svg;
}

// Log-probabilities over CIG, one x axis (the token index), with the cursor on the selected or
// pointed-at token; pointing at the chart points at the token.
function creditChart(batch, index) {
  const r = batch.rows[index], a = arrays(batch), sc = scales(batch);
  const slp = Array.from(a.slp.subarray(r.off, r.off + r.n)), tlp = Array.from(a.tlp.subarray(r.off, r.off + r.n));
  const cig = Array.from(a.cig.subarray(r.off, r.off + r.n));
  const hasLp = slp.some(Number.isFinite), hasCig = r.accepted === true && r.A !== 0;
  if (!hasLp && !hasCig) {
    return { node: el("p", { class: "meta" }, batch.summary.has_logprobs
      ? "no log-probabilities for this rollout: the teacher saw no reflection, so it was not re-scored"
      : "log-probabilities were not returned (amr-sd score --return-logprobs, or returns={'logprobs': True})"), move() {} };
  }
  const W = 1100, L = 52, R = 12, lpH = hasLp ? 140 : 0, cigH = hasCig ? 100 : 0, gap = hasLp && hasCig ? 30 : 0;
  const top = 44, H = top + lpH + gap + cigH + 26;
  const X = (t) => L + (r.n === 1 ? 0.5 : t / (r.n - 1)) * (W - L - R);
  const svg = el("svg:svg", { width: "100%", viewBox: `0 0 ${W} ${H}`, id: "logprob-chart", role: "img", preserveAspectRatio: "xMinYMin meet" });
  const path = (values, Y) => {
    let d = "", pen = "M";
    values.forEach((v, t) => { if (Number.isFinite(v)) { d += `${pen}${X(t).toFixed(1)},${Y(v).toFixed(1)}`; pen = "L"; } else pen = "M"; });
    return d;
  };
  function panel(y0, h, lo, hi, label) {
    const Y = (v) => y0 + (1 - (v - lo) / ((hi - lo) || 1)) * h;
    svg.append(el("svg:rect", { x: L, y: y0, width: W - L - R, height: h, fill: "none", stroke: "#e3e8ee" }),
      el("svg:text", { x: L, y: y0 - 6, class: "axis-label" }, label));
    for (const v of [lo, (lo + hi) / 2, hi]) svg.append(el("svg:text", { x: L - 4, y: Y(v) + 4, "text-anchor": "end" }, num(v, 1)));
    return Y;
  }
  if (hasLp) {
    let lo = 0;
    for (const v of slp.concat(tlp)) if (Number.isFinite(v)) lo = Math.min(lo, v);
    const Y = panel(top, lpH, lo, 0, "log p per token (nats): student (no reflection) and teacher (with it)");
    svg.append(el("svg:path", { d: path(slp, Y), fill: "none", stroke: "#2f6fd6", "stroke-width": 1.3, "data-series": "student" }),
      el("svg:path", { d: path(tlp, Y), fill: "none", stroke: "#d6772f", "stroke-width": 1.3, "data-series": "teacher" }));
  }
  if (hasCig) {
    const y0 = top + lpH + gap, tau = r.A > 0 ? sc.tauPos : sc.tauNeg;
    let m = (tau ?? 0) * 1.2;
    for (const v of cig) m = Math.max(m, Math.abs(v));
    m = Math.max(m, 0.1);
    const Y = panel(y0, cigH, -m, m, `CIG Î (nats); ${r.A > 0 ? "a hint gates above τ+" : "a critique gates below −τ−"}; dots: gated tokens`);
    svg.append(el("svg:line", { x1: L, x2: W - R, y1: Y(0), y2: Y(0), stroke: "#aab4c0" }));
    if (tau !== null) {
      const at = r.A > 0 ? tau : -tau;
      svg.append(el("svg:line", { class: "tau", x1: L, x2: W - R, y1: Y(at), y2: Y(at), stroke: r.A > 0 ? GREEN : RED, "stroke-dasharray": "4 3" }),
        el("svg:text", { x: W - R - 4, y: Y(at) - 3, "text-anchor": "end", class: "tau-label" }, `${r.A > 0 ? "τ+" : "−τ−"} ${num(tau, 2)}`));
    }
    svg.append(el("svg:path", { d: path(cig, Y), fill: "none", stroke: PURPLE, "stroke-width": 1.2, "data-series": "cig" }));
    for (let t = 0; t < r.n; t++) {
      if (a.gated[r.off + t]) svg.append(el("svg:circle", { class: "gated-marker", cx: X(t), cy: Y(cig[t]), r: 3, fill: r.A > 0 ? GREEN : RED, "data-t": t }));
    }
  }
  const bottom = H - 26;
  svg.append(el("svg:text", { x: L, y: H - 8 }, "token 0"), el("svg:text", { x: W - R, y: H - 8, "text-anchor": "end" }, `${r.n - 1}`));
  const cursor = el("svg:line", { id: "chart-cursor", x1: 0, x2: 0, y1: 18, y2: bottom, stroke: "#1d2430", "stroke-width": 1, visibility: "hidden" });
  const label = el("svg:text", { id: "chart-label", x: 0, y: 14, "text-anchor": "middle", visibility: "hidden" });
  const overlay = el("svg:rect", { x: L, y: top, width: W - L - R, height: bottom - top, fill: "transparent", class: "overlay" });
  const at = (e) => {
    const box = svg.getBoundingClientRect(), x = (e.clientX - box.left) * (W / box.width);
    return clamp(Math.round(((x - L) / (W - L - R)) * (r.n - 1)), 0, r.n - 1);
  };
  overlay.addEventListener("mousemove", (e) => preview(at(e)));
  overlay.addEventListener("mouseleave", () => preview(state.token));
  overlay.addEventListener("click", (e) => selectToken(at(e)));
  svg.append(cursor, label, overlay);
  return {
    node: el("div", {}, svg, legend([["student log p", "#2f6fd6"], ["teacher log p", "#d6772f"], ["CIG", PURPLE], ["gated (hint)", GREEN], ["gated (critique)", RED]])),
    move(t) {
      const show = t === null ? "hidden" : "visible";
      cursor.setAttribute("visibility", show);
      label.setAttribute("visibility", show);
      if (t === null) return;
      const x = X(t);
      cursor.setAttribute("x1", x); cursor.setAttribute("x2", x);
      label.setAttribute("x", clamp(x, L + 60, W - R - 60));
      label.textContent = `#${t} ${JSON.stringify(DATA.pieces[a.ids[r.off + t]])}`;
    },
  };
}

// ---------------------------------------------------------------- state and deep links

const FILTERS = ["verdict", "branch", "reason", "q", "rmin", "rmax"];
const state = {
  batch: DATA.batches.length - 1, row: null, token: null, colour: "adv",
  sort: { key: "id", dir: 1 }, filters: Object.fromEntries(FILTERS.map((k) => [k, ""])),
};
const view = {};  // the live parts of the page: table body, slots, chart
const current = () => DATA.batches[state.batch];

function batchKey(i) {
  const step = DATA.batches[i].step;
  const unique = step !== null && DATA.batches.filter((b) => b.step === step).length === 1;
  return unique ? ["step", step] : ["batch", i];
}

function writeHash() {
  const p = new URLSearchParams(), batch = current();
  if (DATA.batches.length > 1) p.set(...batchKey(state.batch));
  if (state.row !== null) {
    const r = batch.rows[state.row];
    p.set("group", r.g);
    p.set("rollout", r.r);
    if (state.token !== null) p.set("token", state.token);
  }
  if (state.colour !== "adv") p.set("colour", state.colour);
  if (state.sort.key !== "id" || state.sort.dir !== 1) p.set("sort", (state.sort.dir < 0 ? "-" : "") + state.sort.key);
  for (const k of FILTERS) if (state.filters[k] !== "") p.set(k, state.filters[k]);
  const hash = p.toString() ? "#" + p.toString() : "";
  if (hash === location.hash) return;
  view.ownHash = hash;
  // replaceState: a sharable address without a history entry per click.
  history.replaceState(null, "", location.pathname + location.search + hash);
}

function applyHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  let bi = DATA.batches.length - 1;
  if (p.has("step")) {
    const k = DATA.batches.findIndex((b) => b.step === Number(p.get("step")));
    if (k >= 0) bi = k;
  } else if (p.has("batch") && DATA.batches[Number(p.get("batch"))]) bi = Number(p.get("batch"));
  state.batch = bi;
  state.colour = p.get("colour") === "cig" ? "cig" : "adv";
  const sort = p.get("sort") || "id", key = sort.replace(/^-/, "");
  state.sort = COLUMNS.some((c) => c[0] === key) ? { key, dir: sort.startsWith("-") ? -1 : 1 } : { key: "id", dir: 1 };
  for (const k of FILTERS) state.filters[k] = p.get(k) ?? "";
  show();
  const batch = current(), g = Number(p.get("group")), r = Number(p.get("rollout"));
  const group = p.has("group") && Number.isInteger(g) ? batch.groups[g] : undefined;
  if (group && Number.isInteger(r) && r >= 0 && r < group.size) {
    const t = p.has("token") ? Number(p.get("token")) : null;
    openRow(group.row + r, Number.isInteger(t) && t >= 0 && t < batch.rows[group.row + r].n ? t : null, { scrollRow: true });
  } else writeHash();
}

// ---------------------------------------------------------------- the batch

function trend() {
  if (DATA.batches.length < 2) return null;
  const t = DATA.trend;
  const xs = t.map((b, i) => (b.step ?? i));
  return el("section", { id: "trend" }, el("h2", {}, `Across ${t.length} batches (by step)`),
    lineChart([
      { name: "gate rate", colour: "#1d2430", values: t.map((b) => b.gate_rate) },
      { name: "gate rate, hints", colour: GREEN, values: t.map((b) => b.gate_rate_positive) },
      { name: "gate rate, critiques", colour: RED, values: t.map((b) => b.gate_rate_negative) },
      { name: "acceptance", colour: PURPLE, values: t.map((b) => b.acceptance_rate) },
    ], xs, { yMin: 0, yMax: 1, yLabel: "share of tokens (gate) or reflections (acceptance)", id: "trend-chart" }),
    legend([["gate rate", "#1d2430"], ["hints", GREEN], ["critiques", RED], ["reflection acceptance", PURPLE]]));
}

const SETTINGS = [
  ["tau_pos", "τ+ (a hint gates CIG > τ+)"],
  ["tau_neg", "τ− (a critique gates CIG < −τ−)"],
  ["kappa", "κ (CIG clipped to ±κ)"],
  ["lambda_eff", "λ_eff = λ·w (hint bonus)"],
  ["gamma_eff", "γ_eff = γ·w (critique blame)"],
  ["anneal_weight", "w (anneal weight)"],
];

function settingsPart(batch) {
  const s = batch.settings;
  return el("div", { id: "settings-card" }, el("h2", {}, "Algorithm settings of this batch"),
    el("table", { id: "settings" }, el("tbody", {}, SETTINGS.map(([key, label]) => el("tr", { "data-key": key, "data-source": s[key].source },
      el("td", { class: "text" }, label), el("td", { class: "value" }, num(s[key].value, 3)), el("td", { class: "text source" }, `${s[key].source}: ${s[key].note}`))))),
    el("p", { class: "meta" }, "file: the lines' own stats (the τ the gate used) and config (the request's overrides, where it made any). Fitted values are solved from the gated tokens " +
      "(on each, Â/A − 1 = λ_eff·(Î − τ+) for a hint, γ_eff·(−Î − τ−) for a critique: docs/method.md steps 8 to 10); defaults are ScoringConfig's."));
}

function summaryPart(batch) {
  const s = batch.summary, P = s.branches.positive, N = s.branches.negative, sc = scales(batch);
  const figures = [
    ["groups / rollouts", `${s.groups} / ${s.rollouts}`],
    ["response tokens", s.tokens],
    ["reflections accepted", `${s.reflections_accepted} of ${s.reflections_requested} (${pct(s.acceptance_rate)})`],
    ["gated tokens", el("span", { id: "gated-total" }, `${s.gated_tokens}`)],
    ["gate rate", `${pct(s.gate_rate)} of ${s.reflected_tokens} reflected tokens`],
    ["hints (A > 0)", `${pct(P.gate_rate)}: ${P.gated_tokens} of ${P.reflected_tokens} tokens, ${P.rollouts} rollouts`],
    ["critiques (A < 0)", `${pct(N.gate_rate)}: ${N.gated_tokens} of ${N.reflected_tokens} tokens, ${N.rollouts} rollouts`],
    ["mean |Â| vs mean |A|", `${num(s.mean_abs_advantage, 4)} vs ${num(s.mean_abs_base_advantage, 4)}`],
  ];
  const reasons = Object.entries(s.reject_reasons);
  const most = Math.max(1, ...reasons.map(([, n]) => n), s.reflections_accepted);
  const bar = (label, n, colour) => el("div", { class: "bar" }, el("span", { class: "fill", style: `width:${Math.max(2, 140 * n / most)}px;background:${colour}` }), `${label} ${n}`);
  const widened = s.hist_span > s.hist_percentile + 1e-9;
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
    settingsPart(batch),
    el("h2", {}, "CIG of reflected tokens"), histogram(batch),
    legend([["hints (A > 0)", GREEN], ["critiques (A < 0)", RED], ["dashed: the gate's margins τ+ and −τ−", null]]),
    el("p", { class: "meta", id: "hist-note" },
      `x axis ±${num(s.hist_span, 2)} nats: the 99.5th percentile of |CIG| over reflected tokens (${num(s.hist_percentile, 2)})` +
      `${widened ? ", widened to show τ" : ""}; CIG beyond it falls into the end bins. CIG is clipped to ±κ = ±${num(sc.kappa, 2)} before the gate.`));
}

// ---------------------------------------------------------------- colour toggle and filters

function colourLegend(batch) {
  const sc = scales(batch);
  if (state.colour === "cig") {
    const bar = el("span", { class: "gradient", title: `CIG from −κ to +κ` });
    return el("div", { id: "colour-legend", class: "legend", "data-mode": "cig" },
      el("span", {}, `−κ = −${num(sc.kappa, 1)} `, bar, ` +${num(sc.kappa, 1)}`),
      el("span", {}, "blue: the reflection makes the token more likely (CIG > 0); orange: less likely"),
      el("span", {}, `full colour at |CIG| ≥ κ (√ scale); every token with CIG ≠ 0 is coloured, gated or not`),
      el("span", {}, el("span", { class: "swatch", style: "outline:1.5px solid #1d2430;outline-offset:-1.5px" }),
        `gated: CIG > τ+ = ${num(sc.tauPos, 2)} on a hint, CIG < −τ− = −${num(sc.tauNeg, 2)} on a critique`));
  }
  return el("div", { id: "colour-legend", class: "legend", "data-mode": "adv" },
    el("span", {}, el("span", { class: "swatch", style: "background:hsl(140 60% 45%)" }), "hint credit (A > 0)"),
    el("span", {}, el("span", { class: "swatch", style: "background:hsl(0 75% 52%)" }), "critique blame (A < 0)"),
    el("span", {}, `full colour at Â/A = ${num(1 + sc.amp, 3)}, the batch's largest (√ scale); uncoloured: Â = A`),
    el("span", {}, el("span", { class: "swatch", style: "outline:1.5px solid #1d2430;outline-offset:-1.5px" }), "gated (the gate opened)"));
}

function toolbar(batch) {
  const radio = (value, label) => el("label", {}, el("input", {
    type: "radio", name: "colour", id: `colour-${value}`, value, checked: state.colour === value,
    onchange: () => setColour(value),
  }), label);
  return el("section", { id: "toolbar" },
    el("div", { class: "toolbar-row" }, el("strong", {}, "Colour tokens by "), radio("adv", "Â/A (the credit)"), radio("cig", "CIG (the signal before the gate)"),
      el("span", { class: "meta keys", id: "keys" }, "keys: j/k rollout · h/l token (Shift ×10) · n/N next/previous gated · [ ] rollout in the group · c colour · / search")),
    colourLegend(batch));
}

function setColour(mode) {
  state.colour = mode;
  document.getElementById(`colour-${mode}`).checked = true;
  document.getElementById("colour-legend").replaceWith(colourLegend(current()));
  if (state.row !== null) openRow(state.row, state.token, { regroup: true });
  else writeHash();
}

function filtersPart(batch) {
  const reasons = new Map();
  for (const r of batch.rows) for (const x of new Set([...r.reasons, r.reason].filter(Boolean))) reasons.set(x, (reasons.get(x) || 0) + 1);
  const f = state.filters;
  const select = (key, label, options) => el("label", {}, label, " ", el("select", { id: `f-${key}`, onchange: (e) => setFilter(key, e.target.value) },
    options.map(([v, text]) => el("option", { value: v, selected: f[key] === v }, text))));
  const input = (key, label, attrs) => el("label", {}, label, " ", el("input", { id: `f-${key}`, value: f[key], oninput: (e) => setFilter(key, e.target.value), ...attrs }));
  return el("div", { id: "filters" },
    select("verdict", "verdict", [["", "any"], ["accepted", "accepted"], ["rejected", "rejected"], ["none", "no reflection"]]),
    select("branch", "branch", [["", "any"], ["hint", "hint (A > 0)"], ["critique", "critique (A < 0)"], ["zero", "A = 0"]]),
    select("reason", "rejected for", [["", "any"], ...[...reasons].sort((x, y) => y[1] - x[1]).map(([r, n]) => [r, `${r} (${n})`])]),
    input("q", "response contains", { type: "search", placeholder: "token text", size: 16 }),
    el("span", { class: "range" }, input("rmin", "reward ≥", { type: "number", step: "any" }), " ",
      input("rmax", "≤", { type: "number", step: "any" })),
    el("button", { id: "f-clear", type: "button", onclick: clearFilters }, "clear"),
    el("span", { id: "row-count", class: "meta" }));
}

function setFilter(key, value) {
  state.filters[key] = value;
  fillRows();
  if (key === "q" && state.row !== null) openRow(state.row, state.token, { regroup: true });  // re-mark the matches
  else writeHash();
}

function clearFilters() {
  for (const k of FILTERS) {
    state.filters[k] = "";
    document.getElementById(`f-${k}`).value = "";
  }
  fillRows();
  if (state.row !== null) openRow(state.row, state.token, { regroup: true });
  else writeHash();
}

function passes(r, i, texts) {
  const f = state.filters;
  if (f.verdict === "accepted" && r.accepted !== true) return false;
  if (f.verdict === "rejected" && r.accepted !== false) return false;
  if (f.verdict === "none" && r.accepted !== null && r.accepted !== undefined) return false;
  if (f.branch === "hint" && !(r.A > 0)) return false;
  if (f.branch === "critique" && !(r.A < 0)) return false;
  if (f.branch === "zero" && r.A !== 0) return false;
  if (f.reason && r.reason !== f.reason && !r.reasons.includes(f.reason)) return false;
  if (f.rmin !== "" && !(r.reward >= Number(f.rmin))) return false;
  if (f.rmax !== "" && !(r.reward <= Number(f.rmax))) return false;
  if (texts && !texts[i].includes(f.q.trim().toLowerCase())) return false;
  return true;
}

// ---------------------------------------------------------------- the rollouts table

// [key, header, text shown, sort value]; a column with a numeric sort value sorts descending on its
// first click (the largest reward, gated count or Â/A first), the others ascending.
const COLUMNS = [
  ["id", "rollout", (r) => `${r.g}.${r.r}`],
  ["kind", "reflection", (r) => r.kind ?? "–"],
  ["reward", "reward", (r) => num(r.reward, 3), (r) => r.reward],
  ["A", "A (GRPO)", (r) => signed(r.A, 3), (r) => r.A],
  ["verdict", "verdict", (r) => r.accepted === undefined || r.accepted === null ? "–" : r.accepted ? "accepted" : `rejected: ${r.reason}`],
  ["n", "tokens", (r) => r.n, (r) => r.n],
  ["gated", "gated", (r) => r.gated, (r) => r.gated],
  ["max_amp", "max Â/A", (r) => num(r.max_amp, 3), (r) => r.max_amp],
  ["mean_cig", "mean CIG", (r) => signed(r.mean_cig, 3), (r) => r.mean_cig],
];
const ROW_LIMIT = 2000;  // rows built at once; the rest on request (or as the keys reach them)

function sortValue(key) {
  if (key === "id") return (r) => r.g * 1e6 + r.r;
  const col = COLUMNS.find((c) => c[0] === key);
  return col[3] ? (r) => col[3](r) ?? -Infinity : col[2];
}

function orderedRows(batch) {
  const texts = state.filters.q.trim() ? rowTexts(batch) : null;
  const out = [];
  batch.rows.forEach((r, i) => { if (passes(r, i, texts)) out.push(i); });
  const key = sortValue(state.sort.key), dir = state.sort.dir;
  return out.sort((i, j) => {
    const x = key(batch.rows[i]), y = key(batch.rows[j]);
    return (x < y ? -1 : x > y ? 1 : i - j) * (x === y ? 1 : dir);
  });
}

function rowsPart(batch) {
  const head = el("tr", {}, COLUMNS.map(([key, label]) => el("th", { "data-key": key, onclick: () => {
    const numeric = key !== "id" && COLUMNS.find((c) => c[0] === key)[3];
    state.sort = state.sort.key === key ? { key, dir: -state.sort.dir } : { key, dir: numeric ? -1 : 1 };
    fillRows();
    writeHash();
  } }, label)));
  view.head = head;
  view.tbody = el("tbody", { onclick: (e) => {
    const tr = e.target.closest("tr[data-row]");
    if (tr) openRow(Number(tr.dataset.row));
    else if (e.target.closest("#more-rows")) { view.limit += ROW_LIMIT; fillRows(); }
  } });
  return el("section", { id: "rollouts-part" }, el("h2", {}, `Rollouts (${batch.rows.length}; click a header to sort, a row to open it)`),
    filtersPart(batch),
    el("div", { class: "table-wrap" }, el("table", { id: "rollouts" }, el("thead", {}, head), view.tbody)));
}

function fillRows() {
  const batch = current();
  view.order = orderedRows(batch);
  for (const th of view.head.children) {
    th.setAttribute("aria-sort", th.dataset.key === state.sort.key ? (state.sort.dir > 0 ? "ascending" : "descending") : "none");
  }
  const shown = view.order.slice(0, view.limit);
  const rows = shown.map((i) => {
    const r = batch.rows[i];
    return el("tr", { "data-row": i, "data-gated": r.gated, class: i === state.row ? "selected" : null },
      COLUMNS.map(([key, , text]) => el("td", { "data-col": key, class: key === "verdict" && r.accepted !== undefined && r.accepted !== null ? `verdict-${r.accepted ? "accepted" : "rejected"}` : null }, text(r))));
  });
  if (view.order.length > shown.length) {
    rows.push(el("tr", { id: "more-rows" }, el("td", { colspan: COLUMNS.length, class: "text" }, `${view.order.length - shown.length} more rows: show them`)));
  }
  view.tbody.replaceChildren(...rows);
  document.getElementById("row-count").textContent = `${view.order.length} of ${batch.rows.length} rollouts`;
}

// ---------------------------------------------------------------- one group, one rollout

function verdictText(r) {
  if (!r.kind) return r.A === 0 ? "A = 0: no reflection" : "no reflection record";
  return r.accepted ? `${r.kind} accepted` : `${r.kind} rejected: ${r.reason}`;
}

function promptAcrossSteps(g) {
  if (DATA.batches.length < 2) return null;
  const prompt = current().groups[g].prompt, hits = [];
  DATA.batches.forEach((b, bi) => b.groups.forEach((G, gi) => { if (G.prompt === prompt) hits.push([bi, gi, G]); }));
  if (hits.length < 2) return el("p", { class: "meta", id: "prompt-steps" }, `this prompt is in no other of the ${DATA.batches.length} batches`);
  const rolloutRates = (b, G) => b.rows.slice(G.row, G.row + G.size).map((r) => r.accepted ? `${r.gated}/${r.n}` : r.kind ? "rej" : "–").join(" · ");
  return el("div", { id: "prompt-steps" },
    el("h3", {}, `This prompt across ${hits.length} steps`),
    el("table", {}, el("thead", {}, el("tr", {}, ["step", "group", "mean reward", "accepted", "gate rate", "hints", "critiques", "per rollout: gated/tokens"].map((h) => el("th", {}, h)))),
      el("tbody", {}, hits.map(([bi, gi, G]) => {
        const b = DATA.batches[bi];
        return el("tr", { "data-batch": bi, class: bi === state.batch ? "selected" : null, onclick: () => {
          const r = state.row === null ? 0 : current().rows[state.row].r;
          state.batch = bi;
          show();
          openRow(G.row + Math.min(r, G.size - 1), null, { scrollRow: true });
        } }, el("td", {}, b.step ?? bi), el("td", {}, gi), el("td", {}, num(G.mean_reward, 3)),
        el("td", {}, `${G.reflections_accepted} of ${G.reflections_requested}`), el("td", {}, pct(G.gate_rate)),
        el("td", {}, pct(G.gate_rate_positive)), el("td", {}, pct(G.gate_rate_negative)), el("td", { class: "text" }, rolloutRates(b, G)));
      }))));
}

function groupView(batch, g) {
  const G = batch.groups[g];
  const readout = el("div", { class: "readout", id: "group-readout" }, "hover a token: its rollout, Â/A, CIG and log-probabilities");
  const members = el("div", { class: "members" });
  for (let j = 0; j < G.size; j++) {
    const i = G.row + j, r = batch.rows[i];
    const tokens = tokenSpans(batch, i);
    const card = el("div", { class: `member${i === state.row ? " selected" : ""}`, "data-rollout": j, "data-row": i },
      el("div", { class: "member-head", onclick: () => openRow(i) },
        el("strong", {}, `${r.g}.${r.r} `),
        "reward ", el("span", { "data-field": "reward" }, num(r.reward, 3)),
        " · A ", el("span", { "data-field": "A" }, signed(r.A, 3)),
        el("br"),
        el("span", { "data-field": "verdict", class: r.accepted === true ? "verdict-accepted" : r.accepted === false ? "verdict-rejected" : null }, verdictText(r)),
        r.attempts ? ` (${r.attempts} attempt${r.attempts === 1 ? "" : "s"})` : null,
        el("br"),
        "gated ", el("span", { "data-field": "gated" }, r.gated), " of ", el("span", { "data-field": "n" }, r.n), " tokens"),
      r.text ? el("div", { class: `member-reflection ${r.accepted ? "accepted" : "rejected"}` }, r.text) : null,
      tokens);
    tokens.addEventListener("mouseover", (e) => {
      const span = e.target.closest(".tok");
      if (span) readout.textContent = `${r.g}.${r.r} ${tokenInfo(batch, r, Number(span.dataset.t))}`;
    });
    tokens.addEventListener("click", (e) => {
      const span = e.target.closest(".tok");
      if (span) openRow(i, Number(span.dataset.t));
    });
    members.append(card);
  }
  return el("section", { id: "group", "data-group": g },
    el("h2", {}, `Group ${g}: ${G.size} rollouts of one prompt`),
    el("p", { id: "group-figures" }, `mean reward ${num(G.mean_reward, 3)} · reflections accepted ${G.reflections_accepted} of ${G.reflections_requested}` +
      ` · gate rate ${pct(G.gate_rate)} (${G.gated_tokens} of ${G.reflected_tokens} reflected tokens; hints ${pct(G.gate_rate_positive)}, critiques ${pct(G.gate_rate_negative)})`),
    el("details", {}, el("summary", {}, "prompt"), el("pre", { class: "prompt" }, DATA.prompts[G.prompt])),
    promptAcrossSteps(g),
    el("p", { class: "meta" }, "Every response on the one colour scale of the legend above; click a rollout's head or a token to open it below."),
    readout, members);
}

function attemptsPart(r) {
  // Every attempt's reason and text (reject_reasons beside rejected_texts, then `text`); a file
  // written before rejected_texts keeps the last attempt's text only.
  const n = Math.max(r.attempts ?? 0, r.reasons.length + (r.accepted ? 1 : 0), 1);
  return el("ol", { id: "attempts" }, Array.from({ length: n }, (_, k) => {
    const last = k === n - 1, ok = last && r.accepted;
    const reason = ok ? null : (r.reasons[k] ?? (last ? r.reason : null));
    const text = last ? r.text : r.attempt_texts?.[k];
    return el("li", { "data-attempt": k + 1, "data-reason": reason, class: ok ? "verdict-accepted" : "verdict-rejected" },
      el("span", { class: "attempt-head" }, `attempt ${k + 1}: ${ok ? "accepted" : `rejected: ${reason ?? "?"}`}`),
      last ? el("div", { class: `reflection ${r.accepted ? "accepted" : "rejected"}`, id: "reflection-text" }, r.text ?? "(no text)")
        : text !== undefined && text !== null ? el("div", { class: "reflection rejected" }, text)
          : el("span", { class: "meta" }, " (its text is not in the file: written before reflection records kept every attempt's text)"));
  }));
}

function rolloutDetail(batch, index) {
  const r = batch.rows[index];
  let reflection;
  if (!r.kind) {
    reflection = el("p", { class: "meta" }, r.A === 0 ? "A = 0: no reflection is written and the advantage is 0 on every token." : "no reflection record in the file (scored without reflections returned)");
  } else {
    const verdict = r.accepted ? "accepted: the teacher saw this " + r.kind : `rejected (${r.reason}): the teacher saw no ${r.kind}, so Â = A on every token`;
    reflection = el("div", { id: "reflection" },
      el("p", {}, el("strong", {}, `${r.kind}, ${verdict}`), ` · ${r.attempts ?? "?"} attempt(s), ${r.source}${r.cached ? ", from the cache" : ""}`),
      attemptsPart(r));
  }
  const readout = el("div", { class: "readout", id: "readout" }, "hover a token: its Â/A, CIG and log-probabilities");
  const tokens = tokenSpans(batch, index);
  tokens.id = "tokens";
  tokens.addEventListener("mouseover", (e) => { const s = e.target.closest(".tok"); if (s) preview(Number(s.dataset.t)); });
  tokens.addEventListener("mouseleave", () => preview(state.token));
  tokens.addEventListener("click", (e) => { const s = e.target.closest(".tok"); if (s) selectToken(Number(s.dataset.t), { scroll: false }); });
  view.chart = creditChart(batch, index);
  view.readout = readout;
  return el("section", { id: "detail", "data-row": index },
    el("h2", {}, `Rollout ${r.g}.${r.r}: reward ${num(r.reward, 3)}, A ${signed(r.A, 3)}, ${r.gated} gated of ${r.n} tokens, max Â/A ${num(r.max_amp, 3)}`),
    r.feedback ? el("p", {}, el("strong", {}, "verifier feedback: "), r.feedback) : null,
    reflection,
    el("h2", {}, `Response, coloured by ${state.colour === "cig" ? "CIG" : "Â/A"} (legend above the group)`),
    readout, tokens,
    el("h2", {}, "Log-probabilities and CIG per token"), view.chart.node);
}

function openRow(i, token = null, { scrollRow = false, regroup = false } = {}) {
  const batch = current(), r = batch.rows[i];
  if (!r) return;
  state.row = i;
  state.token = null;
  const pos = view.order.indexOf(i);
  if (pos >= view.limit) {  // reached by the keys or a link beyond the rows built so far
    view.limit = (Math.floor(pos / ROW_LIMIT) + 1) * ROW_LIMIT;
    fillRows();
  }
  view.tbody.querySelector("tr.selected")?.classList.remove("selected");
  const tr = view.tbody.querySelector(`tr[data-row='${i}']`);
  tr?.classList.add("selected");
  if (scrollRow) tr?.scrollIntoView({ block: "nearest" });
  if (regroup || view.groupShown !== r.g) {
    view.groupSlot.replaceChildren(groupView(batch, r.g));
    view.groupShown = r.g;
  } else {
    for (const card of view.groupSlot.querySelectorAll(".member")) card.classList.toggle("selected", Number(card.dataset.row) === i);
  }
  view.detailSlot.replaceChildren(rolloutDetail(batch, i));
  if (token !== null) selectToken(token, { scroll: true });
  else writeHash();
}

// Shows token t in the readout and on the chart, without selecting it (the pointer).
function preview(t) {
  const batch = current(), r = state.row === null ? null : batch.rows[state.row];
  if (!r || !view.readout) return;
  view.readout.textContent = t === null ? "hover a token: its Â/A, CIG and log-probabilities" : tokenInfo(batch, r, t);
  view.chart?.move(t);
  const tokens = document.getElementById("tokens");
  tokens.querySelector(".tok.pointed")?.classList.remove("pointed");
  if (t !== null && t !== state.token) tokens.children[t]?.classList.add("pointed");
}

// Selects token t of the open rollout: the cursor, the readout, the chart and the address.
function selectToken(t, { scroll = true } = {}) {
  const batch = current(), r = state.row === null ? null : batch.rows[state.row];
  if (!r) return;
  t = clamp(t, 0, r.n - 1);
  state.token = t;
  const tokens = document.getElementById("tokens");
  for (const box of [tokens, view.groupSlot.querySelector(`.member[data-row='${state.row}'] .tokens`)]) {
    if (!box) continue;
    box.querySelector(".tok.cursor")?.classList.remove("cursor");
    box.children[t]?.classList.add("cursor");
  }
  preview(t);
  if (scroll) tokens.children[t]?.scrollIntoView({ block: "nearest" });
  writeHash();
}

// ---------------------------------------------------------------- keys

function moveRow(step) {
  const order = view.order;
  if (!order.length) return;
  const at = order.indexOf(state.row);
  const next = at < 0 ? (step > 0 ? 0 : order.length - 1) : clamp(at + step, 0, order.length - 1);
  openRow(order[next], null, { scrollRow: true });
}

function moveToken(step) {
  if (state.row === null) return moveRow(1);
  selectToken(state.token === null ? (step > 0 ? 0 : current().rows[state.row].n - 1) : state.token + step);
}

function nextGated(dir) {
  if (state.row === null) return;
  const batch = current(), r = batch.rows[state.row], gated = arrays(batch).gated;
  for (let t = (state.token ?? (dir > 0 ? -1 : r.n)) + dir; t >= 0 && t < r.n; t += dir) {
    if (gated[r.off + t]) return selectToken(t);
  }
}

function moveInGroup(step) {
  if (state.row === null) return;
  const batch = current(), r = batch.rows[state.row], G = batch.groups[r.g];
  openRow(G.row + clamp(r.r + step, 0, G.size - 1), null, { scrollRow: true });
}

document.addEventListener("keydown", (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.target.closest("input:not([type=radio]), select, textarea")) {  // typing, not navigating
    if (e.key === "Escape") e.target.blur();
    return;
  }
  const keys = {
    j: () => moveRow(1), ArrowDown: () => moveRow(1), k: () => moveRow(-1), ArrowUp: () => moveRow(-1),
    l: () => moveToken(1), ArrowRight: () => moveToken(e.shiftKey ? 10 : 1), L: () => moveToken(10),
    h: () => moveToken(-1), ArrowLeft: () => moveToken(e.shiftKey ? -10 : -1), H: () => moveToken(-10),
    n: () => nextGated(1), N: () => nextGated(-1),
    "]": () => moveInGroup(1), "[": () => moveInGroup(-1),
    c: () => setColour(state.colour === "cig" ? "adv" : "cig"),
    "/": () => document.getElementById("f-q").focus(),
  };
  const act = keys[e.key];
  if (act) {
    e.preventDefault();
    act();
  }
});

// ---------------------------------------------------------------- the page

function show() {
  const batch = current();
  view.limit = ROW_LIMIT;
  view.groupShown = null;
  view.chart = null;
  view.readout = null;
  view.groupSlot = el("div", { id: "group-slot" });
  view.detailSlot = el("div", { id: "detail-slot" }, el("p", { class: "meta" }, "Click a rollout (or press j) to see its group, its tokens and its reflection."));
  state.row = null;
  state.token = null;
  const picker = DATA.batches.length > 1
    ? el("label", {}, "batch ", el("select", { id: "batch", onchange: (e) => { state.batch = Number(e.target.value); show(); writeHash(); } },
      DATA.batches.map((b, i) => el("option", { value: i, selected: i === state.batch }, `${b.label} (step ${b.step ?? "?"})`))))
    : null;
  document.getElementById("app").replaceChildren(
    el("h1", {}, "amr-sd credit viewer"),
    el("p", { class: "meta" }, `${batch.label} · step ${batch.step ?? "?"} · model ${batch.model ?? "?"} · policy ${batch.policy_version ?? "?"}`),
    ...[picker, trend(), summaryPart(batch), rowsPart(batch), toolbar(batch), view.groupSlot, view.detailSlot].filter(Boolean));
  fillRows();
}

window.addEventListener("hashchange", () => {
  if (location.hash !== view.ownHash) applyHash();  // an address typed or pasted, not ours
});
applyHash();
document.body.dataset.readyMs = performance.now().toFixed(1);  // read by `make bench` (viewer)
document.body.dataset.ready = "true";
