/**
 * UDP tunnels, the client's side: each flow the server announces (FLOW_OPEN: one visitor's IP and
 * port) gets its own UDP socket connected to the local service, so the service sees one peer per
 * visitor and its replies, read from that socket, go back as DATAGRAM frames of that flow.
 *
 * UDP's rules: nothing waits and nothing is resent. Datagrams for a flow whose socket is still being
 * opened wait in a short queue ({@link CONNECTING_QUEUE} datagrams), past which they are dropped; a
 * reply that finds the WebSocket with more than {@link UDP_QUEUE_BOUND} bytes queued is dropped; so is
 * one that the local socket refuses. Each drop is counted by reason.
 *
 * Flows and their sockets outlive a WebSocket blip: while the connection is down, replies are dropped
 * (counted as `offline`) and the sockets stay open, so after the resume the service still sees the
 * same peer port. A flow ends when the server forgets it (FLOW_CLOSE), after `--udp-idle-timeout`
 * without a datagram either way (the server is told), when its tunnel closes, or with the session.
 * @module
 */

import type { udp } from "bun";
import type { Logger } from "../log.ts";
import type { DatagramHandler, Mux } from "../relay/mux.ts";
import type { DatagramFrame, FlowCloseFrame, FlowOpenFrame } from "../wire/codec.ts";
import { FlowCloseCode, ProtocolError } from "../wire/protocol.ts";
import type { NamedService } from "./options.ts";

/** Bytes queued on the WebSocket past which replies are dropped (as the server's bound, udp-port.ts). */
export const UDP_QUEUE_BOUND = 512 * 1024;

/** Datagrams a flow keeps while its local socket is being opened (one event-loop turn or so). */
export const CONNECTING_QUEUE = 64;

/** Why the client dropped a datagram. */
export const UDP_CLIENT_DROP_REASONS = [
  /** A reply found the WebSocket with more than {@link UDP_QUEUE_BOUND} bytes queued. */
  "backpressure",
  /** A reply came while the connection to the server was down. */
  "offline",
  /** The local socket refused a datagram (its send buffer full, or an error). */
  "local_busy",
  /** More than {@link CONNECTING_QUEUE} datagrams came before the flow's socket was open. */
  "connecting",
  /** A datagram for a flow this client does not have (the server was told). */
  "unknown_flow",
  /** A reply larger than the socket's receive buffer (the kernel cut it): never passed on cut. */
  "truncated",
] as const;

/** A {@link UDP_CLIENT_DROP_REASONS} entry. */
export type UdpClientDropReason = (typeof UDP_CLIENT_DROP_REASONS)[number];

/** What the client counts for its UDP tunnels: `in` toward local services, `out` back to visitors. */
export interface UdpClientCounters {
  datagramsIn: number;
  datagramsOut: number;
  bytesIn: number;
  bytesOut: number;
  /** Flows opened since start. */
  flows: number;
  drops: Record<UdpClientDropReason, number>;
}

/** One flow: a visitor's address on the server, a socket here. */
interface ClientFlow {
  readonly id: number;
  readonly ref: number;
  /** The visitor's address, for logs. */
  readonly remote: string;
  /** Undefined while being opened. */
  socket?: udp.ConnectedSocket<"buffer">;
  /** Datagrams that came while the socket was being opened (copies). */
  waiting: Uint8Array[];
  /** Datagrams of the WebSocket message being read, sent together by {@link UdpFlows.flush} (views). */
  batch: Uint8Array[];
  /** {@link UdpFlows} tick at the last datagram either way. */
  seen: number;
  closed: boolean;
}

/** What {@link UdpFlows} reads from its client. */
export interface UdpFlowsHost {
  /** The session's multiplexer now (a new session may bring a new one). */
  mux(): Mux;
  /** Bytes queued on the WebSocket now. */
  queued(): number;
  /** Milliseconds a flow may stay without a datagram either way. */
  idleMs: number;
  log: Logger;
}

/** The client's UDP flows, over all its UDP tunnels; the mux's handler for UDP frames. */
export class UdpFlows implements DatagramHandler {
  /** Open flows by id. */
  readonly flows = new Map<number, ClientFlow>();
  readonly counters: UdpClientCounters = {
    datagramsIn: 0,
    datagramsOut: 0,
    bytesIn: 0,
    bytesOut: 0,
    flows: 0,
    drops: Object.fromEntries(UDP_CLIENT_DROP_REASONS.map((r) => [r, 0])) as Record<
      UdpClientDropReason,
      number
    >,
  };
  /** Local service of each UDP tunnel, by the ref FLOW_OPEN frames carry. */
  private readonly targets = new Map<number, NamedService>();
  private tick = 0;
  /** Flows with datagrams in their {@link ClientFlow.batch}. */
  private readonly dirty: ClientFlow[] = [];
  private readonly idleTicks: number;
  private sweeper?: ReturnType<typeof setInterval>;
  private readonly every: number;

  constructor(private readonly host: UdpFlowsHost) {
    this.every = Math.min(1000, Math.max(25, host.idleMs / 4));
    this.idleTicks = Math.max(1, Math.round(host.idleMs / this.every));
  }

  /** A UDP tunnel is live: its flows go to `service`. */
  addTunnel(ref: number, service: NamedService): void {
    this.targets.set(ref, service);
    if (this.sweeper === undefined) {
      this.sweeper = setInterval(() => this.sweep(), this.every);
      this.sweeper.unref?.();
    }
  }

  /** A UDP tunnel closed: its flows and their sockets go with it (the server already forgot them). */
  removeTunnel(ref: number): void {
    this.targets.delete(ref);
    for (const flow of [...this.flows.values()]) if (flow.ref === ref) this.close(flow, 0);
  }

  /** Whether a tunnel ref is a UDP tunnel's. */
  has(ref: number): boolean {
    return this.targets.has(ref);
  }

  /** The session is over (a new one, or the client closes): every flow and socket goes, no frame. */
  destroyAll(): void {
    for (const flow of [...this.flows.values()]) this.close(flow, 0);
    this.targets.clear();
    clearInterval(this.sweeper);
    this.sweeper = undefined;
  }

  /** @inheritdoc */
  onFlowOpen(frame: FlowOpenFrame): void {
    const target = this.targets.get(frame.tunnel);
    if (target === undefined) throw new ProtocolError(`FLOW_OPEN for unknown UDP tunnel ${frame.tunnel}`);
    const old = this.flows.get(frame.stream);
    if (old !== undefined) this.close(old, 0); // the server forgot it and reused the id: its FLOW_CLOSE was lost
    const flow: ClientFlow = {
      id: frame.stream,
      ref: frame.tunnel,
      remote: frame.meta.remote,
      waiting: [],
      batch: [],
      seen: this.tick,
      closed: false,
    };
    this.flows.set(flow.id, flow);
    this.counters.flows++;
    Bun.udpSocket({
      connect: { hostname: target.host, port: target.port },
      socket: {
        data: (_socket, data, _port, _address, flags) => this.fromLocal(flow, data, flags.truncated),
        // ICMP "port unreachable" from a service that is not (yet) listening: UDP says no more.
        error: () => {},
      },
    }).then(
      (socket) => {
        if (flow.closed) {
          socket.close();
          return;
        }
        flow.socket = socket;
        for (const datagram of flow.waiting) this.toLocal(flow, socket, datagram);
        flow.waiting = [];
      },
      (error: unknown) => {
        this.host.log.warn(
          `UDP flow from ${flow.remote}: cannot open a socket to ${target.host}:${target.port}: ${(error as Error).message}`,
        );
        this.close(flow, FlowCloseCode.ConnectFailed);
      },
    );
  }

  /** @inheritdoc */
  onDatagram(frame: DatagramFrame): void {
    const flow = this.flows.get(frame.stream);
    if (flow === undefined) {
      this.counters.drops.unknown_flow++;
      this.host.mux().sendFlowClose(frame.stream, FlowCloseCode.Gone);
      return;
    }
    flow.seen = this.tick;
    if (flow.socket !== undefined) {
      // Held until the message is read: one sendmmsg per flow and message instead of one per datagram.
      if (flow.batch.push(frame.payload) === 1) this.dirty.push(flow);
    } else if (flow.waiting.length < CONNECTING_QUEUE) flow.waiting.push(frame.payload.slice());
    else this.counters.drops.connecting++;
  }

  /** @inheritdoc */
  onFlowClose(frame: FlowCloseFrame): void {
    const flow = this.flows.get(frame.stream);
    if (flow !== undefined) this.close(flow, 0);
  }

  /**
   * Sends the datagrams the last WebSocket message brought, each flow's with one `sendMany`
   * (sendmmsg). Called once the message is read: its datagrams are views into it.
   */
  flush(): void {
    const dirty = this.dirty;
    if (dirty.length === 0) return;
    const counters = this.counters;
    for (const flow of dirty) {
      const batch = flow.batch;
      flow.batch = [];
      const socket = flow.socket;
      if (socket === undefined || flow.closed) continue;
      if (batch.length === 1) {
        this.toLocal(flow, socket, batch[0] as Uint8Array);
        continue;
      }
      let sent = 0;
      try {
        sent = socket.sendMany(batch);
      } catch {
        // ECONNREFUSED from an earlier datagram: counted below.
      }
      for (let i = 0; i < batch.length; i++)
        if (i < sent) {
          counters.datagramsIn++;
          counters.bytesIn += (batch[i] as Uint8Array).length;
        } else counters.drops.local_busy++;
    }
    dirty.length = 0;
  }

  private toLocal(_flow: ClientFlow, socket: udp.ConnectedSocket<"buffer">, payload: Uint8Array): void {
    const counters = this.counters;
    let sent = false;
    try {
      sent = socket.send(payload);
    } catch {
      // ECONNREFUSED from an earlier datagram, EMSGSIZE: counted below.
    }
    if (!sent) {
      counters.drops.local_busy++;
      return;
    }
    counters.datagramsIn++;
    counters.bytesIn += payload.length;
  }

  /** A reply from the local service: back to the visitor as a DATAGRAM of its flow. */
  private fromLocal(flow: ClientFlow, data: Uint8Array, truncated: boolean): void {
    const counters = this.counters;
    if (truncated) {
      counters.drops.truncated++;
      return;
    }
    flow.seen = this.tick;
    const mux = this.host.mux();
    if (!mux.isLive) counters.drops.offline++;
    else if (this.host.queued() > UDP_QUEUE_BOUND) counters.drops.backpressure++;
    else {
      mux.sendDatagram(flow.id, data);
      counters.datagramsOut++;
      counters.bytesOut += data.length;
    }
  }

  /** Closes a flow's socket; with a code, the server is told (FLOW_CLOSE). */
  private close(flow: ClientFlow, code: number): void {
    if (flow.closed) return;
    flow.closed = true;
    flow.socket?.close();
    flow.waiting = [];
    flow.batch = [];
    if (this.flows.get(flow.id) === flow) this.flows.delete(flow.id);
    if (code !== 0) this.host.mux().sendFlowClose(flow.id, code);
  }

  /** Idle sweep (`--udp-idle-timeout`): flows quiet that long are closed and the server told. */
  private sweep(): void {
    const tick = ++this.tick;
    for (const flow of [...this.flows.values()])
      if (tick - flow.seen > this.idleTicks) this.close(flow, FlowCloseCode.Idle);
  }
}
