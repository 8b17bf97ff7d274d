/**
 * The admin dashboard page: plain HTML, CSS and a small script (no build step, nothing fetched from
 * elsewhere), polling the admin JSON API once a second. Charts of the last five minutes (bytes per
 * second in and out and visitors open, in all and per tunnel, from `/api/history`), clients and
 * tunnels as tables on a wide window, as cards on a phone; a filter box and a pause button, both
 * reachable with the keyboard.
 * @module
 */

import { CHART_SCRIPT, CHART_STYLE } from "../chart.ts";

/** The page `GET /` on the admin listener serves. */
export const DASHBOARD_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>sockets server</title>
<style>
:root { color-scheme: light dark; --fg: #1b1f24; --muted: #5b636d; --bg: #fff; --panel: #f5f7f9; --line: #d8dde3; --accent: #0a66c2; --ok: #1a7f37; --warn: #9a6700; --in: #0a66c2; --out: #c2410c; --visitors: #7c3aed; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6e9ed; --muted: #9aa4af; --bg: #14171a; --panel: #1d2126; --line: #333a42; --accent: #58a6ff; --ok: #3fb950; --warn: #d29922; --in: #58a6ff; --out: #fb923c; --visitors: #c4b5fd; } }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
header { display: flex; flex-wrap: wrap; gap: .5rem 1rem; align-items: center; padding: .75rem 1rem; border-bottom: 1px solid var(--line); background: var(--panel); }
header h1 { font-size: 1.1rem; margin: 0; }
header .meta { color: var(--muted); font-size: .85rem; }
header .tools { margin-left: auto; display: flex; gap: .5rem; align-items: center; }
input, button { font: inherit; color: inherit; background: var(--bg); border: 1px solid var(--line); border-radius: 6px; padding: .3rem .6rem; }
button { cursor: pointer; }
:focus-visible { outline: 2px solid var(--accent); outline-offset: 2px; }
main { padding: 1rem; max-width: 1200px; margin: 0 auto; }
.totals { display: grid; grid-template-columns: repeat(auto-fit, minmax(9rem, 1fr)); gap: .5rem; margin-bottom: 1rem; }
.total { background: var(--panel); border: 1px solid var(--line); border-radius: 8px; padding: .5rem .75rem; }
.total b { display: block; font-size: 1.3rem; font-variant-numeric: tabular-nums; }
.total span { color: var(--muted); font-size: .8rem; }
h2 { font-size: 1rem; margin: 1.25rem 0 .5rem; }
table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: .4rem .5rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { color: var(--muted); font-weight: 600; font-size: .8rem; }
td.num, th.num { text-align: right; }
td a { color: var(--accent); word-break: break-all; }
.tag { display: inline-block; font-size: .75rem; padding: 0 .4rem; border-radius: 4px; border: 1px solid var(--line); }
.live { color: var(--ok); } .reserved { color: var(--warn); }
.empty { color: var(--muted); padding: .75rem .5rem; }
#status { font-size: .85rem; color: var(--muted); }
td.chart { min-width: 12rem; width: 22%; }
td.chart figure.chart { border: 0; background: none; padding: 0; }
${CHART_STYLE}
#status.error { color: #cf222e; }
@media (max-width: 640px) {
  header .tools { margin-left: 0; width: 100%; }
  header .tools input { flex: 1; min-width: 0; }
  thead { display: none; }
  table, tbody, tr, td { display: block; width: 100%; }
  tr { border: 1px solid var(--line); border-radius: 8px; margin-bottom: .6rem; padding: .3rem .5rem; background: var(--panel); }
  td { border: 0; padding: .15rem 0; display: flex; justify-content: space-between; gap: 1rem; text-align: right; }
  td.num { text-align: right; }
  td.chart { display: block; width: 100%; }
  td.chart::before { display: block; margin-bottom: .2rem; }
  td::before { content: attr(data-label); color: var(--muted); font-size: .8rem; text-align: left; }
}
</style>
</head>
<body>
<header>
  <h1>sockets server</h1>
  <span class="meta" id="meta"></span>
  <div class="tools">
    <label for="filter" class="meta">Filter</label>
    <input id="filter" type="search" placeholder="user, address, URL…" autocomplete="off">
    <button id="pause" type="button" aria-pressed="false">Pause</button>
  </div>
</header>
<main>
  <p id="status" role="status" aria-live="polite">loading…</p>
  <section class="totals" aria-label="Totals">
    <div class="total"><b id="t-clients">–</b><span>clients</span></div>
    <div class="total"><b id="t-tunnels">–</b><span>tunnels</span></div>
    <div class="total"><b id="t-visitors">–</b><span>visitors open</span></div>
    <div class="total"><b id="t-in">–</b><span>in (from visitors)</span></div>
    <div class="total"><b id="t-out">–</b><span>out (to visitors)</span></div>
    <div class="total"><b id="t-refused">–</b><span>visitors refused</span></div>
    <div class="total"><b id="t-udp-flows">–</b><span>UDP flows open</span></div>
    <div class="total"><b id="t-udp-drops" title="">–</b><span>UDP datagrams dropped</span></div>
  </section>
  <h2 id="charts-title">Over time</h2>
  <section class="charts" id="charts" aria-labelledby="charts-title"></section>
  <p id="certificates" class="meta" hidden></p>
  <h2 id="clients-title">Clients</h2>
  <table aria-labelledby="clients-title">
    <thead><tr><th>Client</th><th class="user">User</th><th>Address</th><th>State</th><th>Connected since</th><th class="num">Resumes</th><th class="num">Tunnels</th><th class="num">Visitors</th></tr></thead>
    <tbody id="clients"></tbody>
  </table>
  <h2 id="tunnels-title">Tunnels</h2>
  <table aria-labelledby="tunnels-title">
    <thead><tr><th>Type</th><th>URL</th><th class="user">User</th><th class="num">Visitors open</th><th class="num">Visitors total</th><th class="num">In</th><th class="num">Out</th><th class="num">Rate in</th><th class="num">Rate out</th><th>Over time</th></tr></thead>
    <tbody id="tunnels"></tbody>
  </table>
</main>
<script>
"use strict";
${CHART_SCRIPT}
const token = new URLSearchParams(location.search).get("token");
const headers = token ? { Authorization: "Bearer " + token } : {};
const $ = (id) => document.getElementById(id);
let paused = false;
let last = null;
/** The charts' samples, merged from /api/history (only what is new is asked for). */
const hist = { times: [], total: { in: [], out: [], visitors: [] }, tunnels: new Map(), window: 300000 };
const KINDS = ["in", "out", "visitors"];
function mergeHistory(h) {
  hist.window = h.windowSeconds * 1000;
  const before = hist.times.length;
  const added = h.times.length;
  if (added === 0) return;
  hist.times.push(...h.times);
  for (const k of KINDS) hist.total[k].push(...h.total[k]);
  for (const [id, s] of Object.entries(h.tunnels)) {
    let mine = hist.tunnels.get(id);
    if (!mine) {
      mine = { in: new Array(before).fill(null), out: new Array(before).fill(null), visitors: new Array(before).fill(null) };
      hist.tunnels.set(id, mine);
    }
    for (const k of KINDS) mine[k].push(...s[k]);
  }
  for (const [id, mine] of hist.tunnels) if (!(id in h.tunnels)) for (const k of KINDS) mine[k].push(...new Array(added).fill(null));
  const cutoff = hist.times[hist.times.length - 1] - hist.window;
  let drop = 0;
  while (drop < hist.times.length && hist.times[drop] <= cutoff) drop++;
  if (drop > 0) {
    hist.times.splice(0, drop);
    for (const k of KINDS) hist.total[k].splice(0, drop);
    for (const mine of hist.tunnels.values()) for (const k of KINDS) mine[k].splice(0, drop);
  }
  for (const [id, mine] of hist.tunnels) if (mine.in.every((v) => v === null)) hist.tunnels.delete(id);
}
function chartWindow() {
  return { times: hist.times, ...chartSpan(hist.times, hist.window) };
}
const count = (v) => String(Math.round(v));
function trafficChart(name, title, series, height) {
  return lineChart({ ...chartWindow(), name, title, height, format: rate, series: [
    { name: "in", label: "in", values: series.in, color: "var(--in)" },
    { name: "out", label: "out", values: series.out, color: "var(--out)", dash: true }] });
}
function visitorsChart(name, title, series, height) {
  return lineChart({ ...chartWindow(), name, title, height, format: count, series: [
    { name: "visitors", label: "open", values: series.visitors, color: "var(--visitors)" }] });
}
function renderCharts() {
  $("charts").replaceChildren(
    trafficChart("traffic", "Bytes per second, all tunnels", hist.total, 120),
    visitorsChart("visitors", "Visitors open, all tunnels", hist.total, 120));
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? String(n) : n.toFixed(n < 10 ? 2 : 1)) + " " + units[i];
}
const rate = (n) => bytes(n) + "/s";
function ago(iso) {
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  const text = s < 60 ? s + " s" : s < 3600 ? Math.floor(s / 60) + " min" : Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  return new Date(iso).toLocaleTimeString() + " (" + text + " ago)";
}
function cell(row, label, text, className) {
  const td = document.createElement("td");
  td.dataset.label = label;
  if (className) td.className = className;
  if (text instanceof Node) td.append(text); else td.textContent = text;
  row.append(td);
}
function matches(values) {
  const q = $("filter").value.trim().toLowerCase();
  return !q || values.some((v) => String(v ?? "").toLowerCase().includes(q));
}
function empty(body, columns, text) {
  const row = document.createElement("tr");
  const td = document.createElement("td");
  td.colSpan = columns;
  td.className = "empty";
  td.textContent = text;
  row.append(td);
  body.replaceChildren(row);
}
function render() {
  if (!last) return;
  const { server, clients, tunnels } = last;
  const users = clients.some((c) => c.user) || tunnels.some((t) => t.user);
  for (const th of document.querySelectorAll("th.user")) th.hidden = !users;
  $("meta").textContent = "v" + server.version + " · up since " + new Date(server.startedAt).toLocaleString() + " · " + server.status;
  $("t-clients").textContent = server.clients;
  $("t-tunnels").textContent = server.tunnels;
  $("t-visitors").textContent = server.streams;
  $("t-in").textContent = bytes(tunnels.reduce((n, t) => n + t.bytes.in, 0));
  $("t-out").textContent = bytes(tunnels.reduce((n, t) => n + t.bytes.out, 0));
  const refused = server.visitorsRefused ?? {};
  $("t-refused").textContent = Object.values(refused).reduce((n, v) => n + v, 0);
  $("t-refused").title = Object.entries(refused).map(([reason, n]) => reason + ": " + n).join(", ") || "none";
  if (server.udp) {
    const drops = Object.entries(server.udp.drops);
    $("t-udp-flows").textContent = server.udp.open;
    $("t-udp-drops").textContent = drops.reduce((n, [, v]) => n + v, 0);
    $("t-udp-drops").title = drops.map(([reason, v]) => reason + ": " + v).join(", ");
  }
  const certs = server.certificates;
  $("certificates").hidden = !certs;
  if (certs) {
    const days = certs.soonestExpirySeconds === undefined ? "" : " · soonest expiry in " + (certs.soonestExpirySeconds / 86400).toFixed(1) + " days";
    const o = certs.orders;
    const failure = certs.lastFailure ? " · last failure " + ago(certs.lastFailure.at) + ": " + certs.lastFailure.host + ": " + certs.lastFailure.message : "";
    const revoked = certs.revocation && certs.revocation.revoked > 0 ? " · " + certs.revocation.revoked + " revoked (not served)" : "";
    $("certificates").textContent = "Certificates: " + certs.certificates + revoked + days + " · ACME orders: " + o.issued + " issued, " + o.failed + " failed, " + o.refused + " refused" + failure;
  }

  const cbody = $("clients");
  const shownClients = clients.filter((c) => matches([c.id, c.user, c.address, c.state]));
  if (shownClients.length === 0) empty(cbody, 8, clients.length ? "no client matches the filter" : "no client connected");
  else cbody.replaceChildren(...shownClients.map((c) => {
    const row = document.createElement("tr");
    row.dataset.client = c.id;
    cell(row, "Client", c.id.slice(0, 8));
    if (users) cell(row, "User", c.user ?? "–");
    cell(row, "Address", c.address);
    const state = document.createElement("span");
    state.className = "tag " + c.state;
    state.textContent = c.state;
    cell(row, "State", state);
    cell(row, "Connected since", ago(c.since));
    cell(row, "Resumes", String(c.resumes), "num");
    cell(row, "Tunnels", String(c.tunnels), "num");
    cell(row, "Visitors", String(c.visitors), "num");
    return row;
  }));

  const tbody = $("tunnels");
  const shownTunnels = tunnels.filter((t) => matches([t.id, t.type, t.url, t.name, t.user]));
  if (shownTunnels.length === 0) empty(tbody, 10, tunnels.length ? "no tunnel matches the filter" : "no tunnel open");
  else tbody.replaceChildren(...shownTunnels.map((t) => {
    const row = document.createElement("tr");
    row.dataset.tunnel = t.id;
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.textContent = t.pool ? t.type + " · pool" : t.type;
    cell(row, "Type", tag);
    let url = t.url;
    if (t.type === "http") {
      url = document.createElement("a");
      url.href = t.url;
      url.textContent = t.url;
      url.rel = "noreferrer";
    }
    cell(row, "URL", url);
    if (users) cell(row, "User", t.user ?? "–");
    cell(row, "Visitors open", String(t.visitors), "num visitors");
    cell(row, "Visitors total", String(t.visitorsTotal), "num");
    cell(row, "In", bytes(t.bytes.in), "num bytes-in");
    cell(row, "Out", bytes(t.bytes.out), "num bytes-out");
    cell(row, "Rate in", rate(t.rate.in), "num");
    cell(row, "Rate out", rate(t.rate.out), "num");
    const series = hist.tunnels.get(t.id);
    const charts = document.createElement("div");
    if (series) {
      charts.append(trafficChart("traffic-" + t.id, "bytes/s", series, 40), visitorsChart("visitors-" + t.id, "visitors", series, 24));
      for (const figure of charts.children) figure.classList.add("mini");
    } else charts.textContent = "–";
    cell(row, "Over time", charts, "chart");
    return row;
  }));
}
async function get(path) {
  const response = await fetch(path, { headers, cache: "no-store" });
  if (!response.ok) throw new Error(path + ": " + response.status);
  return response.json();
}
async function poll() {
  if (!paused) {
    try {
      const since = hist.times.length > 0 ? hist.times[hist.times.length - 1] : 0;
      const [server, clients, tunnels, history] = await Promise.all([get("/api/server"), get("/api/clients"), get("/api/tunnels"), get("/api/history?since=" + since)]);
      last = { server, clients: clients.clients, tunnels: tunnels.tunnels };
      mergeHistory(history);
      renderCharts();
      render();
      $("status").className = "";
      $("status").textContent = "updated " + new Date().toLocaleTimeString();
      document.body.dataset.updated = String(Date.now());
    } catch (error) {
      $("status").className = "error";
      $("status").textContent = "cannot reach the server: " + error.message;
    }
  }
  setTimeout(poll, 1000);
}
$("filter").addEventListener("input", render);
$("pause").addEventListener("click", () => {
  paused = !paused;
  $("pause").textContent = paused ? "Resume" : "Pause";
  $("pause").setAttribute("aria-pressed", String(paused));
});
document.addEventListener("keydown", (event) => {
  if (event.key === "/" && document.activeElement !== $("filter")) { event.preventDefault(); $("filter").focus(); }
  if (event.key === "Escape" && document.activeElement === $("filter")) { $("filter").value = ""; render(); }
});
poll();
</script>
</body>
</html>
`;
