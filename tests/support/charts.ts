/**
 * Reads the line charts (shared/chart.ts) a page drew back into numbers: each point's time and value
 * from its SVG coordinates and the chart's scale, to compare with the JSON API the page drew them from.
 * @module
 */

import { expect } from "bun:test";
import type { Page } from "playwright-core";
import { CHART_WIDTH } from "../../shared/chart.ts";

/** One series as drawn: its points as (time in ms, value). */
export interface DrawnSeries {
  name: string;
  points: { t: number; value: number }[];
}

/** One chart as drawn. */
export interface DrawnChart {
  name: string;
  yMax: number;
  /** The value one unit of the SVG's height stands for (what coordinate rounding can cost). */
  unit: number;
  t0: number;
  t1: number;
  series: DrawnSeries[];
}

/** Every chart on the page, by name. */
export async function drawnCharts(page: Page): Promise<Map<string, DrawnChart>> {
  const raw = (await page.evaluate(`[...document.querySelectorAll("figure.chart")].map((figure) => {
    const svg = figure.querySelector("svg");
    return {
      name: figure.dataset.chart,
      height: Number(svg.getAttribute("viewBox").split(" ")[3]),
      yMax: Number(svg.dataset.ymax), t0: Number(svg.dataset.t0), t1: Number(svg.dataset.t1),
      series: [...svg.querySelectorAll("polyline")].map((line) => ({ name: line.dataset.series, points: line.getAttribute("points") })),
    };
  })`)) as {
    name: string;
    height: number;
    yMax: number;
    t0: number;
    t1: number;
    series: { name: string; points: string }[];
  }[];
  const charts = new Map<string, DrawnChart>();
  for (const chart of raw) {
    const span = chart.t1 - chart.t0;
    charts.set(chart.name, {
      name: chart.name,
      yMax: chart.yMax,
      unit: chart.yMax / chart.height,
      t0: chart.t0,
      t1: chart.t1,
      series: chart.series.map((series) => ({
        name: series.name,
        points: series.points
          .split(" ")
          .filter(Boolean)
          .map((pair) => {
            const [x, y] = pair.split(",").map(Number) as [number, number];
            return {
              t: chart.t0 + (x / CHART_WIDTH) * span,
              value: ((chart.height - y) / chart.height) * chart.yMax,
            };
          }),
      })),
    });
  }
  return charts;
}

/**
 * Asserts that `series` of `chart` drew exactly the API's samples inside its window: one point per
 * sample with a value, at its time, of its value (within what the coordinates' two decimals allow).
 * Points before `from` (ms) are left out on both sides: an API read after the page's may have let its
 * oldest samples go. Returns how many points were compared.
 */
export function expectDrawn(
  chart: DrawnChart | undefined,
  series: string,
  times: number[],
  values: (number | null)[],
  from = Number.NEGATIVE_INFINITY,
): number {
  expect(chart, `chart drawn`).toBeDefined();
  const drawn = (chart as DrawnChart).series.find((s) => s.name === series);
  expect(drawn, `${chart?.name}: series ${series}`).toBeDefined();
  const expected = times
    .map((t, i) => ({ t, value: values[i] }))
    .filter((p): p is { t: number; value: number } => p.value !== null && p.value !== undefined)
    .filter((p) => p.t >= Math.max(from, (chart as DrawnChart).t0) && p.t <= (chart as DrawnChart).t1);
  const span = (chart as DrawnChart).t1 - (chart as DrawnChart).t0;
  const timeSlack = (span / CHART_WIDTH) * 0.01 + 1;
  const points = (drawn as DrawnSeries).points.filter((p) => p.t >= from - timeSlack);
  expect(points.length, `${chart?.name}/${series}: points drawn`).toBe(expected.length);
  const valueSlack = (chart as DrawnChart).unit * 0.01 + 1e-9;
  for (const [i, point] of points.entries()) {
    const want = expected[i] as { t: number; value: number };
    expect(Math.abs(point.t - want.t), `${chart?.name}/${series}[${i}] time`).toBeLessThanOrEqual(timeSlack);
    expect(Math.abs(point.value - want.value), `${chart?.name}/${series}[${i}] value`).toBeLessThanOrEqual(
      valueSlack,
    );
  }
  return points.length;
}
