/**
 * Inspector page: the HTML, CSS and script the app serves, as strings (no build step, no CDN; the
 * compiled client carries them). The script keeps the list live from `/api/events`, filters it, shows
 * an exchange's detail and replays it; every action has a key (`/` filter, ↑/↓ or j/k move, `r`
 * replay, `e` edit and replay, `Esc` close). Charts of requests per second and latency percentiles
 * over the last five minutes come from `/api/history`, read once a second while the page is shown.
 * @module
 */

import { CHART_SCRIPT, CHART_STYLE } from "../../chart.ts";

/** The page. */
export const PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>sockets inspector</title>
<link rel="stylesheet" href="/inspector.css">
</head>
<body>
<header>
  <h1>sockets <span>inspector</span></h1>
  <dl id="figures" aria-live="polite"></dl>
  <span id="live" class="live off" title="live updates">offline</span>
</header>
<nav role="tablist" aria-label="views">
  <button role="tab" id="tab-http" aria-selected="true" aria-controls="view-http">HTTP requests <b id="count-http">0</b></button>
  <button role="tab" id="tab-tcp" aria-selected="false" aria-controls="view-tcp">TCP connections <b id="count-tcp">0</b></button>
</nav>
<section id="view-http" role="tabpanel" aria-labelledby="tab-http">
  <section class="charts" id="charts" aria-label="last 5 minutes"></section>
  <form id="filters" role="search" onsubmit="return false">
    <label>Path <input id="f-path" type="search" placeholder="/api  (press /)" autocomplete="off"></label>
    <label>Method <select id="f-method"><option value="">any</option><option>GET</option><option>POST</option><option>PUT</option><option>PATCH</option><option>DELETE</option><option>HEAD</option><option>OPTIONS</option></select></label>
    <label>Status <select id="f-status"><option value="">any</option><option value="2">2xx</option><option value="3">3xx</option><option value="4">4xx</option><option value="5">5xx</option><option value="1">1xx</option><option value="error">failed</option><option value="pending">pending</option></select></label>
    <label>Slower than <input id="f-ms" type="number" min="0" step="1" placeholder="ms" inputmode="numeric"></label>
    <button type="button" id="clear" title="forget every captured request">Clear</button>
  </form>
  <div class="split">
    <div id="list" role="listbox" tabindex="0" aria-label="requests, newest first"></div>
    <article id="detail" aria-live="polite"><p class="hint">Select a request (↑/↓ or j/k). Requests through the tunnels appear here as they happen.</p></article>
  </div>
</section>
<section id="view-tcp" role="tabpanel" aria-labelledby="tab-tcp" hidden>
  <div class="table-wrap"><table id="tcp"><thead><tr><th>Started</th><th>Tunnel</th><th>Visitor</th><th>State</th><th>In</th><th>Out</th><th>Duration</th><th>Ended by</th></tr></thead><tbody></tbody></table></div>
</section>
<script src="/inspector.js"></script>
</body>
</html>
`;

/** The style sheet: one column on a phone, list and detail side by side from 900 px. */
export const PAGE_STYLE = `
:root { --bg: #fafafa; --fg: #1b1f24; --muted: #5b6470; --line: #d9dde3; --accent: #0b62d6; --sel: #e3edfb;
  --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e; --mono: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  --p50: #0b62d6; --p90: #c2410c; --p99: #7c3aed; --panel: #fff; }
#charts { padding: 10px 14px 0; margin: 0; }
${CHART_STYLE}
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
header { display: flex; flex-wrap: wrap; align-items: center; gap: 6px 18px; padding: 10px 14px; background: #1b1f24; color: #fff; }
h1 { font-size: 18px; margin: 0; } h1 span { font-weight: 400; opacity: .75; }
#figures { display: flex; flex-wrap: wrap; gap: 4px 14px; margin: 0; font-size: 13px; }
#figures div { display: flex; gap: 4px; } #figures dt { opacity: .7; } #figures dd { margin: 0; font-variant-numeric: tabular-nums; }
.live { margin-left: auto; font-size: 12px; padding: 2px 8px; border-radius: 10px; background: #2da44e; }
.live.off { background: #6e7781; }
nav { display: flex; gap: 4px; padding: 8px 14px 0; border-bottom: 1px solid var(--line); background: #fff; }
nav button { border: 1px solid transparent; border-bottom: none; background: none; padding: 8px 12px; font: inherit; cursor: pointer; border-radius: 6px 6px 0 0; color: var(--muted); }
nav button[aria-selected="true"] { border-color: var(--line); background: var(--bg); color: var(--fg); font-weight: 600; margin-bottom: -1px; }
nav b { font-weight: 400; font-size: 12px; background: var(--line); border-radius: 8px; padding: 0 6px; }
#filters { display: flex; flex-wrap: wrap; gap: 8px 12px; align-items: end; padding: 10px 14px; }
#filters label { display: flex; flex-direction: column; font-size: 12px; color: var(--muted); gap: 2px; }
input, select, textarea, button { font: inherit; }
#filters input, #filters select { padding: 5px 7px; border: 1px solid var(--line); border-radius: 6px; background: #fff; min-width: 0; }
#f-path { width: 14em; } #f-ms { width: 6em; }
button { cursor: pointer; }
.btn, #clear { padding: 6px 12px; border: 1px solid var(--line); border-radius: 6px; background: #fff; }
.btn.primary { background: var(--accent); color: #fff; border-color: var(--accent); }
:focus-visible { outline: 2px solid var(--accent); outline-offset: 1px; }
.split { display: grid; grid-template-columns: 1fr; gap: 10px; padding: 0 14px 14px; }
#list { border: 1px solid var(--line); border-radius: 8px; background: #fff; max-height: 45vh; overflow: auto; }
.row { display: grid; grid-template-columns: 4.2em 3.6em 1fr 3em 4.6em; gap: 8px; align-items: center; padding: 7px 10px; border-bottom: 1px solid #eef0f3; cursor: pointer; font-size: 14px; }
.row:last-child { border-bottom: none; }
.row[aria-selected="true"] { background: var(--sel); }
.row .time, .row .dur { color: var(--muted); font-size: 12px; font-variant-numeric: tabular-nums; }
.row .dur { text-align: right; }
.row .method { font-weight: 600; font-size: 12px; }
.row .path { font-family: var(--mono); font-size: 13px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.row .tunnel { display: none; }
.tag { font-size: 11px; border-radius: 4px; padding: 0 4px; margin-left: 4px; background: #ddf4ff; color: #0550ae; font-family: system-ui, sans-serif; }
.status { font-weight: 600; font-variant-numeric: tabular-nums; }
.s2 { color: var(--ok); } .s3 { color: var(--accent); } .s4 { color: var(--warn); } .s5, .serr { color: var(--bad); } .spend { color: var(--muted); }
.empty { padding: 18px; color: var(--muted); text-align: center; }
#detail { border: 1px solid var(--line); border-radius: 8px; background: #fff; padding: 12px 14px; min-width: 0; }
#detail h2 { font-size: 16px; margin: 0 0 6px; font-family: var(--mono); word-break: break-all; }
#detail h3 { font-size: 14px; margin: 16px 0 6px; border-bottom: 1px solid var(--line); padding-bottom: 3px; }
#detail h4 { font-size: 13px; margin: 10px 0 4px; color: var(--muted); }
.meta { display: flex; flex-wrap: wrap; gap: 2px 14px; font-size: 13px; color: var(--muted); margin: 0 0 8px; }
.actions { display: flex; flex-wrap: wrap; gap: 8px; margin: 8px 0; }
table.headers { border-collapse: collapse; width: 100%; font-size: 13px; table-layout: fixed; }
table.headers th { text-align: left; font-weight: 600; width: 34%; padding: 2px 8px 2px 0; vertical-align: top; word-break: break-all; }
table.headers td { font-family: var(--mono); padding: 2px 0; word-break: break-all; }
pre { font-family: var(--mono); font-size: 12.5px; background: #f4f6f8; border: 1px solid #e4e7eb; border-radius: 6px; padding: 8px 10px; overflow: auto; max-height: 50vh; margin: 4px 0; white-space: pre-wrap; word-break: break-all; }
.note { font-size: 12px; color: var(--muted); }
.hint { color: var(--muted); }
form.edit { display: grid; gap: 8px; margin: 8px 0; padding: 10px; border: 1px solid var(--line); border-radius: 8px; background: #f8f9fb; }
form.edit .line { display: grid; grid-template-columns: 7em 1fr; gap: 8px; }
form.edit input, form.edit textarea { padding: 5px 7px; border: 1px solid var(--line); border-radius: 6px; font-family: var(--mono); font-size: 13px; width: 100%; }
form.edit textarea { min-height: 6em; }
.error { color: var(--bad); }
.table-wrap { overflow: auto; padding: 10px 14px; }
#tcp { border-collapse: collapse; width: 100%; background: #fff; font-size: 13px; }
#tcp th, #tcp td { text-align: left; padding: 6px 8px; border-bottom: 1px solid #eef0f3; white-space: nowrap; }
@media (min-width: 900px) {
  .split { grid-template-columns: minmax(380px, 46%) 1fr; align-items: start; }
  #list { max-height: calc(100vh - 190px); }
  #detail { max-height: calc(100vh - 190px); overflow: auto; }
  .row { grid-template-columns: 4.6em 5em 3.8em 1fr 3em 4.6em; }
  .row .tunnel { display: block; color: var(--muted); font-size: 12px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
}
`;

/** The page's script: live list, filters, detail, replay, keys, charts. */
export const PAGE_SCRIPT = `"use strict";
${CHART_SCRIPT}
const $ = (id) => document.getElementById(id);
const state = { requests: new Map(), order: [], connections: new Map(), selected: null, detail: null, editing: false };
const filters = { path: $("f-path"), method: $("f-method"), status: $("f-status"), ms: $("f-ms") };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) if (child !== null && child !== undefined && child !== false) node.append(child);
  return node;
}
const bytes = (n) => n < 1024 ? n + " B" : n < 1048576 ? (n / 1024).toFixed(1) + " KiB" : (n / 1048576).toFixed(1) + " MiB";
const ms = (v) => v === undefined || v === null ? "…" : v < 10 ? v.toFixed(1) + " ms" : v < 10000 ? Math.round(v) + " ms" : (v / 1000).toFixed(1) + " s";
const clock = (iso) => new Date(iso).toTimeString().slice(0, 8);
const statusClass = (r) => r.state === "error" ? "serr" : r.response ? "s" + String(r.response.status_code)[0] : "spend";
const statusText = (r) => r.state === "error" ? "ERR" : r.response ? String(r.response.status_code) : "…";

async function api(path, options) {
  const response = await fetch(path, options);
  const text = await response.text();
  const body = text ? JSON.parse(text) : null;
  if (!response.ok) throw new Error((body && body.error) || response.status + " " + response.statusText);
  return body;
}

function matches(r) {
  const path = filters.path.value.trim().toLowerCase();
  if (path && !r.request.uri.toLowerCase().includes(path)) return false;
  if (filters.method.value && r.request.method !== filters.method.value) return false;
  const status = filters.status.value;
  if (status === "error" && r.state !== "error") return false;
  if (status === "pending" && r.state !== "pending") return false;
  if (/^[1-5]$/.test(status) && !(r.response && String(r.response.status_code)[0] === status)) return false;
  const least = Number(filters.ms.value);
  if (filters.ms.value !== "" && least > 0 && !((r.duration_ms || 0) >= least)) return false;
  return true;
}

let renderQueued = false;
function render() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => { renderQueued = false; renderList(); renderTcp(); refreshFigures(); });
}

let figuresAt = 0;
function refreshFigures() {
  const now = Date.now();
  if (now - figuresAt < 500) return;
  figuresAt = now;
  api("/api/status").then(renderFigures, () => {});
}

function visible() { return state.order.map((id) => state.requests.get(id)).filter((r) => r && matches(r)); }

function renderList() {
  const list = $("list");
  const rows = visible();
  $("count-http").textContent = rows.length === state.order.length ? String(rows.length) : rows.length + "/" + state.order.length;
  const fragment = document.createDocumentFragment();
  for (const r of rows) {
    fragment.append(el("div", { class: "row", role: "option", id: "row-" + r.id, "data-id": r.id, "aria-selected": String(r.id === state.selected), onclick: () => select(r.id, true) },
      el("span", { class: "time" }, clock(r.start)),
      el("span", { class: "tunnel", title: r.tunnel_name }, r.tunnel_name),
      el("span", { class: "method" }, r.request.method),
      el("span", { class: "path", title: r.request.uri }, r.request.uri, r.replay_of ? el("span", { class: "tag", title: "replay of " + r.replay_of }, "replay") : null, r.upgraded ? el("span", { class: "tag" }, "upgrade") : null),
      el("span", { class: "status " + statusClass(r) }, statusText(r)),
      el("span", { class: "dur" }, ms(r.duration_ms))));
  }
  if (rows.length === 0) fragment.append(el("div", { class: "empty" }, state.order.length ? "No request matches the filters." : "No requests yet: make one through an HTTP tunnel."));
  list.replaceChildren(fragment);
  if (state.selected) list.setAttribute("aria-activedescendant", "row-" + state.selected);
}

function renderTcp() {
  const rows = [...state.connections.values()].sort((a, b) => (b.start > a.start ? 1 : -1));
  $("count-tcp").textContent = String(rows.length);
  const body = $("tcp").tBodies[0];
  body.replaceChildren(...rows.map((c) => el("tr", {},
    el("td", {}, clock(c.start)), el("td", {}, c.tunnel_name), el("td", {}, c.remote_addr),
    el("td", {}, c.state), el("td", {}, bytes(c.bytes_in)), el("td", {}, bytes(c.bytes_out)),
    el("td", {}, c.state === "open" ? "open" : ms(c.duration_ms)),
    el("td", { title: c.reason || "" }, c.end ? c.end.toUpperCase() + (c.reason ? ": " + c.reason : "") : ""))));
  if (rows.length === 0) body.append(el("tr", {}, el("td", { colspan: "8", class: "empty" }, "No TCP connections yet.")));
}

function renderFigures(s) {
  const figures = [["tunnels", s.tunnels], ["open", s.connections_open], ["connections", s.connections_total], ["in", bytes(s.bytes_in)], ["out", bytes(s.bytes_out)], ["requests", s.requests_total]];
  $("figures").replaceChildren(...figures.map(([k, v]) => el("div", {}, el("dt", {}, k), el("dd", {}, String(v)))));
}

function headersTable(headers) {
  return el("table", { class: "headers" }, el("tbody", {}, Object.entries(headers || {}).flatMap(([name, values]) => values.map((value) => el("tr", {}, el("th", {}, name), el("td", {}, value))))));
}

function bodyBlock(body) {
  if (!body || body.kind === "empty") return el("p", { class: "note" }, "no body");
  const notes = [bytes(body.size)];
  if (body.content_type) notes.push(body.content_type);
  if (body.decoded_from) notes.push("decoded from " + body.decoded_from);
  if (body.truncated) notes.push("cut at " + bytes(body.kept));
  if (body.format) notes.push(body.format === "json" ? "JSON, pretty-printed" : "form, one field a line");
  const content = body.kind === "binary" ? el("pre", { class: "body-hex" }, body.hex) : el("pre", { class: body.pretty ? "body-pretty" : "body-text" }, body.pretty || body.text);
  return [el("p", { class: "note" }, notes.join(" · ")), content];
}

function rawBlock(b64) {
  const binary = atob(b64 || "");
  let text = "";
  for (let i = 0; i < Math.min(binary.length, 65536); i++) {
    const c = binary.charCodeAt(i);
    text += c === 10 || c === 9 || (c >= 32 && c < 127) ? binary[i] : c === 13 ? "\\\\r" : "\\\\x" + c.toString(16).padStart(2, "0");
  }
  if (binary.length > 65536) text += "\\n… " + (binary.length - 65536) + " more bytes";
  return el("details", {}, el("summary", {}, "Raw bytes (" + bytes(binary.length) + ")"), el("pre", { class: "raw" }, text));
}

function renderDetail(d) {
  const box = $("detail");
  if (!d) { box.replaceChildren(el("p", { class: "hint" }, "Select a request (↑/↓ or j/k).")); return; }
  const res = d.response;
  const parts = [
    el("h2", {}, d.request.method + " " + d.request.uri),
    el("p", { class: "meta" },
      el("span", {}, "status ", el("b", { class: statusClass(d) }, res ? res.status : d.state === "error" ? "failed" : "pending")),
      el("span", {}, "at " + new Date(d.start).toLocaleString()),
      el("span", {}, "tunnel " + d.tunnel_name),
      el("span", {}, "from " + d.remote_addr),
      el("span", {}, "duration " + ms(d.duration_ms) + (d.headers_ms !== undefined ? " (head after " + ms(d.headers_ms) + ")" : "")),
      el("span", {}, "↑ " + bytes(d.request.size) + " ↓ " + (res ? bytes(res.size) : "…")),
      d.replay_of ? el("span", {}, "replay of ", el("a", { href: "#" + d.replay_of, onclick: (e) => { e.preventDefault(); select(d.replay_of, true); } }, d.replay_of)) : null),
    d.error ? el("p", { class: "error" }, d.error) : null,
    el("div", { class: "actions" },
      el("button", { class: "btn primary", id: "replay", type: "button", title: "send it again to the local service (r)", onclick: () => doReplay(d.id) }, "Replay"),
      el("button", { class: "btn", id: "edit", type: "button", title: "change method, path, headers or body, then send (e)", onclick: () => openEdit(d) }, "Edit and replay"),
      el("a", { class: "btn", href: "/api/requests/http/" + d.id, target: "_blank" }, "JSON")),
    el("div", { id: "edit-box" }),
    el("h3", {}, "Request"),
    el("h4", {}, "Headers"), headersTable(d.request.headers),
    el("h4", {}, "Body"), bodyBlock(d.request.body), rawBlock(d.request.raw),
    el("h3", {}, "Response"),
  ];
  if (res) parts.push(el("h4", {}, "Headers"), headersTable(res.headers), el("h4", {}, "Body"), bodyBlock(res.body), rawBlock(res.raw));
  else parts.push(el("p", { class: "note" }, d.state === "error" ? "no response" : "waiting for the response…"));
  box.replaceChildren(...parts.flat().filter(Boolean));
}

async function select(id, load) {
  state.selected = id;
  render();
  const row = document.getElementById("row-" + id);
  if (row) row.scrollIntoView({ block: "nearest" });
  if (!load) return;
  try {
    state.detail = await api("/api/requests/http/" + encodeURIComponent(id));
    if (state.selected === id) renderDetail(state.detail);
  } catch (error) {
    $("detail").replaceChildren(el("p", { class: "error" }, String(error.message || error)));
  }
}

function move(step) {
  const rows = visible();
  if (rows.length === 0) return;
  const at = rows.findIndex((r) => r.id === state.selected);
  const next = rows[Math.max(0, Math.min(rows.length - 1, at < 0 ? 0 : at + step))];
  select(next.id, true);
}

async function doReplay(id, edits) {
  const box = $("edit-box");
  try {
    const result = await api("/api/requests/http", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ id, ...(edits || {}) }) });
    upsert(result);
    select(result.id, true);
  } catch (error) {
    if (box) box.replaceChildren(el("p", { class: "error" }, "replay failed: " + (error.message || error)));
  }
}

function openEdit(d) {
  const box = $("edit-box");
  const headerText = (d.request.header_list || []).filter(([n]) => !/^(content-length|transfer-encoding|connection)$/i.test(n)).map(([n, v]) => n + ": " + v).join("\\n");
  const body = d.request.body && d.request.body.kind === "text" ? d.request.body.text : "";
  const form = el("form", { class: "edit", onsubmit: (e) => {
      e.preventDefault();
      const headers = form.elements.headers.value.split("\\n").map((l) => l.trim()).filter(Boolean).map((l) => { const i = l.indexOf(":"); return [l.slice(0, i).trim(), l.slice(i + 1).trim()]; });
      doReplay(d.id, { method: form.elements.method.value.trim(), path: form.elements.path.value.trim(), headers, body: form.elements.body.value });
    }, onkeydown: (e) => { if (e.key === "Escape") { e.stopPropagation(); box.replaceChildren(); $("edit").focus(); } } },
    el("div", { class: "line" }, el("label", { for: "e-method" }, "Method"), el("input", { id: "e-method", name: "method", value: d.request.method })),
    el("div", { class: "line" }, el("label", { for: "e-path" }, "Path"), el("input", { id: "e-path", name: "path", value: d.request.uri })),
    el("label", { for: "e-headers" }, "Headers (Name: value, one a line)"), el("textarea", { id: "e-headers", name: "headers" }, headerText),
    el("label", { for: "e-body" }, "Body"), el("textarea", { id: "e-body", name: "body" }, body),
    el("div", { class: "actions" }, el("button", { class: "btn primary", type: "submit" }, "Send"), el("button", { class: "btn", type: "button", onclick: () => box.replaceChildren() }, "Cancel")));
  box.replaceChildren(form);
  form.elements.method.focus();
}

function upsert(r) {
  if (!state.requests.has(r.id)) state.order.unshift(r.id);
  state.requests.set(r.id, r);
  if (state.order.length > 2000) for (const id of state.order.splice(2000)) state.requests.delete(id);
  render();
  if (r.id === state.selected && r.state !== "pending" && state.detail && state.detail.state === "pending") select(r.id, true);
}

async function resync() {
  const [list, tcp, status] = await Promise.all([api("/api/requests/http?summary=1&limit=100000"), api("/api/connections/tcp"), api("/api/status")]);
  state.requests.clear();
  state.order = [];
  for (const r of list.requests) { state.requests.set(r.id, r); state.order.push(r.id); }
  state.connections.clear();
  for (const c of tcp.connections) state.connections.set(c.id, c);
  renderFigures(status);
  render();
}

function connect() {
  const events = new EventSource("/api/events");
  events.onopen = () => { $("live").textContent = "live"; $("live").classList.remove("off"); resync().catch(() => {}); };
  events.onerror = () => { $("live").textContent = "reconnecting"; $("live").classList.add("off"); };
  events.addEventListener("request", (e) => upsert(JSON.parse(e.data)));
  events.addEventListener("connection", (e) => { const c = JSON.parse(e.data); state.connections.set(c.id, c); render(); });
  events.addEventListener("status", (e) => renderFigures(JSON.parse(e.data)));
  events.addEventListener("clear", () => { state.requests.clear(); state.order = []; state.selected = null; renderDetail(null); resync().catch(() => {}); });
}

setInterval(() => { api("/api/status").then(renderFigures, () => {}); }, 2000);

function renderCharts(h) {
  const common = { times: h.times, ...chartSpan(h.times, h.window_seconds * 1000) };
  const rps = (v) => (Number.isInteger(v) ? String(v) : v.toFixed(1)) + "/s";
  $("charts").replaceChildren(
    lineChart({ ...common, name: "requests", title: "Requests per second", format: rps, series: [
      { name: "rps", label: "all", values: h.rps, color: "var(--accent)" },
      { name: "errors", label: "failed", values: h.errors, color: "var(--bad)", dash: true }] }),
    lineChart({ ...common, name: "latency", title: "Latency", format: ms, series: [
      { name: "p50_ms", label: "p50", values: h.p50_ms, color: "var(--p50)" },
      { name: "p90_ms", label: "p90", values: h.p90_ms, color: "var(--p90)", dash: true },
      { name: "p99_ms", label: "p99", values: h.p99_ms, color: "var(--p99)" }] }));
}
function refreshCharts() {
  if (document.hidden || $("view-http").hidden) return;
  api("/api/history").then(renderCharts, () => {});
}
setInterval(refreshCharts, 1000);
refreshCharts();
for (const input of Object.values(filters)) input.addEventListener("input", render);
$("clear").addEventListener("click", () => api("/api/requests/http", { method: "DELETE" }).catch(() => {}));
$("list").addEventListener("keydown", (e) => {
  if (e.key === "ArrowDown" || e.key === "j") { e.preventDefault(); move(1); }
  else if (e.key === "ArrowUp" || e.key === "k") { e.preventDefault(); move(-1); }
  else if (e.key === "Home") { e.preventDefault(); move(-1e9); }
  else if (e.key === "End") { e.preventDefault(); move(1e9); }
});
function showTab(tab) {
  for (const name of ["http", "tcp"]) {
    $("tab-" + name).setAttribute("aria-selected", String(name === tab));
    $("view-" + name).hidden = name !== tab;
  }
}
$("tab-http").addEventListener("click", () => showTab("http"));
$("tab-tcp").addEventListener("click", () => showTab("tcp"));
document.addEventListener("keydown", (e) => {
  const typing = /^(INPUT|TEXTAREA|SELECT)$/.test(e.target.tagName);
  if (e.key === "Escape" && typing) { e.target.blur(); $("list").focus(); return; }
  if (typing || e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key === "/") { e.preventDefault(); filters.path.focus(); }
  else if (e.key === "r" && state.selected) doReplay(state.selected);
  else if (e.key === "e" && state.detail) openEdit(state.detail);
  else if ((e.key === "j" || e.key === "k" || e.key.startsWith("Arrow")) && document.activeElement === document.body) { $("list").focus(); move(e.key === "k" || e.key === "ArrowUp" ? -1 : 1); }
});
render();
connect();
`;
