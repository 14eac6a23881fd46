"use strict";
// The larder dashboard: polls the service's /v1/stats every second and
// draws what it says. No library, nothing fetched but the figures.

const OUTCOMES = ["l1", "hit", "stale", "negative", "miss", "bypass"];
// The kinds of cached things /v1/stats may list, in the order shown.
const GROUPS = [["entities", "Entities"], ["feeds", "Feeds"], ["sets", "Sets"], ["leaderboards", "Leaderboards"]];
const WINDOW_MS = 5 * 60 * 1000;
const POLL_MS = 1000;
const TOKEN_KEY = "larder-dashboard-token";
const NEEDS_TOKEN = document.querySelector('meta[name="larder-auth"]')?.content === "token";
// `/` or `/ui`, under whatever prefix a proxy adds.
const STATS_URL = location.pathname.replace(/ui\/?$/, "").replace(/\/?$/, "/") + "v1/stats";

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "style") e.style.cssText = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
};

// ---- formatting ----
const int = (n) => (n == null ? "–" : Math.round(n).toLocaleString("en-US"));
const pct = (r) => (r == null ? "–" : (r * 100).toFixed(1) + "%");
const rate = (r) => (r >= 100 ? int(r) : r >= 10 ? r.toFixed(1) : r.toFixed(2)) + "/s";
function ms(v) {
  if (v == null) return "–";
  if (v === 0) return "0 ms";
  if (v < 1) return Math.round(v * 1000) + " µs";
  if (v < 100) return v.toFixed(2) + " ms";
  return int(v) + " ms";
}
function bytes(n) {
  if (n == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}
function duration(s) {
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

// ---- history: reads per second by outcome, per thing, kept in the tab ----
const series = new Map(); // "group/name" -> [{ t, r: {outcome: per second} }]
let previous = null; // { t, stats }

function record(stats, now) {
  if (previous) {
    const dt = (now - previous.t) / 1000;
    for (const [group] of GROUPS) {
      for (const [name, cur] of Object.entries(stats[group] || {})) {
        const before = previous.stats[group]?.[name];
        if (!before || !cur.reads) continue;
        const r = {};
        for (const o of OUTCOMES) r[o] = Math.max(0, ((cur.reads[o] || 0) - (before.reads?.[o] || 0)) / dt);
        const key = group + "/" + name;
        const s = series.get(key) || [];
        s.push({ t: now, r });
        while (s.length && s[0].t < now - WINDOW_MS) s.shift();
        series.set(key, s);
      }
    }
  }
  previous = { t: now, stats };
}

// ---- the chart: stacked bars, one per sample ----
function niceMax(v) {
  if (v <= 1) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}
// The chart's span: the minute or minutes this tab has watched, up to five.
function span(samples, now) {
  const watched = samples.length ? now - samples[0].t : 0;
  return Math.min(WINDOW_MS, Math.max(1, Math.ceil(watched / 60000)) * 60000);
}
function draw(canvas, samples, now) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (!w || !h) return;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const css = getComputedStyle(document.documentElement);
  const left = 52, right = 8, top = 8, bottom = 20;
  const pw = w - left - right, ph = h - top - bottom;
  const windowMs = span(samples, now);
  const peak = Math.max(0, ...samples.map((s) => OUTCOMES.reduce((a, o) => a + s.r[o], 0)));
  const max = niceMax(peak);
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = css.getPropertyValue("--muted");
  g.strokeStyle = css.getPropertyValue("--line");
  g.lineWidth = 1;
  g.textBaseline = "middle";
  g.textAlign = "right";
  for (const f of [0, 0.5, 1]) {
    const y = Math.round(top + ph * (1 - f)) + 0.5;
    g.beginPath(); g.moveTo(left, y); g.lineTo(left + pw, y); g.stroke();
    const v = max * f;
    g.fillText((v >= 10 || v === 0 ? int(v) : v.toFixed(1)) + "/s", left - 6, y);
  }
  // Ticks: every 15 s over one minute, every minute beyond.
  const step = windowMs <= 60000 ? 15000 : 60000;
  g.textBaseline = "top";
  for (let ago = windowMs; ago >= 0; ago -= step) {
    const x = left + pw * (1 - ago / windowMs);
    g.textAlign = ago === windowMs ? "left" : ago === 0 ? "right" : "center";
    const label = ago === 0 ? "now" : step < 60000 ? "−" + ago / 1000 + " s" : "−" + ago / 60000 + " min";
    g.fillText(label, x, top + ph + 5);
  }
  const bw = Math.max(1, (pw * POLL_MS) / windowMs - 1);
  for (const s of samples) {
    const x = left + pw * (1 - (now - s.t) / windowMs) - bw;
    if (x < left) continue;
    let y = top + ph;
    for (const o of OUTCOMES) {
      const bh = (s.r[o] / max) * ph;
      if (bh <= 0) continue;
      g.fillStyle = css.getPropertyValue("--" + o);
      g.fillRect(x, y - bh, bw, bh);
      y -= bh;
    }
  }
  if (!samples.length) {
    g.textAlign = "center"; g.textBaseline = "middle";
    g.fillStyle = css.getPropertyValue("--muted");
    g.fillText("collecting…", left + pw / 2, top + ph / 2);
  }
}

// ---- cards ----
const cards = new Map(); // "group/name" -> { root, canvas, set(field, text) }

function figure(field, label) {
  return el("div", {}, el("dt", {}, label), el("dd", { "data-field": field }, "–"));
}
function latencyRow(cls, label, field) {
  return [
    el("span", {}, label),
    el("div", { class: "track " + cls }, el("div", { "data-bar": field })),
    el("span", { class: "v", "data-field": field }, "–"),
  ];
}

function card(group, name, data) {
  const key = group + "/" + name;
  let c = cards.get(key);
  if (c) return c;
  const canvas = el("canvas", { class: "chart", "aria-label": "reads per second by outcome" });
  const legend = el("div", { class: "legend" },
    ...OUTCOMES.map((o) => el("span", { style: "--c: var(--" + o + ")" }, o, el("b", { "data-outcome": o }, "0"))));
  const figures = el("dl", { class: "figures" },
    figure("reads_total", "reads"), figure("reads_rate", "reads now"),
    figure("loads", "loads"), figure("load_errors", "load errors"),
    figure("lease_waits", "lease waits"), figure("refreshes", "refreshes"),
    figure("l1_entries", "near entries"), figure("l1_evictions", "near evictions"));
  const root = el("section", { class: "card", "data-entity": name, "data-group": group },
    el("h3", {}, name, el("span", { class: "badge", "data-field": "write" }, data.write || group),
      el("span", { class: "ratio" }, el("span", { "data-field": "hit_ratio" }, "–"), el("small", {}, "hit ratio"))),
    canvas, legend,
    el("div", { class: "latency" },
      ...latencyRow("cache", "cache p50", "cache_ms_p50"), ...latencyRow("cache", "cache p99", "cache_ms_p99"),
      ...latencyRow("db", "database p50", "load_ms_p50"), ...latencyRow("db", "database p99", "load_ms_p99")),
    figures);
  if (data.write_back) {
    figures.append(figure("wb_backlog", "write-back backlog"), figure("wb_lag", "write-back lag"),
      figure("wb_dead", "dead letters"), figure("wb_rows", "rows flushed"));
  }
  c = {
    root, canvas,
    set(field, text) {
      for (const e of root.querySelectorAll('[data-field="' + field + '"]')) if (e.textContent !== text) e.textContent = text;
    },
  };
  cards.set(key, c);
  return c;
}

function groupSection(group, title) {
  let s = document.querySelector('[data-group-section="' + group + '"]');
  if (!s) {
    s = el("section", { class: "group", "data-group-section": group },
      el("h2", { class: "group-title" }, title), el("div", { class: "cards" }));
    $("groups").append(s);
  }
  return s.querySelector(".cards");
}

function renderThing(group, name, d, now) {
  const c = card(group, name, d);
  const holder = groupSection(group, GROUPS.find((g) => g[0] === group)[1]);
  if (c.root.parentNode !== holder) holder.append(c.root);
  c.set("write", d.write || group);
  c.set("hit_ratio", pct(d.hit_ratio));
  c.set("reads_total", int(d.reads_total));
  const samples = series.get(group + "/" + name) || [];
  const latest = samples[samples.length - 1];
  c.set("reads_rate", latest ? rate(OUTCOMES.reduce((a, o) => a + latest.r[o], 0)) : "–");
  for (const o of OUTCOMES) {
    const b = c.root.querySelector('[data-outcome="' + o + '"]');
    const t = int(d.reads?.[o] || 0);
    if (b.textContent !== t) b.textContent = t;
  }
  for (const f of ["loads", "load_errors", "lease_waits", "refreshes", "l1_entries", "l1_evictions"]) c.set(f, int(d[f]));
  const lat = ["cache_ms_p50", "cache_ms_p99", "load_ms_p50", "load_ms_p99"];
  const top = Math.max(0, ...lat.map((f) => d[f] || 0));
  for (const f of lat) {
    c.set(f, ms(d[f]));
    const bar = c.root.querySelector('[data-bar="' + f + '"]');
    bar.style.width = d[f] == null || !top ? "0" : Math.max(1, (100 * d[f]) / top) + "%";
  }
  if (d.write_back) {
    c.set("wb_backlog", int(d.write_back.backlog));
    c.set("wb_lag", d.write_back.lag_ms == null ? "–" : ms(d.write_back.lag_ms));
    c.set("wb_dead", int(d.write_back.dead_letters));
    c.set("wb_rows", int(d.write_back.rows_written));
    c.root.querySelector('[data-field="wb_dead"]').classList.toggle("bad", d.write_back.dead_letters > 0);
  }
  draw(c.canvas, samples, now);
}

function renderStore(stats) {
  const box = $("redis");
  box.hidden = false;
  const r = stats.redis;
  const figs = $("store-figures");
  figs.replaceChildren();
  const add = (field, label, value) => figs.append(el("div", {}, el("dt", {}, label), el("dd", { "data-field": field }, value)));
  if (!r) {
    $("mem-text").textContent = "no Redis figures (memory:// store, or Redis did not answer)";
    $("mem-fill").parentNode.hidden = true;
  } else {
    const limited = r.maxmemory > 0;
    const share = limited ? r.used_memory / r.maxmemory : 0;
    $("mem-fill").style.width = limited ? Math.min(100, share * 100) + "%" : "0";
    $("mem-fill").classList.toggle("high", share > 0.9);
    $("mem-fill").parentNode.hidden = !limited;
    $("mem-text").textContent = "memory " + bytes(r.used_memory) +
      (limited ? " of " + bytes(r.maxmemory) + " maxmemory (" + pct(share) + ")" : " (no maxmemory limit)");
    add("maxmemory_policy", "eviction policy", r.maxmemory_policy || "–");
    add("evicted_keys", "evicted keys", int(r.evicted_keys));
    add("expired_keys", "expired keys", int(r.expired_keys));
    add("connected_clients", "clients", int(r.connected_clients));
    const lookups = (r.keyspace_hits || 0) + (r.keyspace_misses || 0);
    add("keyspace_ratio", "keyspace hits", lookups ? pct(r.keyspace_hits / lookups) : "–");
    if (Array.isArray(r.nodes)) add("nodes", "cluster nodes", String(r.nodes.length));
  }
  add("uptime", "service uptime", duration(stats.uptime_s || 0));
  if (r && Array.isArray(r.nodes)) {
    for (const n of r.nodes) {
      add("node", typeof n === "string" ? n : n.addr || "node",
        typeof n === "object" && n.used_memory != null ? bytes(n.used_memory) : "up");
    }
  }
}

function render(stats) {
  const now = Date.now();
  record(stats, now);
  $("store").textContent = stats.store;
  renderStore(stats);
  let any = false;
  for (const [group] of GROUPS) {
    for (const [name, d] of Object.entries(stats[group] || {})) {
      any = true;
      renderThing(group, name, d, now);
    }
  }
  if (!any && !document.querySelector(".empty")) $("groups").append(el("p", { class: "empty" }, "No entities are configured."));
}

// ---- polling and the token ----
function status(state, text) {
  const s = $("status");
  s.dataset.state = state;
  s.textContent = text;
}

let timer = null;
async function poll() {
  clearTimeout(timer);
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (NEEDS_TOKEN && !token) return askForToken("");
  const headers = token ? { Authorization: "Bearer " + token } : {};
  try {
    const res = await fetch(STATS_URL, { headers, cache: "no-store" });
    if (res.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      return askForToken(token ? "That token was refused." : "");
    }
    if (!res.ok) throw new Error("/v1/stats answered " + res.status);
    render(await res.json());
    status("live", "live · " + new Date().toLocaleTimeString("en-GB"));
  } catch (e) {
    status("error", "no answer: " + e.message);
  }
  timer = setTimeout(poll, POLL_MS);
}

function askForToken(message) {
  status("locked", "token needed");
  $("login").hidden = false;
  $("login-error").textContent = message;
  $("token").focus();
}

$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const t = $("token").value.trim();
  if (!t) return;
  sessionStorage.setItem(TOKEN_KEY, t);
  $("token").value = "";
  $("login").hidden = true;
  status("connecting", "connecting…");
  poll();
});
window.addEventListener("resize", () => {
  const now = Date.now();
  for (const [key, c] of cards) draw(c.canvas, series.get(key) || [], now);
});

poll();
