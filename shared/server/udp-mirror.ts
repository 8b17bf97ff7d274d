/**
 * UDP tunnels across a cluster: every node opens a UDP tunnel's public port (a "UDP mirror") while
 * another node holds its lease, and carries each visitor's datagrams over the node link to the holder.
 *
 * ```text
 * visitor ─udp─▶ node A (mirror) ══FLOW_OPEN/DATAGRAM══▶ node B (holder) ──session──▶ client
 * ```
 *
 * A link carries the same three frames a client's connection does (PROTOCOL.md §5a): FLOW_OPEN names
 * the lease (`target`, as a stream's OPEN does) and the visitor's address, once per flow; DATAGRAM
 * carries each datagram whole, both ways; FLOW_CLOSE ends a flow from either side. Both ends of a link
 * open flows (each mirrors the other's ports), so flow ids are split as stream ids are: the dialler's
 * below 2^31, the other end's from 2^31 up. The holder keys such a flow by link and id (not by the
 * visitor's address), so replies go back over the link and leave from the mirror's public port, from
 * the address the visitor sent to.
 *
 * UDP's rules hold on the link too: a datagram that finds the link's WebSocket with more than
 * {@link UDP_QUEUE_BOUND} bytes queued is dropped and counted, never queued; a flow idle for
 * `--udp-idle-timeout` ends on the mirror (FLOW_CLOSE to the holder), and the holder's own idle sweep
 * or eviction ends it on both. A link that goes down ends its flows at both ends; the next datagram of
 * the visitor opens a new one (to wherever the lease is by then).
 * @module
 */

import type { udp } from "bun";
import { formatHost, unmappedAddress } from "../args.ts";
import type { Logger } from "../log.ts";
import type { DatagramHandler, Mux } from "../relay/mux.ts";
import { growReceiveBuffer } from "../udp-buffer.ts";
import type { DatagramFrame, FlowCloseFrame, FlowOpenFrame } from "../wire/codec.ts";
import { FlowCloseCode } from "../wire/protocol.ts";
import type { LeaseKey } from "./cluster/directory.ts";
import type { ClusterUdpHooks } from "./cluster/node.ts";
import {
  addUdpCounters,
  newUdpCounters,
  UDP_QUEUE_BOUND,
  type UdpCounters,
  type UdpFlow,
  type UdpPort,
  type UdpSettings,
} from "./udp-port.ts";

/** Flow ids each end of a link gives the flows it opens (as stream ids: halves that never meet). */
const DIALLER_FLOWS = { first: 1, last: 0x7fffffff };
const ACCEPTOR_FLOWS = { first: 0x80000000, last: 0xffffffff };

/** Where a mirror's new flow goes: the holder's node and the lease to name, or why nowhere now. */
export type UdpRoute = { node: string; target: LeaseKey } | "offline";

/** What the cluster's UDP part asks of its node and namespace. */
export interface ClusterUdpOptions {
  /** Bind address of public ports. */
  host: string;
  /** Where a new flow of UDP port `port` goes now (the node's lease view). */
  route(port: number): UdpRoute;
  /** The local UDP port serving lease `target` (held here), or why not. */
  place(target: LeaseKey): UdpPort | string;
  /** `--udp-idle-timeout` and `--udp-max-flows` now. */
  settings(): UdpSettings;
  /** Whether a local UDP tunnel listens on `port` (then no mirror is opened on it). */
  listensOn(port: number): boolean;
  /** Where closed mirrors' counts and drops no flow can be named for are added (the server's totals). */
  closed: UdpCounters;
  log: Logger;
}

/** A visitor address of a mirror, carried over one link. */
interface MirrorFlow {
  readonly id: number;
  readonly mirror: UdpMirror;
  readonly link: LinkFlows;
  readonly address: string;
  readonly remotePort: number;
  readonly key: string;
  /** The mirror's tick at its last datagram either way. */
  seen: number;
}

/**
 * One link connection's UDP flows: the ones this node's mirrors opened toward the peer (`outgoing`,
 * ids from this end's half) and the ones the peer opened toward this node's tunnels (`incoming`).
 */
export class LinkFlows implements DatagramHandler {
  readonly outgoing = new Map<number, MirrorFlow>();
  readonly incoming = new Map<number, UdpFlow>();
  private readonly ids: { first: number; last: number };
  private nextId: number;
  private ended = false;

  constructor(
    /** The peer node's name. */
    readonly peer: string,
    readonly mux: Mux,
    dialler: boolean,
    /** Bytes queued on the link's WebSocket now. */
    readonly queued: () => number,
    private readonly owner: ClusterUdp,
  ) {
    this.ids = dialler ? DIALLER_FLOWS : ACCEPTOR_FLOWS;
    this.nextId = this.ids.first;
  }

  /** True while datagrams can travel on it. */
  get live(): boolean {
    return !this.ended && this.mux.isLive;
  }

  /** A fresh id from this end's half, never one in use. */
  allocate(): number {
    const { first, last } = this.ids;
    let id = this.nextId;
    while (this.outgoing.has(id)) id = id >= last ? first : id + 1;
    this.nextId = id >= last ? first : id + 1;
    return id;
  }

  private mine(id: number): boolean {
    return id >= this.ids.first && id <= this.ids.last;
  }

  /** The peer's mirror opened a flow toward a tunnel of this node. */
  onFlowOpen(frame: FlowOpenFrame): void {
    const id = frame.stream;
    const target = frame.meta.target as LeaseKey | undefined;
    if (this.mine(id) || this.incoming.has(id) || target === undefined) {
      this.mux.sendFlowClose(id, FlowCloseCode.Gone);
      return;
    }
    const port = this.owner.options.place(target);
    if (typeof port === "string") {
      this.owner.counters.drops.offline++;
      this.mux.sendFlowClose(id, FlowCloseCode.Gone);
      return;
    }
    const remote = frame.meta.remote;
    const colon = remote.lastIndexOf(":");
    const ip = (colon < 0 ? remote : remote.slice(0, colon)).replace(/^\[|\]$/g, "");
    let open = true;
    const relay = {
      send: (payload: Uint8Array) => {
        if (!this.live) return "offline" as const;
        if (this.queued() > UDP_QUEUE_BOUND) return "backpressure" as const;
        this.mux.sendDatagram(id, payload);
        return true as const;
      },
      closed: () => {
        if (!open) return;
        open = false;
        if (this.incoming.get(id) === flow) this.incoming.delete(id);
        if (this.live) this.mux.sendFlowClose(id, FlowCloseCode.Gone);
      },
    };
    const flow = port.openRelayed(`~${this.peer}#${id}`, ip, remote, relay);
    if (typeof flow === "string") {
      this.mux.sendFlowClose(id, FlowCloseCode.Gone);
      return;
    }
    this.incoming.set(id, flow);
  }

  /** A datagram: a reply for one of this node's mirror flows, or a visitor's toward a tunnel here. */
  onDatagram(frame: DatagramFrame): void {
    const id = frame.stream;
    if (this.mine(id)) {
      const flow = this.outgoing.get(id);
      if (flow !== undefined) flow.mirror.toVisitor(flow, frame.payload);
      return;
    }
    const flow = this.incoming.get(id);
    if (flow === undefined) {
      this.owner.counters.drops.unknown_flow++;
      this.mux.sendFlowClose(id, FlowCloseCode.Gone);
      return;
    }
    flow.port.forward(flow, frame.payload);
  }

  /** The other end ended a flow (idle there, its tunnel gone, its mirror closed). */
  onFlowClose(frame: FlowCloseFrame): void {
    const id = frame.stream;
    if (this.mine(id)) {
      const flow = this.outgoing.get(id);
      if (flow !== undefined) flow.mirror.forget(flow, false);
      return;
    }
    const flow = this.incoming.get(id);
    if (flow === undefined) return;
    this.incoming.delete(id);
    flow.port.forget(flow, FlowCloseCode.Gone);
  }

  /** The connection is lost: every flow over it ends here (the peer ends its own). */
  gone(): void {
    if (this.ended) return;
    this.ended = true;
    for (const flow of [...this.outgoing.values()]) flow.mirror.forget(flow, false);
    for (const flow of [...this.incoming.values()]) flow.port.forget(flow, FlowCloseCode.Gone);
    this.incoming.clear();
    this.owner.detach(this);
  }
}

/** A public UDP port this node opens for a tunnel another node holds. */
export class UdpMirror {
  /** Flows by visitor address (`address port`), least recently active first (as UdpPort's). */
  private readonly byAddress = new Map<string, MirrorFlow>();
  private last: MirrorFlow | undefined;
  private tick = 0;
  private readonly every: number;
  private readonly sweeper: ReturnType<typeof setInterval>;
  readonly counters = newUdpCounters();

  constructor(
    private readonly socket: udp.Socket<"buffer">,
    private readonly owner: ClusterUdp,
  ) {
    const every = Math.min(1000, Math.max(25, owner.options.settings().idleMs / 4));
    this.every = every;
    this.sweeper = setInterval(() => this.sweep(), every);
    this.sweeper.unref?.();
  }

  /** The public port. */
  get port(): number {
    return this.socket.port;
  }

  /** Flows open now. */
  get flowCount(): number {
    return this.byAddress.size;
  }

  /** A visitor's datagram: over the link to the holder, or dropped and counted. */
  fromVisitor(data: Uint8Array, remotePort: number, address: string, truncated: boolean): void {
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
        const opened = this.open(key, address, remotePort);
        if (typeof opened === "string") {
          counters.drops[opened]++;
          return;
        }
        flow = opened;
      }
      this.last = flow;
    }
    const link = flow.link;
    if (!link.live) {
      this.forget(flow, false);
      counters.drops.offline++;
      return;
    }
    if (flow.seen !== this.tick) this.touch(flow);
    if (link.queued() > UDP_QUEUE_BOUND) {
      counters.drops.backpressure++;
      return;
    }
    link.mux.sendDatagram(flow.id, data);
    counters.datagramsIn++;
    counters.bytesIn += data.length;
  }

  private open(key: string, address: string, remotePort: number): MirrorFlow | "offline" {
    const route = this.owner.options.route(this.port);
    if (route === "offline") return "offline";
    const link = this.owner.linkTo(route.node);
    if (link === undefined || !link.live) return "offline";
    if (this.byAddress.size >= this.owner.options.settings().maxFlows) {
      const oldest = this.byAddress.values().next().value;
      if (oldest !== undefined) {
        this.counters.evicted++;
        this.forget(oldest, true);
      }
    }
    const flow: MirrorFlow = {
      id: link.allocate(),
      mirror: this,
      link,
      address,
      remotePort,
      key,
      seen: this.tick,
    };
    this.byAddress.set(key, flow);
    link.outgoing.set(flow.id, flow);
    this.counters.flows++;
    const remote = `${formatHost(unmappedAddress(address))}:${remotePort}`;
    link.mux.sendFlowOpen(flow.id, 0, { remote, target: route.target });
    return flow;
  }

  private touch(flow: MirrorFlow): void {
    flow.seen = this.tick;
    this.byAddress.delete(flow.key);
    this.byAddress.set(flow.key, flow);
  }

  /** A reply from the holder: to the visitor, from this public port. */
  toVisitor(flow: MirrorFlow, payload: Uint8Array): void {
    if (flow.seen !== this.tick) this.touch(flow);
    let sent = false;
    try {
      sent = this.socket.send(payload, flow.remotePort, flow.address);
    } catch {
      // A visitor address gone, EMSGSIZE: counted below.
    }
    if (!sent) {
      this.counters.drops.send_failed++;
      return;
    }
    this.counters.datagramsOut++;
    this.counters.bytesOut += payload.length;
  }

  /** Forgets a flow; with `tell`, the holder hears it (FLOW_CLOSE) and ends its side. */
  forget(flow: MirrorFlow, tell: boolean): void {
    if (this.byAddress.get(flow.key) === flow) this.byAddress.delete(flow.key);
    if (this.last === flow) this.last = undefined;
    if (flow.link.outgoing.get(flow.id) !== flow) return;
    flow.link.outgoing.delete(flow.id);
    if (tell && flow.link.live) flow.link.mux.sendFlowClose(flow.id, FlowCloseCode.Idle);
  }

  private sweep(): void {
    const tick = ++this.tick;
    const idleTicks = Math.max(1, Math.round(this.owner.options.settings().idleMs / this.every));
    for (const flow of this.byAddress.values()) {
      if (tick - flow.seen <= idleTicks) break;
      this.counters.idled++;
      this.forget(flow, true);
    }
  }

  /** Closes the socket; every flow ends (the holder is told). */
  close(): void {
    clearInterval(this.sweeper);
    this.socket.close();
    for (const flow of [...this.byAddress.values()]) this.forget(flow, true);
  }
}

/** A node's UDP mirrors and the UDP flows on its links (see the module comment). */
export class ClusterUdp implements ClusterUdpHooks {
  private readonly mirrors = new Map<number, UdpMirror>();
  /** Ports whose mirror is being bound now (Bun binds UDP asynchronously). */
  private readonly binding = new Set<number>();
  /** The flow table of each peer's link connection up now. */
  private readonly links = new Map<string, LinkFlows>();
  /** Counts of closed mirrors and of datagrams no flow could be named for (the server's totals). */
  readonly counters: UdpCounters;
  private closed = false;

  constructor(readonly options: ClusterUdpOptions) {
    this.counters = options.closed;
  }

  /** The flow table maker for each new connection of the link to node `peer` (cluster/link.ts). */
  datagrams(peer: string): (mux: Mux, dialler: boolean, queued: () => number) => LinkFlows {
    return (mux, dialler, queued) => {
      const flows = new LinkFlows(peer, mux, dialler, queued, this);
      this.links.set(peer, flows);
      return flows;
    };
  }

  /** Whether a local UDP tunnel listens on `port`. */
  listensOn(port: number): boolean {
    return this.options.listensOn(port);
  }

  /** A link connection's flows ended. */
  detach(flows: LinkFlows): void {
    if (this.links.get(flows.peer) === flows) this.links.delete(flows.peer);
  }

  /** The UDP flows of the link to `peer` now, if one is up. */
  linkTo(peer: string): LinkFlows | undefined {
    return this.links.get(peer);
  }

  /** Opens (wanted) or closes the mirror of UDP port `port`. */
  mirror(port: number, wanted: boolean, holder: string | undefined): void {
    if (this.closed) return;
    const mirror = this.mirrors.get(port);
    if (!wanted) {
      if (mirror !== undefined) this.unmirror(port);
      return;
    }
    if (mirror !== undefined || this.binding.has(port)) return;
    this.binding.add(port);
    let opened: UdpMirror | undefined;
    Bun.udpSocket({
      hostname: this.options.host,
      port,
      socket: {
        data: (_socket, data, remotePort, address, flags) =>
          opened?.fromVisitor(data, remotePort, address, flags.truncated),
        error: () => {},
      },
    }).then(
      async (socket) => {
        await growReceiveBuffer(socket);
        // Unwanted meanwhile (a local tunnel took the port, or the lease went): let go at once.
        if (!this.binding.delete(port) || this.closed) {
          socket.close();
          return;
        }
        opened = new UdpMirror(socket, this);
        this.mirrors.set(port, opened);
      },
      (error: unknown) => {
        this.binding.delete(port);
        this.options.log.warn(
          `cluster: cannot open port ${port}/udp for node ${holder}'s tunnel here: ${(error as Error).message}`,
        );
      },
    );
  }

  /** Lets go of a UDP port's mirror (a local tunnel wants it, or no other node holds it). */
  unmirror(port: number): void {
    this.binding.delete(port);
    const mirror = this.mirrors.get(port);
    if (mirror === undefined) return;
    this.mirrors.delete(port);
    mirror.close();
    addUdpCounters(this.counters, mirror.counters);
  }

  /** Mirrors open now. */
  get size(): number {
    return this.mirrors.size;
  }

  /** The open mirrors, for /health and /metrics (their counts and flows). */
  mirrorList(): UdpMirror[] {
    return [...this.mirrors.values()];
  }

  /** Closes every mirror (the node leaves). */
  close(): void {
    this.closed = true;
    for (const port of [...this.mirrors.keys()]) this.unmirror(port);
    this.binding.clear();
  }
}
