/**
 * Line charts over time for the admin dashboard and the client's inspector: a small browser script
 * (inline SVG, no library, no build step, nothing fetched) and its style, as strings both pages
 * embed. Each chart is a `<figure class="chart">` with a legend (latest values), an SVG whose
 * `viewBox` is {@link CHART_WIDTH} wide (x is time over the window, y is the value on a 0–`data-ymax`
 * scale), and the window's ends as labels; it stretches to any width, a phone's included.
 * @module
 */

/** The SVG's viewBox width: x = (t − t0) / (t1 − t0) × this. */
export const CHART_WIDTH = 600;

/** The shortest span a chart shows (ms): a young history fills the chart from its first sample on, down to this. */
export const CHART_MIN_SPAN = 60_000;

/** The chart script: defines `lineChart(options)`, which returns the figure element. */
export const CHART_SCRIPT = `
/** The window a chart shows: the last \`window\` ms, or from the first sample on while fewer are kept (at least ${CHART_MIN_SPAN / 1000} s). */
function chartSpan(times, window) {
  const t1 = times.length > 0 ? times[times.length - 1] : Date.now();
  const kept = times.length > 0 ? t1 - times[0] : 0;
  return { t0: t1 - Math.min(window, Math.max(${CHART_MIN_SPAN}, kept)), t1 };
}
function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = Math.pow(10, Math.floor(Math.log10(value)));
  for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}
/**
 * options: { name, title, times: [ms], t0, t1, height, format(value) -> text,
 *   series: [{ name, label, values: [number | null], color, dash }] }; a null value is no point.
 */
function lineChart(options) {
  const svgNs = "http://www.w3.org/2000/svg";
  const width = ${CHART_WIDTH};
  const height = options.height || 120;
  const { times, t0, t1 } = options;
  let top = 0;
  for (const s of options.series) for (const v of s.values) if (v !== null && v > top) top = v;
  const yMax = niceMax(top);
  const figure = document.createElement("figure");
  figure.className = "chart";
  figure.dataset.chart = options.name;
  const caption = document.createElement("figcaption");
  const title = document.createElement("b");
  title.textContent = options.title;
  caption.append(title);
  for (const s of options.series) {
    const key = document.createElement("span");
    key.className = "key";
    key.style.setProperty("--color", s.color);
    let latest = null;
    for (let i = s.values.length - 1; i >= 0 && latest === null; i--) latest = s.values[i];
    key.textContent = s.label + " " + (latest === null ? "–" : options.format(latest));
    caption.append(key);
  }
  figure.append(caption);
  const svg = document.createElementNS(svgNs, "svg");
  svg.setAttribute("viewBox", "0 0 " + width + " " + height);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", options.title + ", up to " + options.format(yMax));
  svg.style.height = height + "px";
  svg.dataset.ymax = String(yMax);
  svg.dataset.t0 = String(t0);
  svg.dataset.t1 = String(t1);
  for (const fraction of [0.5, 1]) {
    const grid = document.createElementNS(svgNs, "line");
    const y = (height - fraction * height).toFixed(2);
    grid.setAttribute("x1", "0"); grid.setAttribute("x2", String(width));
    grid.setAttribute("y1", y); grid.setAttribute("y2", y);
    grid.setAttribute("class", "grid");
    svg.append(grid);
  }
  const span = Math.max(1, t1 - t0);
  for (const s of options.series) {
    const points = [];
    for (let i = 0; i < times.length; i++) {
      const v = s.values[i];
      if (v === null || v === undefined || times[i] < t0) continue;
      points.push(((times[i] - t0) / span * width).toFixed(2) + "," + (height - (v / yMax) * height).toFixed(2));
    }
    const line = document.createElementNS(svgNs, "polyline");
    line.setAttribute("points", points.join(" "));
    line.setAttribute("fill", "none");
    line.style.stroke = s.color;
    if (s.dash) line.setAttribute("stroke-dasharray", "6 4");
    line.setAttribute("vector-effect", "non-scaling-stroke");
    line.dataset.series = s.name;
    svg.append(line);
  }
  figure.append(svg);
  const axis = document.createElement("div");
  axis.className = "axis";
  const minutes = Math.round(span / 60000);
  for (const text of [(minutes >= 1 ? minutes + " min" : Math.round(span / 1000) + " s") + " ago", "max " + options.format(yMax), "now"]) {
    const label = document.createElement("span");
    label.textContent = text;
    axis.append(label);
  }
  figure.append(axis);
  return figure;
}
`;

/** The charts' style (colours from the page's own custom properties where it has them). */
export const CHART_STYLE = `
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 280px), 1fr)); gap: .75rem; margin: .5rem 0 1rem; }
figure.chart { margin: 0; padding: .5rem .6rem .35rem; border: 1px solid var(--line, #d8dde3); border-radius: 8px; background: var(--panel, #fff); min-width: 0; }
figure.chart figcaption { display: flex; flex-wrap: wrap; gap: .1rem .8rem; align-items: baseline; font-size: .8rem; margin-bottom: .3rem; }
figure.chart figcaption b { font-size: .85rem; margin-right: auto; }
figure.chart .key { font-variant-numeric: tabular-nums; white-space: nowrap; }
figure.chart .key::before { content: ""; display: inline-block; width: .8em; height: .2em; margin: 0 .3em .2em 0; background: var(--color); border-radius: 1px; }
figure.chart svg { display: block; width: 100%; overflow: visible; }
figure.chart svg polyline { stroke-width: 1.75; stroke-linejoin: round; }
figure.chart svg line.grid { stroke: var(--line, #d8dde3); stroke-width: 1; vector-effect: non-scaling-stroke; stroke-dasharray: 3 3; }
figure.chart .axis { display: flex; justify-content: space-between; font-size: .7rem; color: var(--muted, #5b636d); margin-top: .15rem; }
figure.chart.mini { padding: .25rem .4rem .1rem; }
figure.chart.mini figcaption { font-size: .72rem; margin-bottom: .1rem; }
figure.chart.mini figcaption b { font-size: .72rem; }
figure.chart.mini .axis { display: none; }
`;
