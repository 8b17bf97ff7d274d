/**
 * The server's metrics: what `GET /metrics` on the admin listener says in Prometheus text format, and
 * what the dashboard's JSON API lists (clients, tunnels). Named after what operators already scrape
 * (frp's client, proxy, connection and traffic counts; cloudflared's requests and responses by code).
 *
 * Nothing here runs per byte. Gauges are read from the sessions when scraped; byte counts are the
 * streams' own sequence numbers ({@link Stream.bytesSent}, {@link Stream.bytesReceived}), added up once
 * when a visitor's stream closes and read from the open streams on each scrape; the rest are counted
 * once per visitor, per HTTP response, per failed authentication, per resume or per dead client. The
 * exposition is written by hand: a dozen families need no library, and prom-client's registry, label
 * maps and async collect would cost more than the strings they produce.
 * @module
 */

import { readdirSync } from "node:fs";
import packageJson from "../../package.json" with { type: "json" };
import type { Stream } from "../relay/stream.ts";
import { PROTOCOL_VERSION } from "../wire/protocol.ts";
import type { AcmeStats } from "./acme/manager.ts";
import type { ClusterStats } from "./cluster/node.ts";
import type { CountsSource, TunnelCounts } from "./history.ts";
import type { Tunnel } from "./namespace/holding.ts";
import type { Session } from "./session.ts";
import { UDP_DROP_REASONS, type UdpStats } from "./udp-port.ts";
import { SINGLE_KEY_USER } from "./users.ts";

/** The kinds of tunnel, as the `type` label names them. */
export type TunnelType = "tcp" | "http" | "udp" | "tls";

/** Upper bounds (seconds) of the HTTP request duration histogram's buckets (`+Inf` is added). */
export const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30] as const;

/** This build's version (package.json), for `sockets_build_info`. */
export const VERSION: string = packageJson.version;

/** Bytes relayed, by direction: `in` from visitors toward local services, `out` back to visitors. */
export interface ByteCounts {
  in: number;
  out: number;
}

/** What the admin API says about one client (a session). */
export interface ClientInfo {
  /** The session id (public within the connection; useless without its secret). */
  id: string;
  /** The user whose token opened the session, when the server has users. */
  user?: string;
  /** The client's address (`HOST:PORT`), or "(disconnected)" while reserved. */
  address: string;
  /** `live`, or `reserved` while the client is away within its grace period. */
  state: "live" | "reserved";
  /** When the session began (ISO 8601). */
  since: string;
  /** Times the client resumed the session after losing its connection. */
  resumes: number;
  tunnels: number;
  /** Visitor connections open over all its tunnels. */
  visitors: number;
}

/** What the admin API says about one tunnel. */
export interface TunnelInfo {
  id: string;
  type: TunnelType;
  url: string;
  /** The HTTP tunnel's name, or the TCP or UDP tunnel's public port. */
  name: string;
  /** The session (client) holding it. */
  client: string;
  user?: string;
  /** Visitor connections open now (UDP: flows of its place). */
  visitors: number;
  /** Visitor connections since the tunnel opened (UDP: flows of its place). */
  visitorsTotal: number;
  /** Bytes relayed since the tunnel opened. */
  bytes: ByteCounts;
  /** Bytes per second over the last second or so (0 on the first look). */
  rate: ByteCounts;
  /** Whether it serves its port or name as a member of a pool (`--pool`). */
  pool: boolean;
}

/** Where the metrics read the sessions from, and how they label. */
export interface MetricsOptions {
  /** `--metrics-per-tunnel`: also series labelled by tunnel (their number grows with tunnels). */
  perTunnel?: boolean;
  /** The server's memory budgets, for `sockets_buffered_bytes`. */
  buffered?: () => { received: number; sent: number };
  /** With `--cluster`: the node's view of the cluster, for the `sockets_cluster_*` families. */
  cluster?: () => ClusterStats | undefined;
  /** With certificates: their count, soonest expiry and ACME orders, for `sockets_certificate*` and `sockets_acme_*`. */
  certificates?: () => AcmeStats | undefined;
  /** Places shared by pools and their members' count, for `sockets_pool_members`. */
  pools?: () => { place: string; members: number }[];
  /** UDP tunnels' flows, datagrams, bytes and drops, for the `sockets_udp_*` families. */
  udp?: () => UdpStats;
}

/** Totals of the visitors that already closed, per tunnel or per type. */
interface Closed {
  visitors: number;
  in: number;
  out: number;
}

/** One look at a tunnel's byte counts, for its rate. */
interface RateSample {
  at: number;
  in: number;
  out: number;
  rate: ByteCounts;
}

/** The shortest span (ms) over which a rate is measured; looks closer together reuse the last rate. */
const RATE_SPAN_MS = 900;

/** A tunnel's type, as its client asked for it. */
export function tunnelType(tunnel: Tunnel): TunnelType {
  return tunnel.kind;
}

/** The user a session belongs to, when the server has users (the single API key names nobody). */
function userOf(session: Session): string | undefined {
  const name = session.account?.name;
  return name === SINGLE_KEY_USER ? undefined : name;
}

/** Escapes a label value for the text format (backslash, double quote, line feed). */
export function escapeLabel(value: string): string {
  return value.replace(/[\\"\n]/g, (c) => (c === "\n" ? "\\n" : `\\${c}`));
}

/** `{a="1",b="2"}` for a label set, or "" for none. */
function labels(set: Record<string, string>): string {
  const parts = Object.entries(set).map(([name, value]) => `${name}="${escapeLabel(value)}"`);
  return parts.length === 0 ? "" : `{${parts.join(",")}}`;
}

/** Writes the text exposition family by family. */
class Exposition {
  private readonly lines: string[] = [];

  /** A family: its HELP and TYPE lines, then one sample per label set. */
  family(
    name: string,
    type: "counter" | "gauge" | "histogram",
    help: string,
    samples: [Record<string, string>, number][],
  ): void {
    this.lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [set, value] of samples) this.lines.push(`${name}${labels(set)} ${formatValue(value)}`);
  }

  /** A histogram without labels: cumulative buckets, `+Inf`, sum and count. */
  histogram(name: string, help: string, bounds: readonly number[], counts: number[], sum: number): void {
    this.lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} histogram`);
    let cumulative = 0;
    for (let i = 0; i < bounds.length; i++) {
      cumulative += counts[i] ?? 0;
      this.lines.push(`${name}_bucket{le="${bounds[i]}"} ${cumulative}`);
    }
    cumulative += counts[bounds.length] ?? 0;
    this.lines.push(`${name}_bucket{le="+Inf"} ${cumulative}`);
    this.lines.push(`${name}_sum ${formatValue(sum)}`, `${name}_count ${cumulative}`);
  }

  /** The exposition, ending with a line feed. */
  text(): string {
    return `${this.lines.join("\n")}\n`;
  }
}

/** A sample value: integers as such, others with up to 6 decimals. */
function formatValue(value: number): string {
  if (Number.isInteger(value)) return String(value);
  if (!Number.isFinite(value)) return value > 0 ? "+Inf" : value < 0 ? "-Inf" : "NaN";
  return String(Math.round(value * 1e6) / 1e6);
}

/** Open descriptors of this process (Linux), or undefined elsewhere. */
function openDescriptors(): number | undefined {
  try {
    return readdirSync("/proc/self/fd").length;
  } catch {
    return undefined;
  }
}

/** Every counter and gauge of one server; reads its sessions when asked. */
export class ServerMetrics {
  /** Upgrades refused for a missing or wrong API key (401) or a wrong resume secret or user (403). */
  authFailures = 0;
  /** Sessions a client resumed after losing its connection. */
  resumes = 0;
  /** Clients declared dead after three heartbeat intervals of silence. */
  heartbeatMisses = 0;
  /** Visitors refused before reaching a client, by reason (see {@link ServerMetrics.visitorRefused}). */
  readonly refused = new Map<string, number>();
  /** This build's version. */
  readonly version = VERSION;
  /** When the process started (ms since the epoch). */
  readonly startedAt = performance.timeOrigin;

  private readonly closedByType: Record<TunnelType, Closed> = {
    tcp: { visitors: 0, in: 0, out: 0 },
    http: { visitors: 0, in: 0, out: 0 },
    udp: { visitors: 0, in: 0, out: 0 },
    tls: { visitors: 0, in: 0, out: 0 },
  };
  /** Closed visitors per tunnel, while the tunnel lives (weakly held: nothing to forget). */
  private readonly closedByTunnel = new WeakMap<Tunnel, Closed>();
  /** HTTP responses by status code. */
  private readonly responses = new Map<number, number>();
  /** Per bucket of {@link DURATION_BUCKETS}, then one for larger durations. */
  private readonly durationCounts: number[] = new Array(DURATION_BUCKETS.length + 1).fill(0);
  private durationSum = 0;
  private rates = new Map<string, RateSample>();

  /**
   * @param sessions the server's sessions by id, live and reserved (read on each scrape).
   * @param options labelling and the budgets to report.
   */
  constructor(
    private readonly sessions: ReadonlyMap<string, Session>,
    private readonly options: MetricsOptions = {},
  ) {}

  /** A visitor's stream of `tunnel` closed: its bytes and itself join the closed totals. */
  visitorClosed(tunnel: Tunnel, stream: Stream): void {
    const bytesIn = stream.bytesSent;
    const bytesOut = stream.bytesReceived;
    const byType = this.closedByType[tunnelType(tunnel)];
    byType.visitors++;
    byType.in += bytesIn;
    byType.out += bytesOut;
    const byTunnel = this.closedByTunnel.get(tunnel);
    if (byTunnel === undefined) this.closedByTunnel.set(tunnel, { visitors: 1, in: bytesIn, out: bytesOut });
    else {
      byTunnel.visitors++;
      byTunnel.in += bytesIn;
      byTunnel.out += bytesOut;
    }
  }

  /**
   * One HTTP response went to a visitor: one the local service sent (with the seconds from its
   * request head arriving to its response head leaving), or a page the server answered itself (no
   * duration).
   */
  httpResponse(status: number, seconds?: number): void {
    this.responses.set(status, (this.responses.get(status) ?? 0) + 1);
    if (seconds === undefined) return;
    this.durationSum += seconds;
    let i = 0;
    while (i < DURATION_BUCKETS.length && seconds > (DURATION_BUCKETS[i] as number)) i++;
    this.durationCounts[i] = (this.durationCounts[i] ?? 0) + 1;
  }

  /** A visitor was refused before it reached a client (allow/deny lists, limits, client away). */
  visitorRefused(reason: string): void {
    this.refused.set(reason, (this.refused.get(reason) ?? 0) + 1);
  }

  /** A tunnel's totals: open visitors, all visitors and bytes, closed and open together. */
  private tunnelTotals(tunnel: Tunnel): Closed & { open: number } {
    const udp = tunnel.udp;
    if (udp !== undefined) {
      const c = udp.counters;
      return { open: udp.flowCount, visitors: c.flows, in: c.bytesIn, out: c.bytesOut };
    }
    const closed = this.closedByTunnel.get(tunnel);
    const totals = {
      open: tunnel.visitors.size,
      visitors: (closed?.visitors ?? 0) + tunnel.visitors.size,
      in: closed?.in ?? 0,
      out: closed?.out ?? 0,
    };
    for (const stream of tunnel.visitors) {
      totals.in += stream.bytesSent;
      totals.out += stream.bytesReceived;
    }
    return totals;
  }

  /** Every client, for `GET /api/clients`. */
  clients(): ClientInfo[] {
    return [...this.sessions.values()].map((session) => {
      let visitors = 0;
      for (const tunnel of session.tunnels.values()) visitors += tunnel.visitors.size;
      const info: ClientInfo = {
        id: session.id,
        address: session.remote,
        state: session.reserved ? "reserved" : "live",
        since: new Date(session.since).toISOString(),
        resumes: session.resumes,
        tunnels: session.tunnels.size,
        visitors,
      };
      const user = userOf(session);
      if (user !== undefined) info.user = user;
      return info;
    });
  }

  /**
   * Every tunnel's byte counts and open visitors, and the totals since the start (closed tunnels'
   * visitors included), for the dashboard's history; unlike {@link tunnels}, no rate state changes.
   */
  counts(): CountsSource {
    const total = {
      in: this.closedByType.tcp.in + this.closedByType.http.in,
      out: this.closedByType.tcp.out + this.closedByType.http.out,
      open: 0,
    };
    const tunnels: TunnelCounts[] = [];
    for (const session of this.sessions.values())
      for (const tunnel of session.tunnels.values()) {
        const totals = this.tunnelTotals(tunnel);
        tunnels.push({ id: tunnel.id, in: totals.in, out: totals.out, open: totals.open });
        total.open += totals.open;
        for (const stream of tunnel.visitors) {
          total.in += stream.bytesSent;
          total.out += stream.bytesReceived;
        }
      }
    return { tunnels, total };
  }

  /** Every tunnel, for `GET /api/tunnels`; rates from the previous look at least a second ago. */
  tunnels(now = Date.now()): TunnelInfo[] {
    const list: TunnelInfo[] = [];
    const rates = new Map<string, RateSample>();
    for (const session of this.sessions.values())
      for (const tunnel of session.tunnels.values()) {
        const totals = this.tunnelTotals(tunnel);
        const last = this.rates.get(tunnel.id);
        let sample: RateSample;
        if (last === undefined) sample = { at: now, in: totals.in, out: totals.out, rate: { in: 0, out: 0 } };
        else if (now - last.at < RATE_SPAN_MS) sample = last;
        else {
          const seconds = (now - last.at) / 1000;
          sample = {
            at: now,
            in: totals.in,
            out: totals.out,
            rate: {
              in: Math.round(Math.max(0, totals.in - last.in) / seconds),
              out: Math.round(Math.max(0, totals.out - last.out) / seconds),
            },
          };
        }
        rates.set(tunnel.id, sample);
        const type = tunnelType(tunnel);
        const info: TunnelInfo = {
          id: tunnel.id,
          pool: tunnel.pool,
          type,
          url: tunnel.url ?? "",
          name: tunnel.name ?? String(tunnel.port),
          client: session.id,
          visitors: totals.open,
          visitorsTotal: totals.visitors,
          bytes: { in: totals.in, out: totals.out },
          rate: sample.rate,
        };
        const user = userOf(session);
        if (user !== undefined) info.user = user;
        list.push(info);
      }
    this.rates = rates;
    return list;
  }

  /** The Prometheus text exposition (format 0.0.4) of every metric. */
  render(): string {
    const out = new Exposition();
    const types: TunnelType[] = ["tcp", "http", "tls"];
    const tunnels: Record<TunnelType, number> = { tcp: 0, http: 0, udp: 0, tls: 0 };
    const open: Record<TunnelType, number> = { tcp: 0, http: 0, udp: 0, tls: 0 };
    const total: Record<TunnelType, number> = {
      tcp: this.closedByType.tcp.visitors,
      http: this.closedByType.http.visitors,
      udp: 0,
      tls: this.closedByType.tls.visitors,
    };
    const bytes: Record<TunnelType, ByteCounts> = {
      tcp: { in: this.closedByType.tcp.in, out: this.closedByType.tcp.out },
      http: { in: this.closedByType.http.in, out: this.closedByType.http.out },
      udp: { in: 0, out: 0 },
      tls: { in: this.closedByType.tls.in, out: this.closedByType.tls.out },
    };
    let clients = 0;
    let reserved = 0;
    const perTunnel: { id: string; name: string; type: TunnelType; totals: Closed & { open: number } }[] = [];
    for (const session of this.sessions.values()) {
      if (session.reserved) reserved++;
      else clients++;
      for (const tunnel of session.tunnels.values()) {
        const type = tunnelType(tunnel);
        tunnels[type]++;
        open[type] += tunnel.visitors.size;
        total[type] += tunnel.visitors.size;
        for (const stream of tunnel.visitors) {
          bytes[type].in += stream.bytesSent;
          bytes[type].out += stream.bytesReceived;
        }
        if (this.options.perTunnel)
          perTunnel.push({
            id: tunnel.id,
            name: tunnel.name ?? String(tunnel.port),
            type,
            totals: this.tunnelTotals(tunnel),
          });
      }
    }
    out.family("sockets_build_info", "gauge", "This server's version and protocol; always 1.", [
      [{ version: VERSION, protocol: String(PROTOCOL_VERSION), bun: Bun.version }, 1],
    ]);
    out.family("sockets_clients", "gauge", "Clients connected now.", [[{}, clients]]);
    out.family(
      "sockets_reserved_sessions",
      "gauge",
      "Sessions of clients that dropped, kept for them within --grace.",
      [[{}, reserved]],
    );
    out.family(
      "sockets_tunnels",
      "gauge",
      "Tunnels, live and reserved, by type.",
      [...types, "udp" as const].map((type) => [{ type }, tunnels[type]]),
    );
    out.family(
      "sockets_visitor_connections",
      "gauge",
      "Visitor connections open now, by tunnel type.",
      types.map((type) => [{ type }, open[type]]),
    );
    out.family(
      "sockets_visitor_connections_total",
      "counter",
      "Visitor connections accepted into a tunnel, by tunnel type.",
      types.map((type) => [{ type }, total[type]]),
    );
    out.family(
      "sockets_bytes_total",
      "counter",
      "Bytes relayed between visitors and clients: in = from visitors, out = to visitors.",
      types.flatMap((type) => [
        [{ direction: "in", type }, bytes[type].in] as [Record<string, string>, number],
        [{ direction: "out", type }, bytes[type].out] as [Record<string, string>, number],
      ]),
    );
    const codes = [...this.responses.entries()].sort(([a], [b]) => a - b);
    out.family(
      "sockets_http_requests_total",
      "counter",
      "HTTP responses to visitors of HTTP tunnels, by status code (the server's own error pages included).",
      codes.map(([code, n]) => [{ code: String(code) }, n]),
    );
    out.histogram(
      "sockets_http_request_duration_seconds",
      "Seconds from an HTTP request's head arriving to its response's head leaving, through a tunnel.",
      DURATION_BUCKETS,
      this.durationCounts,
      this.durationSum,
    );
    out.family(
      "sockets_auth_failures_total",
      "counter",
      "Client upgrades refused for a wrong or missing API key (401) or resume secret (403).",
      [[{}, this.authFailures]],
    );
    out.family(
      "sockets_visitors_refused_total",
      "counter",
      "Visitors refused before reaching a client: denied (allow/deny lists), offline (client away), limit (max streams or visitors).",
      (["denied", "offline", "limit"] as const).map((reason) => [{ reason }, this.refused.get(reason) ?? 0]),
    );
    out.family("sockets_resumes_total", "counter", "Sessions resumed by a client that reconnected.", [
      [{}, this.resumes],
    ]);
    out.family(
      "sockets_heartbeat_misses_total",
      "counter",
      "Clients declared dead after 3 heartbeat intervals of silence.",
      [[{}, this.heartbeatMisses]],
    );
    const udp = this.options.udp?.();
    if (udp) {
      out.family(
        "sockets_udp_flows",
        "gauge",
        "UDP flows (visitor addresses) open now, over every UDP tunnel.",
        [[{}, udp.open]],
      );
      out.family(
        "sockets_udp_flows_total",
        "counter",
        "UDP flows opened, and closed for idleness or evicted at the most-flows limit.",
        [
          [{ event: "opened" }, udp.flows],
          [{ event: "idle" }, udp.idled],
          [{ event: "evicted" }, udp.evicted],
        ],
      );
      out.family(
        "sockets_udp_datagrams_total",
        "counter",
        "Datagrams relayed through UDP tunnels: in = from visitors, out = to visitors.",
        [
          [{ direction: "in" }, udp.datagramsIn],
          [{ direction: "out" }, udp.datagramsOut],
        ],
      );
      out.family(
        "sockets_udp_bytes_total",
        "counter",
        "Datagram payload bytes relayed through UDP tunnels: in = from visitors, out = to visitors.",
        [
          [{ direction: "in" }, udp.bytesIn],
          [{ direction: "out" }, udp.bytesOut],
        ],
      );
      out.family(
        "sockets_udp_drops_total",
        "counter",
        "Datagrams the server dropped, by reason (backpressure, offline, denied, send_failed, truncated, rate_limited, unknown_flow).",
        UDP_DROP_REASONS.map((reason) => [{ reason }, udp.drops[reason]]),
      );
    }
    const buffered = this.options.buffered?.();
    if (buffered)
      out.family(
        "sockets_buffered_bytes",
        "gauge",
        "Bytes the server holds for all clients: received = not yet written to visitors, sent = not yet acknowledged.",
        [
          [{ direction: "received" }, buffered.received],
          [{ direction: "sent" }, buffered.sent],
        ],
      );
    const certificates = this.options.certificates?.();
    if (certificates) {
      out.family(
        "sockets_certificates",
        "gauge",
        "Certificates the server holds (ACME's and --tls-cert's).",
        [[{}, certificates.certificates]],
      );
      if (certificates.soonestExpirySeconds !== undefined)
        out.family(
          "sockets_certificate_expiry_seconds",
          "gauge",
          "Seconds until the soonest certificate expiry (negative once past).",
          [[{}, certificates.soonestExpirySeconds]],
        );
      const { orders } = certificates;
      out.family(
        "sockets_acme_orders_total",
        "counter",
        "ACME certificate orders by result (refused: the order limits).",
        [
          [{ result: "issued" }, orders.issued],
          [{ result: "failed" }, orders.failed],
          [{ result: "refused" }, orders.refused],
        ],
      );
      const { revocation } = certificates;
      if (revocation !== undefined) {
        out.family(
          "sockets_certificates_revoked",
          "gauge",
          "Certificates held that their CA revoked (OCSP or CRL): none of them is served.",
          [[{}, revocation.revoked]],
        );
        out.family(
          "sockets_certificate_revocation_checks_total",
          "counter",
          "Revocation checks by answer (failed: no trustworthy answer in time; the certificate stays served).",
          Object.entries(revocation.checks).map(([result, n]) => [{ result }, n]),
        );
      }
      if (certificates.lastFailure !== undefined)
        out.family(
          "sockets_acme_last_failure_timestamp_seconds",
          "gauge",
          "When the last ACME order failed (Unix seconds); the log line and /health name it.",
          [[{}, Math.floor(Date.parse(certificates.lastFailure.at) / 1000)]],
        );
    }
    const pools = this.options.pools?.() ?? [];
    if (pools.length > 0)
      out.family(
        "sockets_pool_members",
        "gauge",
        "Members of each pool (clients that share a port or name with --pool).",
        pools.map(({ place, members }) => [{ place }, members]),
      );
    const cluster = this.options.cluster?.();
    if (cluster) {
      out.family("sockets_cluster_node_info", "gauge", "This node's name in its cluster; always 1.", [
        [{ node: cluster.node }, 1],
      ]);
      out.family("sockets_cluster_redis_up", "gauge", "1 while the node reaches the cluster's Redis.", [
        [{}, cluster.redis === "up" ? 1 : 0],
      ]);
      out.family("sockets_cluster_nodes", "gauge", "Nodes alive in the cluster, this one included.", [
        [{}, cluster.nodes.length],
      ]);
      out.family("sockets_cluster_leases", "gauge", "Names and ports leased: held here, or by other nodes.", [
        [{ holder: "here" }, cluster.held],
        [{ holder: "elsewhere" }, cluster.elsewhere],
      ]);
      const links = Object.entries(cluster.links);
      out.family(
        "sockets_cluster_link_up",
        "gauge",
        "1 while this node's link to another node is up.",
        links.map(([node, link]) => [{ node }, link.up ? 1 : 0]),
      );
      out.family(
        "sockets_cluster_link_streams",
        "gauge",
        "Visitors this node carries to another node now.",
        links.map(([node, link]) => [{ node }, link.streams]),
      );
    }
    if (this.options.perTunnel) {
      const labelsOf = (t: (typeof perTunnel)[number]) => ({ tunnel: t.id, name: t.name, type: t.type });
      out.family(
        "sockets_tunnel_visitor_connections",
        "gauge",
        "Visitor connections open now, per tunnel (--metrics-per-tunnel).",
        perTunnel.map((t) => [labelsOf(t), t.totals.open]),
      );
      out.family(
        "sockets_tunnel_visitor_connections_total",
        "counter",
        "Visitor connections since the tunnel opened, per tunnel (--metrics-per-tunnel).",
        perTunnel.map((t) => [labelsOf(t), t.totals.visitors]),
      );
      out.family(
        "sockets_tunnel_bytes_total",
        "counter",
        "Bytes relayed since the tunnel opened, per tunnel: in = from visitors, out = to visitors (--metrics-per-tunnel).",
        perTunnel.flatMap((t) => [
          [{ ...labelsOf(t), direction: "in" }, t.totals.in] as [Record<string, string>, number],
          [{ ...labelsOf(t), direction: "out" }, t.totals.out] as [Record<string, string>, number],
        ]),
      );
    }
    const memory = process.memoryUsage();
    const cpu = process.cpuUsage();
    out.family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", [
      [{}, memory.rss],
    ]);
    out.family("process_cpu_seconds_total", "counter", "User and system CPU time spent in seconds.", [
      [{}, (cpu.user + cpu.system) / 1e6],
    ]);
    out.family(
      "process_start_time_seconds",
      "gauge",
      "Start time of the process since the Unix epoch in seconds.",
      [[{}, Math.round(this.startedAt / 1000)]],
    );
    const fds = openDescriptors();
    if (fds !== undefined)
      out.family("process_open_fds", "gauge", "Number of open file descriptors.", [[{}, fds]]);
    return out.text();
  }
}
