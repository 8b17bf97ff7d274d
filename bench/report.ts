/**
 * The benchmark's output: one markdown table of absolute figures with each one's ratio to `direct` and
 * a "target met?" column, a CPU table that shows what bounds each figure, and the same as JSON.
 * @module
 */

import { cpus } from "node:os";
import type { MemoryFigures, Sample } from "./measure.ts";
import type { ProviderName } from "./providers.ts";

/** Everything measured for one provider (absent: skipped or failed, see `errors`). */
export interface ProviderResult {
  name: ProviderName;
  /** Why the provider did not run at all. */
  skipped?: string;
  /** The tunnel's processes, as measured. */
  processes?: string;
  /** Measurement → error message, for measurements that failed. */
  errors: Record<string, string>;
  samples: Partial<Record<SampleKey, Sample>>;
  memory?: MemoryFigures;
}

/** Measurements that produce a load-generator sample. */
export type SampleKey =
  | "bulkUp1"
  | "bulkDown1"
  | "bulkUpN"
  | "bulkDownN"
  | "latency"
  | "connRate"
  | "integrity";

/** Providers that the targets are about. */
const SUBJECTS: ProviderName[] = ["sockets", "sockets-compiled", "sockets-tuned", "sockets-base"];
/** How the "met?" column names each subject. */
const SHORT: Partial<Record<ProviderName, string>> = {
  sockets: "src",
  "sockets-compiled": "bin",
  "sockets-tuned": "tuned",
  "sockets-base": "base",
};

type Results = Partial<Record<ProviderName, ProviderResult>>;

interface Row {
  label: string;
  unit: string;
  /** Which sample the figure comes from (for the generator-bound mark and the CPU table). */
  sample?: SampleKey;
  value(r: ProviderResult): number | undefined;
  format(v: number): string;
  /** Show the ratio to direct. */
  ratio?: boolean;
  /** Target text and check; absent: no target for this row. */
  target?: { text: string; met(v: number, all: Results, r: ProviderResult): boolean | undefined };
}

const num = (x: unknown): number | undefined => (typeof x === "number" && Number.isFinite(x) ? x : undefined);
const fig = (key: SampleKey, field: string) => (r: ProviderResult) => num(r.samples[key]?.result[field]);
const get = (all: Results, name: ProviderName, row: Row) => {
  const r = all[name];
  return r ? row.value(r) : undefined;
};

const fixed = (digits: number) => (v: number) =>
  v.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
const mib = (kib: number) => `${fixed(1)(kib / 1024)}`;

/** `v ≥ k × ref` when ref is known; undefined when it is not. */
const atLeast = (v: number, ref: number | undefined, k: number) =>
  ref === undefined ? undefined : v >= k * ref;
const atMost = (v: number, ref: number | undefined, k: number) =>
  ref === undefined ? undefined : v <= k * ref;
const all = (...checks: (boolean | undefined)[]) => {
  const known = checks.filter((c) => c !== undefined);
  return known.length === 0 ? undefined : known.every(Boolean);
};

function rows(nBulk: number, held: number): Row[] {
  const bulkRow = (key: SampleKey, label: string, conns: number): Row => {
    const row: Row = {
      label,
      unit: "Gbit/s",
      sample: key,
      value: fig(key, "gbps"),
      format: fixed(2),
      ratio: true,
    };
    row.target =
      conns === 1
        ? {
            text: "≥ 0.4× direct and ≥ 2× ssh",
            met: (v, results) =>
              all(atLeast(v, get(results, "direct", row), 0.4), atLeast(v, get(results, "ssh", row), 2)),
          }
        : { text: "≥ 2× ssh", met: (v, results) => atLeast(v, get(results, "ssh", row), 2) };
    return row;
  };
  const latRow = (field: "p50" | "p99"): Row => {
    const row: Row = {
      label: `latency ${field}, 64 B ping-pong`,
      unit: "µs",
      sample: "latency",
      value: fig("latency", field),
      format: fixed(0),
      ratio: true,
    };
    row.target =
      field === "p50"
        ? { text: "≤ 2.5× direct", met: (v, results) => atMost(v, get(results, "direct", row), 2.5) }
        : { text: "≤ ssh's p99", met: (v, results) => atMost(v, get(results, "ssh", row), 1) };
    return row;
  };
  const rateRow: Row = {
    label: "connection rate (connect + 64 B echo + close, 32 in flight)",
    unit: "conn/s",
    sample: "connRate",
    value: fig("connRate", "rate"),
    format: fixed(0),
    ratio: true,
  };
  rateRow.target = {
    text: "≥ 0.5× direct and ≥ 5× ssh",
    met: (v, results) =>
      all(atLeast(v, get(results, "direct", rateRow), 0.5), atLeast(v, get(results, "ssh", rateRow), 5)),
  };
  const mem = (f: (m: MemoryFigures) => number) => (r: ProviderResult) =>
    r.memory ? f(r.memory) : undefined;
  return [
    bulkRow("bulkUp1", "bulk, 1 connection, visitor → service", 1),
    bulkRow("bulkDown1", "bulk, 1 connection, service → visitor", 1),
    bulkRow("bulkUpN", `bulk, ${nBulk} connections, visitor → service`, nBulk),
    bulkRow("bulkDownN", `bulk, ${nBulk} connections, service → visitor`, nBulk),
    latRow("p50"),
    latRow("p99"),
    rateRow,
    {
      label: "connection p99 (connect → echo received)",
      unit: "ms",
      sample: "connRate",
      value: (r) => {
        const v = fig("connRate", "p99")(r);
        return v === undefined ? undefined : v / 1000;
      },
      format: fixed(2),
      ratio: true,
    },
    { label: "tunnel RSS idle", unit: "MiB", value: mem((m) => m.idleKiB), format: mib },
    {
      label: `tunnel RSS with ${held.toLocaleString("en-US")} visitors open`,
      unit: "MiB",
      value: mem((m) => m.heldKiB),
      format: mib,
    },
    {
      label: "memory per open idle visitor connection",
      unit: "KiB",
      value: mem((m) => m.kibPerConn),
      format: fixed(1),
      target: { text: "≤ 16 KiB (server + client)", met: (v) => v <= 16 },
    },
    {
      label: "tunnel RSS after they closed (% of idle)",
      unit: "MiB",
      value: mem((m) => m.afterKiB),
      format: mib,
      target: { text: "back within 10% of idle", met: (_v, _a, r) => r.memory?.returned },
    },
  ];
}

/** The header row and separator of a markdown table. */
function tableHead(header: string[]): string[] {
  return [`| ${header.join(" | ")} |`, `| ${header.map(() => "---").join(" | ")} |`];
}

function integrityCell(r: ProviderResult): string {
  if (r.skipped) return "skipped";
  const s = r.samples.integrity;
  if (!s) return r.errors.integrity ? "failed" : "—";
  return `${s.result.ok}/${s.result.conns} match`;
}

const GEN_BOUND = 80;
const NOISE = 25;

/** CPU used meanwhile by anything outside the benchmark's processes (other users, kernel threads), % of a core. */
export function othersPct(s: Sample): number {
  return s.machinePct - s.cpu.reduce((a, c) => a + c.pct, 0);
}

/** True when processes outside the benchmark stayed below the noise mark during the sample. */
export function isQuiet(s: Sample): boolean {
  return othersPct(s) < NOISE;
}

/** True when the load generator's busiest thread was ≥ 80% of a core: the figure may be generator-bound. */
function generatorBound(s: Sample | undefined): boolean {
  return (s?.cpu.find((c) => c.role === "loadgen")?.busiestThreadPct ?? 0) >= GEN_BOUND;
}

function cell(row: Row, r: ProviderResult | undefined, direct: number | undefined): string {
  if (!r) return "";
  if (r.skipped) return "skipped";
  const v = row.value(r);
  if (v === undefined) {
    const failed = (row.sample && r.errors[row.sample]) || (!row.sample && r.errors.memory);
    return failed ? "failed" : "—";
  }
  let text = row.format(v);
  if (row.ratio && direct !== undefined && direct > 0 && r.name !== "direct")
    text += ` (${fixed(2)(v / direct)}×)`;
  if (row.label.includes("after they closed") && r.memory)
    text += ` (${fixed(0)((r.memory.afterKiB / r.memory.idleKiB) * 100)}%)`;
  const sample = row.sample ? r.samples[row.sample] : undefined;
  if (generatorBound(sample)) text += " ᵍ";
  if (sample && !isQuiet(sample)) text += " ⁿ";
  return text;
}

function verdict(row: Row, results: Results): string {
  if (!row.target) return "";
  const parts: string[] = [];
  for (const name of SUBJECTS) {
    const r = results[name];
    if (!r || r.skipped) continue;
    const v = row.value(r);
    const met = v === undefined ? undefined : row.target.met(v, results, r);
    parts.push(`${SHORT[name]}: ${met === undefined ? "n/a" : met ? "yes" : "**no**"}`);
  }
  return parts.join(", ");
}

/** The main table: one row per figure, one column per provider, the target and whether it is met. */
export function markdownTable(results: Results, order: ProviderName[], nBulk: number, held: number): string {
  const ran = order.filter((n) => results[n]);
  const header = [
    "figure",
    "unit",
    ...ran,
    "target",
    "met? (src = bun *.ts, bin = compiled, tuned = both with MIMALLOC_PURGE_DELAY=-1)",
  ];
  const lines = tableHead(header);
  for (const row of rows(nBulk, held)) {
    const direct = get(results, "direct", row);
    const cells = ran.map((n) => cell(row, results[n], direct));
    lines.push(
      `| ${[row.label, row.unit, ...cells, row.target?.text ?? "", verdict(row, results)].join(" | ")} |`,
    );
  }
  const measured = ran.some((n) => results[n]?.samples.integrity !== undefined);
  const integrityOk = ran.every((n) => {
    const r = results[n] as ProviderResult;
    return (
      r.skipped !== undefined ||
      (r.samples.integrity && r.samples.integrity.result.ok === r.samples.integrity.result.conns)
    );
  });
  lines.push(
    `| integrity, sha256 per connection | | ${ran.map((n) => integrityCell(results[n] as ProviderResult)).join(" | ")} | every hash matches, every provider | ${!measured ? "n/a" : integrityOk ? "yes" : "**no**"} |`,
  );
  return lines.join("\n");
}

/**
 * Each subject's timed figures as a ratio to `mux-floor`'s in the same run (for latency and the
 * connection p99, lower is better): how much of what the tunnel's topology allows the tunnel keeps.
 * Empty when the floor did not run.
 */
export function floorTable(results: Results, nBulk: number, held: number): string {
  return referenceTable(results, "mux-floor", nBulk, held);
}

/**
 * Each subject's figures as a ratio to `reference`'s in the same run (timed figures, and with
 * `memory` the memory rows too; for latency, the connection p99 and memory lower is better). Empty
 * when the reference did not run.
 */
export function referenceTable(
  results: Results,
  reference: ProviderName,
  nBulk: number,
  held: number,
  memory = false,
): string {
  const ref = results[reference];
  if (!ref || ref.skipped) return "";
  const subjects = SUBJECTS.filter((n) => results[n] && !results[n]?.skipped);
  const header = ["figure", `${reference}`, ...subjects.map((n) => `${n} (÷ ${reference})`)];
  const lines = tableHead(header);
  for (const row of rows(nBulk, held)) {
    if (!row.ratio && !(memory && row.unit !== "")) continue;
    if (row.label.includes("after they closed")) continue;
    const base = row.value(ref);
    const cells = subjects.map((n) => {
      const v = row.value(results[n] as ProviderResult);
      if (v === undefined) return "—";
      return base === undefined || base <= 0 ? row.format(v) : `${row.format(v)} (${fixed(2)(v / base)}×)`;
    });
    lines.push(
      `| ${[`${row.label} (${row.unit})`, base === undefined ? "—" : row.format(base), ...cells].join(" | ")} |`,
    );
  }
  return lines.join("\n");
}

const CPU_ROWS: { key: SampleKey; label: string }[] = [
  { key: "bulkUp1", label: "bulk 1 conn ↑" },
  { key: "bulkDown1", label: "bulk 1 conn ↓" },
  { key: "bulkUpN", label: "bulk N conns ↑" },
  { key: "bulkDownN", label: "bulk N conns ↓" },
  { key: "latency", label: "latency" },
  { key: "connRate", label: "connection rate" },
  { key: "integrity", label: "integrity" },
];

function cpuCell(s: Sample | undefined): string {
  if (!s) return "—";
  const parts = s.cpu
    .filter((c) => c.pct >= 1)
    .sort((a, b) => b.pct - a.pct)
    .map(
      (c) =>
        `${c.role} ${c.pct.toFixed(0)}${c.busiestThreadPct < c.pct - 5 ? ` (${c.busiestThreadPct.toFixed(0)})` : ""}`,
    );
  const other = othersPct(s);
  if (other >= 5) parts.push(`other ${other.toFixed(0)}`);
  return `${parts.join(", ")} → ${boundBy(s)}`;
}

const CORES = cpus().length;

/**
 * Names what bounds a measurement: a saturated thread (≥ 75% of a core), else the cores busy (≥ 75% of
 * all of them: CPU-bound as a whole), else nothing saturated: bound by wake-ups and hand-offs (latency).
 */
export function boundBy(s: Sample): string {
  const busiest = [...s.cpu].sort((a, b) => b.busiestThreadPct - a.busiestThreadPct)[0];
  if (busiest && busiest.busiestThreadPct >= 75) return `**${busiest.role}** thread`;
  const ours = s.cpu.reduce((a, c) => a + c.pct, 0);
  const busy = Math.max(s.machinePct, ours);
  if (busy >= CORES * 100 * 0.75) return `**cores busy** (${busy.toFixed(0)}% of ${CORES * 100}%)`;
  return "nothing saturated (hand-offs)";
}

/** CPU table: per measurement and provider, % of one core for each process (busiest thread) and the bound. */
export function cpuTable(results: Results, order: ProviderName[]): string {
  const ran = order.filter((n) => results[n] && !results[n]?.skipped);
  const header = ["measurement", ...ran];
  const lines = tableHead(header);
  for (const { key, label } of CPU_ROWS)
    lines.push(`| ${[label, ...ran.map((n) => cpuCell(results[n]?.samples[key]))].join(" | ")} |`);
  return lines.join("\n");
}

/** Notes under the table: skipped providers, failures, generator-bound marks, memory details. */
export function footnotes(results: Results, order: ProviderName[]): string[] {
  const notes: string[] = [
    `ᵍ = the load generator's busiest thread was ≥ ${GEN_BOUND}% of a core during this figure: it may be generator-bound (the real limit is higher).`,
    `ⁿ = processes outside the benchmark (or kernel threads) used ≥ ${NOISE}% of a core during this figure: noisy.`,
  ];
  for (const name of order) {
    const r = results[name];
    if (!r) continue;
    if (r.skipped) notes.push(`${name}: skipped: ${r.skipped}`);
    for (const [what, error] of Object.entries(r.errors)) notes.push(`${name}: ${what} failed: ${error}`);
    const m = r.memory;
    if (m) {
      const roles = Object.entries(m.perRole)
        .map(([role, v]) => `${role} ${mib(v.idleKiB)} → ${mib(v.heldKiB)} → ${mib(v.afterKiB)} MiB`)
        .join("; ");
      let note = `${name} memory (idle → ${m.held} open → closed): ${roles}; settled after ${m.settleSeconds.toFixed(1)} s`;
      if (m.dropped) note += `; **${m.dropped} held connections were dropped by the tunnel**`;
      if (m.streamsAfter) note += `; **${m.streamsAfter} streams still open after every visitor closed**`;
      notes.push(note);
    }
    if (r.processes) notes.push(`${name} processes measured: ${r.processes}`);
  }
  return notes;
}
