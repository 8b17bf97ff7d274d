/**
 * Node links: how one node of a cluster carries a visitor to the node whose client holds the name or
 * port. A link is the tunnel protocol itself (PROTOCOL.md): a WebSocket to the other node's control
 * port at {@link NODE_LINK_PATH}, authenticated with the cluster's secret, with the same frames,
 * windows and half-close as a client's connection. The dialling node opens one stream per visitor
 * (OPEN's `target` names the tunnel); the other node splices it onto a new stream of the holding
 * client's session. A pair of nodes shares one link: the node whose name sorts first dials, and both ends
open streams over it (the dialler's ids below 2^31, the other's from 2^31 up).
 * @module
 */

import { deadAfter, Liveness } from "../../liveness.ts";
import { describeError, type Logger } from "../../log.ts";
import type { Budget } from "../../relay/budget.ts";
import { type DatagramHandler, Mux } from "../../relay/mux.ts";
import { SendWatch } from "../../relay/send-watch.ts";
import { type SpliceSocket, spliceOnto } from "../../relay/splice.ts";
import type { RelaySocket, Stream } from "../../relay/stream.ts";
import type { OpenFrame } from "../../wire/codec.ts";
import {
  AUTH_HEADER,
  type Hello,
  NODE_HEADER,
  NODE_LINK_PATH,
  parseControl,
  ResetCode,
  type StreamKind,
  SUBPROTOCOL,
} from "../../wire/protocol.ts";

/** A node as the cluster knows it: its name and where the others reach its control port. */
export interface LinkPeer {
  name: string;
  url: string;
}

/** A link pings this often and is dead after three silent intervals (a frozen or vanished node). */
const LINK_HEARTBEAT_MS = 1000;
/** Error codes of a refused certificate. */
const TLS_CODES = /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|TLS|SSL|HOSTNAME|ALTNAME/i;
/** Most a link waits between two dials of a node that does not answer. */
const MAX_REDIAL_MS = 2000;

/** Stream ids each end of a link gives the streams it opens: halves that never meet. */
const DIALLER_IDS = { first: 1, last: 0x7fffffff };
const ACCEPTOR_IDS = { first: 0x80000000, last: 0xffffffff };

/** What a node does with a stream another node opened: hand it to the tunnel named by its target. */
export type RemoteAcceptor = (target: string, kind: StreamKind, socket: SpliceSocket) => Stream | string;

/**
 * Makes the UDP flow table of a link's multiplexer (server/udp-mirror.ts), once per connection:
 * `dialler` says which half of the flow ids this end gives, `queued` reads the bytes waiting on its
 * WebSocket. `gone()` is called when that connection is lost.
 */
export type LinkDatagrams = (
  mux: Mux,
  dialler: boolean,
  queued: () => number,
) => DatagramHandler & { gone(): void };

/** Either end of a link, as the node uses it to carry visitors. */
export interface NodeLink {
  /** True while visitors can be carried over it. */
  readonly up: boolean;
  /** Streams open on it now (both ways). */
  readonly streams: number;
  /** Those streams. */
  openStreams(): Iterable<Stream>;
  /**
   * Carries a visitor's socket to the peer (undefined while the link is down); `visitor`: its address
   * and the public address it connected to (OPEN's `remote` and `local`).
   */
  open(kind: StreamKind, target: string, visitor: VisitorAddresses, socket: RelaySocket): Stream | undefined;
  /** Closes the link for good. */
  close(): void;
}

/** A visitor's address and the public address it connected to, as OPEN carries them (`ip:port`). */
export interface VisitorAddresses {
  remote: string;
  local?: string;
}

/** Opens a stream for a visitor on `mux`: an OPEN naming `target`, then the visitor's socket. */
function openOn(
  mux: Mux,
  kind: StreamKind,
  target: string,
  visitor: VisitorAddresses,
  socket: RelaySocket,
): Stream {
  const stream = mux.createStream();
  mux.sendOpen(stream, kind, 0, { remote: visitor.remote, local: visitor.local, target });
  stream.attach(socket);
  return stream;
}

/** The peer opened a stream: splice it onto the local tunnel its target names, or reset it. */
function acceptOn(mux: Mux, frame: OpenFrame, accept: RemoteAcceptor): void {
  const stream = mux.acceptStream(frame.stream);
  const target = frame.meta.target;
  if (target === undefined) {
    stream.reset(ResetCode.Protocol, "OPEN on a node link names no target");
    return;
  }
  const carried = spliceOnto(
    stream,
    frame.meta.remote,
    (socket) => accept(target, frame.kind as StreamKind, socket),
    frame.meta.local,
  );
  if (typeof carried === "string") stream.reset(ResetCode.ConnectFailed, carried);
}

/** A node's link to one other node: dialled, kept up, redialled while that node is alive. */
export class OutboundLink implements NodeLink {
  private ws: WebSocket | null = null;
  private mux: Mux | null = null;
  private closed = false;
  private attempts = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;
  /** When the link last came up (ms since the epoch), 0 while down. */
  upSince = 0;

  /**
   * @param ca PEM certificate(s) a `wss://` peer's certificate is checked against (`--cluster-ca`);
   *   absent: the system's CAs.
   */
  constructor(
    readonly peer: LinkPeer,
    /** This node's name, told to the peer. */
    private readonly self: string,
    private readonly secret: string,
    private readonly accept: RemoteAcceptor,
    private readonly log: Logger,
    private readonly ca?: string,
    private readonly datagrams?: LinkDatagrams,
  ) {
    this.dial();
  }

  /** The UDP flow table of the connection up now (see {@link LinkDatagrams}). */
  private flows: (DatagramHandler & { gone(): void }) | undefined;

  /** True while visitors can be carried over it. */
  get up(): boolean {
    return this.mux !== null;
  }

  /** Streams open on it now. */
  get streams(): number {
    return this.mux?.streams.size ?? 0;
  }

  /** Those streams. */
  openStreams(): Iterable<Stream> {
    return this.mux?.streams.values() ?? [];
  }

  /**
   * Carries a visitor's socket to the peer: a new stream whose OPEN names `target`. Undefined when
   * the link is down (the caller refuses the visitor).
   */
  open(kind: StreamKind, target: string, visitor: VisitorAddresses, socket: RelaySocket): Stream | undefined {
    const mux = this.mux;
    return mux === null ? undefined : openOn(mux, kind, target, visitor, socket);
  }

  /** Closes the link for good (the node left the cluster, or this one shuts down). */
  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.ws?.close(1001, "node leaving");
    this.down();
  }

  private dial(): void {
    if (this.closed) return;
    const url = new URL(NODE_LINK_PATH, this.peer.url.endsWith("/") ? this.peer.url : `${this.peer.url}/`);
    const headers = { [AUTH_HEADER]: `Bearer ${this.secret}`, [NODE_HEADER]: this.self };
    // Bun's client takes the CA as connect.ts gives it for clients (`tls`, outside the DOM's types).
    const tls = this.ca !== undefined && url.protocol === "wss:" ? { tls: { ca: this.ca } } : {};
    let ws: WebSocket;
    try {
      ws = new WebSocket(url.href, { protocols: [SUBPROTOCOL], headers, ...tls } as unknown as string[]);
    } catch (error) {
      this.log.warn(`cluster: cannot dial node ${this.peer.name} at ${url.href}: ${describeError(error)}`);
      this.redial();
      return;
    }
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    const liveness = new Liveness();
    let heartbeat: ReturnType<typeof setInterval> | undefined;
    ws.addEventListener("message", (event) => {
      liveness.heard();
      try {
        if (typeof event.data !== "string")
          this.mux?.receive(new Uint8Array(event.data as ArrayBuffer), true);
        else if (this.mux === null) this.greeted(ws, parseControl(event.data) as Hello);
      } catch (error) {
        this.log.warn(`cluster: link to ${this.peer.name} broke: ${describeError(error)}`);
        ws.close(1002, "protocol error");
      }
    });
    ws.addEventListener("ping", () => liveness.heard());
    ws.addEventListener("pong", () => liveness.heard());
    ws.addEventListener("open", () => {
      heartbeat = setInterval(() => {
        if (liveness.silence(Date.now()) <= deadAfter(LINK_HEARTBEAT_MS)) return ws.ping();
        this.log.warn(`cluster: node ${this.peer.name} silent for 3 s: link dropped`);
        ws.terminate();
        onGone();
      }, LINK_HEARTBEAT_MS);
    });
    const queue = new SendWatch(ws, (blocked) => this.mux?.setBlocked(blocked));
    const send = (frame: Uint8Array) => {
      ws.send(frame);
      queue.sent();
    };
    this.sendFrame = send;
    let gone = false;
    const onGone = () => {
      if (gone) return;
      gone = true;
      clearInterval(heartbeat);
      queue.stop();
      if (this.ws === ws) {
        this.ws = null;
        this.down();
        this.redial();
      }
    };
    ws.addEventListener("close", (event) => {
      if (this.mux !== null || this.attempts === 0)
        this.log.info(`cluster: link to node ${this.peer.name} closed (${event.code})`);
      // A wss:// link that never came up: the WebSocket does not say why; a certificate is the usual one.
      if (this.mux === null && this.attempts === 0 && url.protocol === "wss:") void this.explainTls(url);
      onGone();
    });
  }

  private sendFrame: (frame: Uint8Array) => void = () => {};

  /** Logs once why TLS to the peer fails, if it does (the WebSocket reports only a close). */
  private async explainTls(url: URL): Promise<void> {
    const https = new URL("/health", url.href.replace(/^wss:/, "https:"));
    try {
      await fetch(https, {
        tls: this.ca === undefined ? {} : { ca: this.ca },
        signal: AbortSignal.timeout(2000),
      } as RequestInit);
    } catch (error) {
      const code = (error as { code?: unknown }).code;
      if (typeof code !== "string" || !TLS_CODES.test(code)) return;
      const hint =
        this.ca === undefined ? "trust its CA with --cluster-ca FILE" : "--cluster-ca does not hold its CA";
      this.log.warn(
        `cluster: node ${this.peer.name}'s certificate (${url.host}) was refused: ${describeError(error)} (${code}); ${hint}`,
      );
    }
  }

  /** The peer's hello: the link is up with its settings. */
  private greeted(ws: WebSocket, hello: Hello): void {
    if (hello.type !== "hello") throw new Error(`expected hello, got '${hello.type}'`);
    const mux: Mux = new Mux(null, { ...hello, streamIds: DIALLER_IDS }, (frame) =>
      acceptOn(mux, frame, this.accept),
    );
    mux.start((frame) => this.sendFrame(frame));
    this.flows = this.datagrams?.(mux, true, () => ws.bufferedAmount);
    mux.datagrams = this.flows;
    this.mux = mux;
    this.attempts = 0;
    this.upSince = Date.now();
    if (this.ws === ws) this.log.info(`cluster: link to node ${this.peer.name} up`);
  }

  /** Every stream over the link is lost with it (their visitors are closed). */
  private down(): void {
    this.flows?.gone();
    this.flows = undefined;
    this.mux?.destroyAll();
    this.mux = null;
    this.upSince = 0;
  }

  private redial(): void {
    if (this.closed) return;
    this.attempts++;
    const delay = Math.min(MAX_REDIAL_MS, 100 * 2 ** Math.min(this.attempts, 5));
    this.timer = setTimeout(() => this.dial(), delay);
  }
}

/**
 * What the control port's WebSocket handlers drive for a connection that is no client session: a link
 * another node opened ({@link InboundLink}), or a client's standby connection (standby.ts).
 */
export interface LinkEndpoint {
  /** Who is at the other end, for logs. */
  readonly remote: string;
  attach(ws: LinkSocket): void;
  onMessage(message: string | Uint8Array): void;
  onDrain(): void;
  /** A ping or pong arrived. */
  heard(): void;
  onClose(): void;
  close(): void;
}

/** The minimal WebSocket a node's inbound link is served on (the control port's own, ws-server.ts). */
export interface LinkSocket {
  send(message: string | Uint8Array): number;
  getBufferedAmount(): number;
  close(code?: number, reason?: string): void;
  /** Stops reading the link (its receive budget is spent) until {@link LinkSocket.resume}. */
  pause(): void;
  resume(): void;
  /** Drops the connection at once (the peer went silent). */
  terminate(): void;
}

/** Bytes queued past which an inbound link's streams stop reading (as a client session's). */
const INBOUND_HIGH_WATER = 4 * 1024 * 1024;

/**
 * A link another node opened to this one: its streams become visitors of this node's tunnels, and this
 * node carries its own visitors for that node's tunnels over it.
 */
export class InboundLink implements NodeLink, LinkEndpoint {
  readonly mux: Mux;
  private ws: LinkSocket | null = null;
  /** Heard from the dialling node (it pings every second). */
  private readonly liveness = new Liveness();
  private watch: ReturnType<typeof setInterval> | undefined;
  /** Closed for good (before or after its WebSocket opened). */
  private ended = false;

  /**
   * @param settings this node's hello (windows, frame size), announced to the dialling node.
   * @param accept hands each stream to the local tunnel its OPEN names.
   */
  constructor(
    private readonly settings: Omit<Hello, "type" | "session" | "secret" | "resumed">,
    private readonly accept: RemoteAcceptor,
    private readonly log: Logger,
    /** The dialling node's address, for logs. */
    readonly remote: string,
    /** The server's memory budgets: a link counts as one client against them. */
    budgets?: { perClient: number; received: Budget; sent: Budget },
    /** Told once when the link is gone. */
    private readonly onGone?: (link: InboundLink) => void,
    datagrams?: LinkDatagrams,
  ) {
    this.mux = new Mux(
      null,
      { ...settings, streamIds: ACCEPTOR_IDS },
      (frame) => acceptOn(this.mux, frame, this.accept),
      budgets && {
        limit: budgets.perClient,
        shared: budgets,
        // Bytes from the other node wait for slow clients: stop reading the link rather than hold more.
        onReceivePressure: (over) => {
          if (over) this.ws?.pause();
          else this.ws?.resume();
        },
      },
    );
    this.flows = datagrams?.(this.mux, false, () => this.ws?.getBufferedAmount() ?? 0);
    this.mux.datagrams = this.flows;
  }

  /** The link's UDP flow table (see {@link LinkDatagrams}). */
  private readonly flows: (DatagramHandler & { gone(): void }) | undefined;

  /** The WebSocket is open: greet, go live. */
  attach(ws: LinkSocket): void {
    if (this.ended) {
      ws.close(1001, "link replaced");
      return;
    }
    this.ws = ws;
    const hello: Hello = { type: "hello", ...this.settings, session: "", secret: "", resumed: false };
    ws.send(JSON.stringify(hello));
    this.mux.start((frame) => {
      const sent = ws.send(frame);
      if (sent === -1 && ws.getBufferedAmount() > INBOUND_HIGH_WATER) this.mux.setBlocked(true);
    });
    this.liveness.restart();
    // The dialling node pings every second: three silent seconds and it is frozen or gone.
    this.watch = setInterval(() => {
      if (this.liveness.silence(Date.now()) <= deadAfter(LINK_HEARTBEAT_MS)) return;
      this.log.warn(`cluster: link from ${this.remote} silent for 3 s: dropped`);
      ws.terminate();
      this.onClose();
    }, LINK_HEARTBEAT_MS);
  }

  /** True while the link is open. */
  get up(): boolean {
    return this.ws !== null;
  }

  /** Streams open on it now (both ways). */
  get streams(): number {
    return this.mux.streams.size;
  }

  /** Those streams. */
  openStreams(): Iterable<Stream> {
    return this.mux.streams.values();
  }

  /** Carries a visitor of this node to the dialling node's tunnel `target`. */
  open(kind: StreamKind, target: string, visitor: VisitorAddresses, socket: RelaySocket): Stream | undefined {
    return this.ws === null ? undefined : openOn(this.mux, kind, target, visitor, socket);
  }

  /** Anything from the dialling node (a frame, a ping) shows it alive. */
  heard(): void {
    this.liveness.heard();
  }

  /** Closes the link (the node left the cluster, or this one shuts down). */
  close(): void {
    this.ws?.close(1001, "node leaving");
    this.onClose();
  }

  /** A message from the dialling node: frames only (it says nothing in text after the upgrade). */
  onMessage(message: string | Uint8Array): void {
    this.liveness.heard();
    try {
      if (typeof message === "string") throw new Error("text message on a node link");
      this.mux.receive(message, true);
    } catch (error) {
      this.log.warn(`cluster: link from ${this.remote} broke: ${describeError(error)}`);
      this.ws?.close(1002, "protocol error");
    }
  }

  /** The WebSocket drained: streams read again. */
  onDrain(): void {
    this.mux.setBlocked(false);
  }

  /** The link is gone: its visitors with it. */
  onClose(): void {
    if (this.ended) return;
    this.ended = true;
    clearInterval(this.watch);
    this.watch = undefined;
    this.ws = null;
    this.flows?.gone();
    this.mux.destroyAll();
    this.onGone?.(this);
  }
}
