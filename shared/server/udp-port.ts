/**
 * UDP tunnels, the server's side: a UDP place's public socket and its flow table. Each visitor
 * address (IP and port) is a flow, given on its first datagram to one member tunnel of the place (the
 * namespace chooses, as for a TCP visitor: allow and deny lists, a live client, a pool's least loaded
 * member), with an id in that member's session. The first datagram announces the flow to the client
 * (FLOW_OPEN, with the visitor's address, once), then every datagram travels whole as one DATAGRAM
 * frame, both ways, and the client's replies leave from the public port to that visitor.
 *
 * UDP's rules, not TCP's: nothing waits for credit and nothing is resent. A datagram that finds the
 * client's WebSocket with more than {@link UDP_QUEUE_BOUND} bytes queued is dropped and counted (so
 * UDP never holds TCP streams behind a long queue, and memory stays bounded); so is one that arrives
 * while the client is away. A flow idle for `--udp-idle-timeout` is forgotten, and past
 * `--udp-max-flows` a new visitor takes the place of the least recently active flow; the client
 * hears of both (FLOW_CLOSE) and closes its socket for the flow.
 *
 * Counting is per datagram (a few integer additions), never per byte; the totals of closed tunnels are
 * folded into one server-wide {@link UdpTotals} for /metrics and /health.
 * @module
 */

import type { udp } from "bun";
import type { PortRange } from "../args.ts";
import { formatHost, unmappedAddress } from "../args.ts";
import type { DatagramHandler, Mux } from "../relay/mux.ts";
import { growReceiveBuffer } from "../udp-buffer.ts";
import type { DatagramFrame, FlowCloseFrame } from "../wire/codec.ts";
import { FlowCloseCode, ProtocolError } from "../wire/protocol.ts";
import { FIRST_UNPRIVILEGED_PORT, PortError, portBusy, portsToTry } from "./public-port.ts";

/**
 * Bytes queued on a client's WebSocket past which datagrams toward it are dropped: about 4 ms at
 * 500 Mbit/s, so a busy UDP flow adds little waiting to the TCP streams that share the WebSocket.
 */
export const UDP_QUEUE_BOUND = 512 * 1024;

/** Why a datagram was dropped (the `reason` label of `sockets_udp_drops_total`). */
export const UDP_DROP_REASONS = [
  /** The client's WebSocket had more than {@link UDP_QUEUE_BOUND} bytes queued. */
  "backpressure",
  /** The client was away (reconnecting, within its grace period), or no member of a pool was live. */
  "offline",
  /** The visitor's address is refused by the tunnel's or its user's allow and deny lists. */
  "denied",
  /** The kernel refused to send it to the visitor. */
  "send_failed",
  /** Larger than the receive buffer (the kernel cut it): never passed on cut. */
  "truncated",
  /** Over the port's `--udp-rate-limit` (visitors toward the client). */
  "rate_limited",
  /** From the client for a flow the server no longer has (idle, evicted): it was told. */
  "unknown_flow",
] as const;

/** A {@link UDP_DROP_REASONS} entry. */
export type UdpDropReason = (typeof UDP_DROP_REASONS)[number];

/** Datagram and byte counts: `in` from visitors toward clients, `out` back to visitors. */
export interface UdpCounters {
  datagramsIn: number;
  datagramsOut: number;
  bytesIn: number;
  bytesOut: number;
  /** Flows opened. */
  flows: number;
  /** Flows closed for idleness. */
  idled: number;
  /** Flows that gave way to a new one at the most-flows limit. */
  evicted: number;
  drops: Record<UdpDropReason, number>;
}

/** Zeroed {@link UdpCounters}. */
export function newUdpCounters(): UdpCounters {
  const drops = Object.fromEntries(UDP_DROP_REASONS.map((reason) => [reason, 0])) as Record<
    UdpDropReason,
    number
  >;
  return { datagramsIn: 0, datagramsOut: 0, bytesIn: 0, bytesOut: 0, flows: 0, idled: 0, evicted: 0, drops };
}

/** Adds `from` into `into`. */
export function addUdpCounters(into: UdpCounters, from: UdpCounters): void {
  into.datagramsIn += from.datagramsIn;
  into.datagramsOut += from.datagramsOut;
  into.bytesIn += from.bytesIn;
  into.bytesOut += from.bytesOut;
  into.flows += from.flows;
  into.idled += from.idled;
  into.evicted += from.evicted;
  for (const reason of UDP_DROP_REASONS) into.drops[reason] += from.drops[reason];
}

/** The server's UDP flow settings (`--udp-idle-timeout` in ms, `--udp-max-flows`, `--udp-rate-limit`). */
export interface UdpSettings {
  idleMs: number;
  maxFlows: number;
  /** Most bytes per second from visitors toward the client, per UDP port; 0 or absent: no limit. */
  rateBytes?: number;
}

/** The rate limit's bucket holds this many milliseconds of the rate (a burst's allowance). */
const RATE_BURST_MS = 20;

/** What `/health` says about UDP tunnels. */
export interface UdpStats extends UdpCounters {
  /** Flows open now, over every UDP tunnel. */
  open: number;
  /** `--udp-idle-timeout`, seconds. */
  idleTimeout: number;
  /** `--udp-max-flows`. */
  maxFlows: number;
  /** `--udp-rate-limit`, Mbit/s per tunnel; null: none. */
  rateLimit: number | null;
}

/** The server-wide UDP view: the closed places' counts plus every open port's. */
export function udpStats(
  settings: UdpSettings,
  closed: UdpCounters,
  ports: Iterable<{ readonly counters: UdpCounters; readonly flowCount: number }>,
): UdpStats {
  const sum = newUdpCounters();
  addUdpCounters(sum, closed);
  let open = 0;
  for (const port of ports) {
    addUdpCounters(sum, port.counters);
    open += port.flowCount;
  }
  const rate = settings.rateBytes ?? 0;
  return {
    ...sum,
    open,
    idleTimeout: settings.idleMs / 1000,
    maxFlows: settings.maxFlows,
    rateLimit: rate > 0 ? (rate * 8) / 1_000_000 : null,
  };
}

/** One member tunnel of a UDP place, as its flows see it: its ref and its session's flows. */
export interface UdpMember {
  /** The tunnel ref FLOW_OPEN frames carry. */
  readonly ref: number;
  readonly flows: UdpSessionFlows;
}

/** Where a new flow goes: a member, or why none (`denied`, `offline`). */
export type UdpChooser = (address: string) => UdpMember | "denied" | "offline";

/**
 * Where a relayed flow's replies go instead of the public socket: the node link its visitor's
 * datagrams came over (a cluster node that is not the holder received them: cluster/udp-link.ts).
 */
export interface FlowRelay {
  /** Sends a reply toward the visitor: true, or why it was dropped (counted here). */
  send(payload: Uint8Array): true | UdpDropReason;
  /** The flow was forgotten here (idle, evicted, its member gone, the port closed): tell the other node. */
  closed(): void;
}

/** One visitor address of a place, carried by one member. */
export interface UdpFlow {
  readonly id: number;
  readonly port: UdpPort;
  readonly member: UdpMember;
  /** The address as the socket reported it (what replies are sent to). */
  readonly address: string;
  readonly remotePort: number;
  readonly key: string;
  /** The port's tick at its last datagram either way (see {@link UdpPort.tick}). */
  seen: number;
  /** Set when the visitor reached another node: replies go back over the link, not the public socket. */
  readonly relay?: FlowRelay;
}

type Flow = UdpFlow;

/**
 * A session's UDP flows: one id space over all its UDP tunnels (the DATAGRAM frame names a flow, not a
 * tunnel), and the mux's handler for the client's FLOW_CLOSE and DATAGRAM frames.
 */
export class UdpSessionFlows implements DatagramHandler {
  /** Every open flow of the session by id. */
  readonly flows = new Map<number, Flow>();
  private nextId = 1;

  /**
   * @param mux the session's multiplexer (frames leave through its batcher).
   * @param queued bytes queued on the client's WebSocket now (0 without one).
   * @param unplaced where drops no tunnel can be named for are counted (the server's totals).
   */
  constructor(
    readonly mux: Mux,
    readonly queued: () => number,
    readonly unplaced: UdpCounters,
  ) {
    mux.datagrams = this;
  }

  /** A fresh flow id, never one in use (they wrap past 2^32 − 1). */
  allocate(): number {
    let id = this.nextId;
    while (this.flows.has(id)) id = id >= 0xffffffff ? 1 : id + 1;
    this.nextId = id >= 0xffffffff ? 1 : id + 1;
    return id;
  }

  /** @inheritdoc */
  onFlowOpen(): void {
    throw new ProtocolError("FLOW_OPEN from a client (only the server opens flows)");
  }

  /** @inheritdoc */
  onDatagram(frame: DatagramFrame): void {
    const flow = this.flows.get(frame.stream);
    if (flow === undefined) {
      // Crossed our FLOW_CLOSE, or its FLOW_OPEN was lost in a blip: the client forgets it too.
      this.unplaced.drops.unknown_flow++;
      this.mux.sendFlowClose(frame.stream, FlowCloseCode.Gone);
      return;
    }
    flow.port.toVisitor(flow, frame.payload);
  }

  /** @inheritdoc */
  onFlowClose(frame: FlowCloseFrame): void {
    const flow = this.flows.get(frame.stream);
    if (flow !== undefined) flow.port.forget(flow, 0);
  }
}

/** Where a UDP tunnel may listen (the same rules as a TCP tunnel's port: see public-port.ts). */
export interface UdpPortRequest {
  host: string;
  /** The port the client asked for, if any. */
  port?: number;
  /** Ranges to take a port from, in order (the server's, narrowed by the user's); `undefined`: any. */
  ranges: readonly (PortRange | undefined)[];
  /** The server's own ports. */
  own?: readonly number[];
}

/** A UDP place's public socket and flow table. */
export class UdpPort {
  /** This place's counts (folded into the server's totals when it closes). */
  readonly counters = newUdpCounters();
  /**
   * Open flows by visitor address (`address port`), least recently active first: a flow moves to the
   * end when it is first active in a tick, so eviction takes the first and the idle sweep stops at the
   * first flow that is not idle (a flood of new addresses at the limit costs O(1) per flow).
   */
  private readonly byAddress = new Map<string, Flow>();
  /** The flow of the last visitor datagram: a burst from one address skips the key and the lookup. */
  private last: Flow | undefined;
  /** `--udp-rate-limit`: bytes a visitor's datagram may still take now, and when they were counted. */
  private tokens = 0;
  private refilledAt = performance.now();
  /** Advances once per sweep: a flow's `seen` stamp costs no clock read per datagram. */
  private tick = 0;
  /** Milliseconds between sweeps (a tick), set from the idle timeout the port opened with. */
  private readonly every: number;
  private readonly sweeper: ReturnType<typeof setInterval>;
  private closed = false;

  private constructor(
    private readonly socket: udp.Socket<"buffer">,
    private readonly settings: () => UdpSettings,
    private readonly choose: UdpChooser,
  ) {
    const every = Math.min(1000, Math.max(25, settings().idleMs / 4));
    this.every = every;
    this.sweeper = setInterval(() => this.sweep(), every);
    this.sweeper.unref?.();
  }

  /**
   * Opens a tunnel's public UDP socket: on the port asked for, or the first free one of the ranges
   * (from a random place in each), or any the kernel picks. `settings` is read at each new flow and
   * each sweep (a reload applies at once); `choose` gives each new flow its member.
   * @throws {PortError} with a one-line message for the client.
   */
  static async open(
    request: UdpPortRequest,
    settings: () => UdpSettings,
    choose: UdpChooser,
  ): Promise<UdpPort> {
    let port: UdpPort | undefined;
    const socket = await bindUdp(request, {
      data: (_socket, data, remotePort, address, flags) =>
        port?.fromVisitor(data, remotePort, address, flags.truncated),
      error: () => {}, // ICMP errors about visitors that went away: UDP says nothing more
    });
    port = new UdpPort(socket, settings, choose);
    return port;
  }

  /** The public port. */
  get port(): number {
    return this.socket.port;
  }

  /** Flows open now. */
  get flowCount(): number {
    return this.byAddress.size;
  }

  /** A visitor's datagram: to the client as its flow's DATAGRAM, or dropped and counted. */
  private fromVisitor(data: Uint8Array, remotePort: number, address: string, truncated: boolean): void {
    const counters = this.counters;
    if (truncated) {
      counters.drops.truncated++;
      return;
    }
    let flow = this.last;
    if (flow === undefined || flow.remotePort !== remotePort || flow.address !== address) {
      const key = `${address} ${remotePort}`;
      flow = this.byAddress.get(key);
      if (flow === undefined) {
        const member = this.choose(address);
        if (typeof member === "string") {
          counters.drops[member]++;
          return;
        }
        flow = this.openFlow(key, address, remotePort, member);
      }
      this.last = flow;
    }
    this.forward(flow, data);
  }

  /**
   * A datagram of a flow whose visitor reached another node of the cluster, carried here over the node
   * link: its flow (opened on the first one, keyed by `key`, which names the link and its flow id),
   * or why it is dropped (counted). `remote` is the visitor's `ip:port`, `ip` alone decides the lists.
   */
  openRelayed(key: string, ip: string, remote: string, relay: FlowRelay): UdpFlow | UdpDropReason {
    const existing = this.byAddress.get(key);
    if (existing !== undefined) return existing;
    if (this.closed) return "offline";
    const member = this.choose(ip);
    if (typeof member === "string") {
      this.counters.drops[member]++;
      return member;
    }
    return this.openFlow(key, ip, 0, member, remote, relay);
  }

  /** A visitor's datagram of `flow` to its client: a DATAGRAM, or dropped and counted. */
  forward(flow: UdpFlow, data: Uint8Array): void {
    const counters = this.counters;
    // `--udp-rate-limit`: a token bucket, refilled (and the setting read) only when it runs short.
    if (this.tokens < data.length && !this.refill(data.length)) {
      counters.drops.rate_limited++;
      return;
    }
    this.tokens -= data.length;
    if (flow.seen !== this.tick) this.touch(flow);
    const session = flow.member.flows;
    const mux = session.mux;
    if (!mux.isLive) {
      counters.drops.offline++;
      return;
    }
    if (session.queued() > UDP_QUEUE_BOUND) {
      counters.drops.backpressure++;
      return;
    }
    mux.sendDatagram(flow.id, data);
    counters.datagramsIn++;
    counters.bytesIn += data.length;
  }

  private openFlow(
    key: string,
    address: string,
    remotePort: number,
    member: UdpMember,
    remote = `${formatHost(unmappedAddress(address))}:${remotePort}`,
    relay?: FlowRelay,
  ): Flow {
    if (this.byAddress.size >= this.settings().maxFlows) this.evictOne();
    const flow: Flow = {
      id: member.flows.allocate(),
      port: this,
      member,
      address,
      remotePort,
      key,
      seen: this.tick,
      relay,
    };
    this.byAddress.set(key, flow);
    member.flows.flows.set(flow.id, flow);
    this.counters.flows++;
    member.flows.mux.sendFlowOpen(flow.id, member.ref, { remote });
    return flow;
  }

  /**
   * Refills the rate limit's bucket for the time since the last refill; false when it still holds
   * fewer than `needed` bytes (the datagram is dropped). Without a limit the bucket is always full.
   */
  private refill(needed: number): boolean {
    const rate = this.settings().rateBytes ?? 0;
    if (rate <= 0) {
      this.tokens = Number.MAX_SAFE_INTEGER;
      return true;
    }
    const now = performance.now();
    const burst = Math.max(65_536, (rate * RATE_BURST_MS) / 1000);
    this.tokens = Math.min(burst, Math.max(0, this.tokens) + ((now - this.refilledAt) * rate) / 1000);
    this.refilledAt = now;
    return this.tokens >= needed;
  }

  /** A flow's first datagram in this tick: stamped, and moved to the end (most recently active). */
  private touch(flow: Flow): void {
    flow.seen = this.tick;
    this.byAddress.delete(flow.key);
    this.byAddress.set(flow.key, flow);
  }

  /** At the most-flows limit: the least recently active flow (the first) gives way. */
  private evictOne(): void {
    const oldest = this.byAddress.values().next().value;
    if (oldest === undefined) return;
    this.counters.evicted++;
    this.forget(oldest, FlowCloseCode.Evicted);
  }

  /** A datagram from the client for a flow of this tunnel: to its visitor, from the public port. */
  toVisitor(flow: Flow, payload: Uint8Array): void {
    if (flow.seen !== this.tick) this.touch(flow);
    const counters = this.counters;
    let sent = false;
    if (flow.relay !== undefined) {
      const relayed = flow.relay.send(payload);
      if (relayed !== true) {
        counters.drops[relayed]++;
        return;
      }
      sent = true;
    } else
      try {
        sent = this.socket.send(payload, flow.remotePort, flow.address);
      } catch {
        // EMSGSIZE toward an IPv6 visitor on a smaller path, a visitor address gone: counted below.
      }
    if (!sent) {
      counters.drops.send_failed++;
      return;
    }
    counters.datagramsOut++;
    counters.bytesOut += payload.length;
  }

  /** Forgets a flow; with a code, the client is told (FLOW_CLOSE) so it closes its socket too. */
  forget(flow: Flow, code: number): void {
    if (this.byAddress.get(flow.key) !== flow) return;
    this.byAddress.delete(flow.key);
    if (this.last === flow) this.last = undefined;
    flow.member.flows.flows.delete(flow.id);
    if (code !== 0) flow.member.flows.mux.sendFlowClose(flow.id, code);
    flow.relay?.closed();
  }

  /** A member left the place (a pool goes on): its flows are forgotten, no frame (its client knows). */
  forgetMember(member: UdpMember): void {
    for (const flow of [...this.byAddress.values()]) if (flow.member === member) this.forget(flow, 0);
  }

  /** Idle sweep: flows with no datagram either way for `--udp-idle-timeout` are forgotten. */
  private sweep(): void {
    const tick = ++this.tick;
    // Without a limit the bucket is "always full": a reload that sets one applies from the next sweep.
    if (this.tokens > Number.MAX_SAFE_INTEGER / 2 && (this.settings().rateBytes ?? 0) > 0) this.tokens = 0;
    const idleTicks = Math.max(1, Math.round(this.settings().idleMs / this.every));
    // Oldest first: the first flow that is not idle ends the walk.
    for (const flow of this.byAddress.values()) {
      if (tick - flow.seen <= idleTicks) break;
      this.counters.idled++;
      this.forget(flow, FlowCloseCode.Idle);
    }
  }

  /**
   * Closes the public socket and forgets every flow without a frame (the client forgets a closed
   * tunnel's flows itself); the counts join `closed` (the server's totals).
   */
  close(closed: UdpCounters): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.sweeper);
    this.socket.close();
    for (const flow of this.byAddress.values()) {
      flow.member.flows.flows.delete(flow.id);
      flow.relay?.closed();
    }
    this.byAddress.clear();
    this.last = undefined;
    addUdpCounters(closed, this.counters);
  }
}

/** Binds the public UDP socket as {@link UdpPort.open} says. */
async function bindUdp(
  request: UdpPortRequest,
  handler: udp.SocketHandler<"buffer">,
): Promise<udp.Socket<"buffer">> {
  const own = new Set(request.own ?? []);
  const bind = async (port: number) => {
    const socket = await Bun.udpSocket({ hostname: request.host, port, socket: handler });
    // A burst larger than the default buffer would be dropped during one slow event-loop turn.
    await growReceiveBuffer(socket);
    return socket;
  };
  const wanted = request.port;
  if (wanted !== undefined) {
    const at = request.ranges.findIndex((r) => r === undefined || (wanted >= r.min && wanted <= r.max));
    const first = request.ranges[0];
    if (at === -1 && first !== undefined)
      throw new PortError(
        "port_out_of_range",
        `port ${wanted} is outside the server's range ${first.min}-${first.max}`,
      );
    // As root, binding 53 succeeds: only the operator's --tcp-ports may hand privileged ports out.
    if ((at === -1 || request.ranges[at] === undefined) && wanted < FIRST_UNPRIVILEGED_PORT)
      throw new PortError(
        "port_out_of_range",
        `port ${wanted} is privileged (below ${FIRST_UNPRIVILEGED_PORT}); this server hands out ${FIRST_UNPRIVILEGED_PORT}-65535 unless started with --tcp-ports`,
      );
    if (own.has(wanted)) throw new PortError("port_taken", `port ${wanted}/udp is the server's own`);
    try {
      return await bind(wanted);
    } catch (error) {
      throw udpListenError(error, wanted);
    }
  }
  let last: unknown;
  for (const range of request.ranges) {
    if (range === undefined) {
      try {
        return await bind(0);
      } catch (error) {
        throw udpListenError(error, 0);
      }
    }
    for (const candidate of portsToTry(range, own))
      try {
        return await bind(candidate);
      } catch (error) {
        if (!portBusy(error)) throw udpListenError(error, candidate);
        last = error;
      }
  }
  const range = request.ranges[0];
  throw new PortError(
    "no_free_port",
    range === undefined
      ? `no free UDP port: ${String(last)}`
      : `no free UDP port in the server's range ${range.min}-${range.max}`,
  );
}

function udpListenError(error: unknown, port: number): PortError {
  const code = (error as { code?: string }).code;
  if (code === "EADDRINUSE")
    return new PortError("port_taken", `port ${port}/udp is already in use on the server`);
  if (code === "EACCES")
    return new PortError("listen_failed", `port ${port}/udp needs privileges the server lacks`);
  return new PortError("listen_failed", `cannot open port ${port}/udp: ${(error as Error).message}`);
}
