/**
 * The sockets wire protocol, version 3: constants and control-message types shared by server and client.
 *
 * Data travels in binary WebSocket frames (see `codec.ts`); rare control messages travel as JSON text
 * frames. The full description is in PROTOCOL.md.
 * @module
 */

/**
 * Protocol version spoken by this build. v3: credit is receiver-driven (the receiver grows a stream's
 * window with GROW frames and enforces exactly what it granted), PING/PONG measure the round trip, and
 * `hello` and `sync` carry window sizes.
 */
export const PROTOCOL_VERSION = 3;

/** WebSocket subprotocol that carries the version; a peer of another version gets a clear 426. */
export const SUBPROTOCOL = `sockets.v${PROTOCOL_VERSION}`;

/** Path on the control port where clients upgrade to a WebSocket. */
export const CONNECT_PATH = "/_sockets/connect";

/** Path on the control port where another node of a cluster opens its link (see PROTOCOL.md). */
export const NODE_LINK_PATH = "/_sockets/node";

/**
 * Path on the control port where a client of another node of the cluster keeps a standby connection:
 * it names its node in {@link NODE_HEADER}, and is closed with {@link CloseCode.MoveHere} when that node
 * leaves the cluster (PROTOCOL.md "Standby connections").
 */
export const STANDBY_PATH = "/_sockets/standby";

/** Request header with which a node opening a link names itself (its `--node-name`). */
export const NODE_HEADER = "sockets-node";

/** What a node's name (`--node-name`) may look like. */
export const NODE_NAME = /^[A-Za-z0-9._:-]{1,64}$/;

/** Request header that carries the API key (`Authorization: Bearer <key>`). */
export const AUTH_HEADER = "authorization";

/** Request header with which a reconnecting client claims its session: `<session id> <resume secret>`. */
export const RESUME_HEADER = "sockets-resume";

/** Binary frame types. The first byte of every binary WebSocket message. */
export const FrameType = {
  /** Server → client: a new visitor; payload names the tunnel, the visitor kind and its metadata. */
  Open: 1,
  /** Either way: stream bytes. Counts against the receiver's window. */
  Data: 2,
  /**
   * Either way: the receiver wrote this many more bytes into its socket. The sender forgets them (they
   * can no longer be lost) and may send as many new ones: its window slides.
   */
  Window: 3,
  /** Either way: the sender will send no more data on this stream (half-close, TCP FIN). */
  End: 4,
  /** Either way: abort the stream in both directions, with a code and a reason. */
  Reset: 5,
  /**
   * Either way: several small frames in one WebSocket message (stream id 0). Body: repeated
   * `length u16 | frame`. Saves a syscall and a wake-up per frame when many streams are busy.
   */
  Batch: 6,
  /**
   * Either way: the receiver enlarges the stream's window by this many bytes (it decides the window:
   * see stream.ts, auto-tuning). Windows never shrink.
   */
  Grow: 7,
  /** Either way, stream id 0: a round-trip probe; the peer answers PONG with the same 4-byte token. */
  Ping: 8,
  /** Either way, stream id 0: the answer to a PING, echoing its token. */
  Pong: 9,
  /**
   * Server → client, UDP tunnels: a new flow (a visitor's IP and port); the id field is the flow id.
   * Body as OPEN's without the kind: tunnel ref u32 | metadata `{"remote":"ip:port"}`.
   */
  FlowOpen: 10,
  /** Either way, UDP tunnels: one datagram of a flow, whole (0 to {@link MAX_DATAGRAM} bytes). */
  Datagram: 11,
  /** Either way, UDP tunnels: the sender forgot this flow (idle, evicted, tunnel closed); code u16. */
  FlowClose: 12,
} as const;

/** A binary frame type number. */
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

/** What kind of visitor a stream carries; new kinds need no new framing. */
export const StreamKind = {
  /** A raw TCP connection to a public port. */
  Tcp: 1,
  /** An HTTP connection routed by Host on the server's HTTP port; request heads carry X-Forwarded-*. */
  Http: 2,
} as const;

/** A stream kind number. */
export type StreamKind = (typeof StreamKind)[keyof typeof StreamKind];

/** Reset codes carried by RESET frames. */
export const ResetCode = {
  /** The socket on the sender's side closed abnormally (RST, error). */
  Aborted: 1,
  /** The client could not connect to its local service. */
  ConnectFailed: 2,
  /** A limit was reached (streams per tunnel, …). */
  Limit: 3,
  /** The tunnel or session is going away. */
  Shutdown: 4,
  /** The peer broke the stream's rules (e.g. sent past its window). */
  Protocol: 5,
  /** The visitor sent and received nothing for the server's `--visitor-idle-timeout`. */
  Idle: 6,
} as const;

/** Largest UDP payload over IPv4 (65,535 − 8 − 20): the largest datagram a DATAGRAM frame carries. */
export const MAX_DATAGRAM = 65_507;

/** Why a flow was closed (FLOW_CLOSE's code). A receiver treats a code it does not know as `Gone`. */
export const FlowCloseCode = {
  /** The flow is unknown or gone on the sender's side (also the answer to a DATAGRAM for an unknown flow). */
  Gone: 1,
  /** No datagram either way for the sender's idle timeout. */
  Idle: 2,
  /** The tunnel reached its most flows; this one, the least recently active, gave way. */
  Evicted: 3,
  /** The tunnel closed. */
  Shutdown: 4,
  /** The client could not open a socket toward its local service. */
  ConnectFailed: 5,
} as const;

/** Capabilities a server lists in `hello.features`; a client uses a feature only when listed. */
export const Feature = {
  /** UDP tunnels: `expose` with kind `udp`, and the FLOW_OPEN, DATAGRAM and FLOW_CLOSE frames. */
  Udp: "udp",
} as const;

/** WebSocket close codes used by sockets. */
export const CloseCode = {
  Normal: 1000,
  GoingAway: 1001,
  ProtocolError: 1002,
  PolicyViolation: 1008,
  InternalError: 1011,
  /** The session was taken over by a newer connection that resumed it. */
  Replaced: 4000,
  /** The client's credentials were revoked (its user's token removed or changed): do not retry. */
  Revoked: 4001,
  /** On a standby connection: the client's node left the cluster; connect here now (with its old session). */
  MoveHere: 4002,
} as const;

/** Fixed header length of every binary frame: type (1) + stream id (4). */
export const HEADER_LENGTH = 5;

/** Defaults the server announces in `hello`; both directions of every stream use them. */
export const DEFAULTS = {
  /**
   * Most a stream's window may grow to, in bytes (`--window`). Each receiver grants `initialWindow`
   * and grows it while its socket consumes a window within a few round trips (stream.ts), so this is
   * what one stream can reach on a long path: window / RTT (16 MiB: ~2.7 Gbit/s at 50 ms, ~670 Mbit/s
   * at 200 ms). Memory is bounded by the budgets (`--client-budget`, `--server-budget`), not by this
   * times the number of streams: growth stops where they say so.
   */
  window: 16 * 1024 * 1024,
  /**
   * Window every stream starts with, in each direction, granted without a round trip: the first bytes
   * leave at once. 1 MiB: ~170 Mbit/s at 50 ms before growth; a never-reading visitor pins at most this.
   */
  initialWindow: 1024 * 1024,
  /**
   * Largest DATA payload in one frame: Bun's largest socket read (uSockets' 512 KiB receive buffer), so
   * that a read is never split into two frames, two copies into the frame buffer and two sends (256 KiB
   * split most bulk reads: +8.5% on one connection up with server and client pinned to two CPUs).
   */
  maxFramePayload: 512 * 1024,
  /** Most concurrent streams (visitors) per tunnel. */
  maxStreamsPerTunnel: 4096,
  /** Most tunnels one client may hold. */
  maxTunnelsPerClient: 32,
} as const;

/** Settings the server announces to a client right after the upgrade. */
export interface Hello {
  type: "hello";
  protocol: number;
  /** Most a stream's window may grow to (bytes). */
  window: number;
  /** What every stream's window starts at, in both directions (bytes, at most `window`). */
  initialWindow: number;
  maxFramePayload: number;
  maxStreamsPerTunnel: number;
  maxTunnelsPerClient: number;
  /** Session id: with the secret, what a reconnecting client presents in {@link RESUME_HEADER}. */
  session: string;
  /** Resume secret, known only to this client; never the API key. */
  secret: string;
  /** True when this connection resumed an earlier session: its tunnels and streams still stand. */
  resumed: boolean;
  /** In a cluster: this node's name (a client with other servers keeps a standby connection watching it). */
  node?: string;
  /**
   * What this server can do beyond the base protocol ({@link Feature}); absent from older servers,
   * which a client then asks for none of it.
   */
  features?: string[];
}

/**
 * Either way, once per resume, before any frame: every stream's receive position. The server sends its
 * own right after a resumed hello; the client answers with its own, then both resend what was lost.
 */
export interface SyncMessage {
  type: "sync";
  /**
   * `[stream id, bytes received, bytes acknowledged, END received ? 1 : 0, window granted]` per open
   * stream (the window: GROW frames lost in the blip are not needed again).
   */
  streams: [number, number, number, number, number][];
  /** Streams freed cleanly on the sender's side whose last frames the peer may have missed. */
  finished: number[];
  /** Highest stream id the sender accepted (client), 0 for the server. */
  accepted: number;
}

/** Server → client: the server is shutting down; no new visitors, streams in flight may finish. */
export interface GoingAway {
  type: "going-away";
  /** Seconds the server waits for streams to finish before it closes the connection. */
  drain: number;
}

/** Client → server: publish a local service. */
export interface ExposeRequest {
  type: "expose";
  /** Request number chosen by the client; echoed in the answer. */
  id: number;
  /**
   * `udp` only toward a server whose hello lists {@link Feature.Udp}; "tls": an end-to-end TLS tunnel,
   * routed by SNI on the server's HTTPS port and never decrypted.
   */
  kind: "tcp" | "http" | "udp" | "tls";
  /** Public port wanted (tcp, udp); absent for any. */
  port?: number;
  /** Name wanted under the server's domain (http, tls); absent for a random one. */
  subdomain?: string;
  /** A full host name outside the server's domain (http, tls: a custom domain the server allows). */
  hostname?: string;
  /** Host header to send the local service (http): its own address; absent to keep the visitor's. */
  hostHeader?: string;
  /** `user:password` every visitor request must present (http, basic auth); absent for none. */
  basicAuth?: string;
  /** Tunnel id wanted (a client re-exposing after a server restart keeps its id); absent for a new one. */
  tunnel?: string;
  /** Share the port or name with other clients of the same user that ask for a pool too (`--pool`). */
  pool?: boolean;
  /** Addresses or CIDR ranges that may reach the tunnel (`--allow`); absent or empty: all. */
  allow?: string[];
  /** Addresses or CIDR ranges that may not (`--deny`); deny wins over allow. */
  deny?: string[];
}

/** Server → client: a tunnel is live. */
export interface Exposed {
  type: "exposed";
  id: number;
  /** Tunnel id (nanoid), shown to the user. */
  tunnel: string;
  /** Small number that OPEN frames use to name this tunnel. */
  ref: number;
  /** HTTP tunnels: the name under the server's domain. */
  name?: string;
  host: string;
  port: number;
  url: string;
  /**
   * True when the server enforces the request's `allow`/`deny` lists. A client that sent lists and
   * reads no `true` here (a server older than the lists) closes the tunnel rather than leave it open
   * to everyone.
   */
  access?: boolean;
}

/** Client → server: stop publishing one of its tunnels (its public port or name is released at once). */
export interface UnexposeRequest {
  type: "unexpose";
  /** Request number chosen by the client; echoed in the answer. */
  id: number;
  /** The tunnel's id, as `exposed` gave it. */
  tunnel: string;
}

/** Server → client: the tunnel is closed, with every visitor connection it had. */
export interface Unexposed {
  type: "unexposed";
  id: number;
  tunnel: string;
}

/** Server → client: a request failed (`id` set) or the session has a problem. */
export interface ErrorMessage {
  type: "error";
  id?: number;
  code: string;
  message: string;
}

/** Every text control message. */
export type ControlMessage =
  | Hello
  | SyncMessage
  | GoingAway
  | ExposeRequest
  | Exposed
  | UnexposeRequest
  | Unexposed
  | ErrorMessage;

/** What an HTTP tunnel's name may look like: one DNS label, lower case. */
export const SUBDOMAIN = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

/** A full host name (a custom domain): dot-separated DNS labels, lower case, at least two, at most 253 characters. */
export const HOSTNAME =
  /^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

/** What a tunnel id may look like (nanoid's alphabet). */
export const TUNNEL_ID = /^[A-Za-z0-9_-]{1,64}$/;

/** Metadata carried by OPEN and FLOW_OPEN frames (JSON after the fixed part). */
export interface OpenMeta {
  /** The visitor's address as `ip:port` (`[ipv6]:port`; IPv4-mapped addresses as IPv4). */
  remote: string;
  /**
   * The public address the visitor connected to, as `ip:port` (the server's side of the visitor's
   * connection: what a PROXY protocol header names as destination). Across a cluster hop, the address
   * at the node the visitor reached. Absent from servers older than it.
   */
  local?: string;
  /**
   * On a node link only (cluster): what the visitor came for, `http:NAME` or `tcp:PORT`; the receiving
   * node hands the stream to the client holding it. Absent on a client's connection.
   */
  target?: string;
}

/** Raised for anything a peer sends that breaks the protocol; the session closes with 1002. */
export class ProtocolError extends Error {
  override name = "ProtocolError";
}

/** Most rules in an expose request's `allow` or `deny`, and the longest rule. */
export const MAX_ACCESS_RULES = 64;
const MAX_RULE_LENGTH = 64;

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null;
const isPort = (v: unknown): v is number => Number.isInteger(v) && (v as number) > 0 && (v as number) < 65536;
const isCount = (v: unknown): v is number => Number.isInteger(v) && (v as number) > 0;
const isSeq = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;
const isStreamId = (v: unknown): v is number => isCount(v) && (v as number) <= 0xffffffff;
/** An allow or deny list in an expose: absent, or at most 64 short strings (parsed by the server). */
const isAddressList = (v: unknown): boolean =>
  v === undefined ||
  (Array.isArray(v) &&
    v.length <= MAX_ACCESS_RULES &&
    v.every((a) => typeof a === "string" && a.length <= MAX_RULE_LENGTH));
const isPosition = (v: unknown): boolean =>
  Array.isArray(v) &&
  v.length === 5 &&
  isStreamId(v[0]) &&
  isSeq(v[1]) &&
  isSeq(v[2]) &&
  (v[3] === 0 || v[3] === 1) &&
  isCount(v[4]);

/**
 * Parses and validates one JSON control message.
 * @throws {ProtocolError} when the text is not JSON or not a known, well-formed message.
 */
export function parseControl(text: string): ControlMessage {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new ProtocolError("control message is not JSON");
  }
  if (!isObject(value)) throw new ProtocolError("control message is not an object");
  switch (value.type) {
    case "hello":
      if (
        isCount(value.protocol) &&
        isCount(value.window) &&
        isCount(value.initialWindow) &&
        (value.initialWindow as number) <= (value.window as number) &&
        isCount(value.maxFramePayload) &&
        isCount(value.maxStreamsPerTunnel) &&
        isCount(value.maxTunnelsPerClient) &&
        typeof value.session === "string" &&
        typeof value.secret === "string" &&
        typeof value.resumed === "boolean" &&
        (value.node === undefined || typeof value.node === "string") &&
        (value.features === undefined ||
          (Array.isArray(value.features) && value.features.every((f) => typeof f === "string")))
      )
        return value as unknown as Hello;
      break;
    case "sync":
      if (
        Array.isArray(value.streams) &&
        value.streams.every(isPosition) &&
        Array.isArray(value.finished) &&
        value.finished.every(isStreamId) &&
        isSeq(value.accepted)
      )
        return value as unknown as SyncMessage;
      break;
    case "going-away":
      if (isSeq(value.drain)) return value as unknown as GoingAway;
      break;
    case "expose":
      if (
        isCount(value.id) &&
        (value.kind === "tcp" || value.kind === "http" || value.kind === "udp" || value.kind === "tls") &&
        (value.hostname === undefined ||
          (typeof value.hostname === "string" && value.hostname.length <= 253)) &&
        (value.port === undefined || isPort(value.port)) &&
        (value.subdomain === undefined ||
          (typeof value.subdomain === "string" && value.subdomain.length <= 63)) &&
        (value.basicAuth === undefined ||
          (typeof value.basicAuth === "string" && value.basicAuth.length <= 512)) &&
        (value.hostHeader === undefined ||
          (typeof value.hostHeader === "string" && value.hostHeader.length <= 300)) &&
        (value.tunnel === undefined || (typeof value.tunnel === "string" && TUNNEL_ID.test(value.tunnel))) &&
        (value.pool === undefined || typeof value.pool === "boolean") &&
        isAddressList(value.allow) &&
        isAddressList(value.deny)
      )
        return value as unknown as ExposeRequest;
      break;
    case "exposed":
      if (
        isCount(value.id) &&
        typeof value.tunnel === "string" &&
        isCount(value.ref) &&
        typeof value.host === "string" &&
        isPort(value.port) &&
        typeof value.url === "string" &&
        (value.access === undefined || typeof value.access === "boolean")
      )
        return value as unknown as Exposed;
      break;
    case "unexpose":
    case "unexposed":
      if (isCount(value.id) && typeof value.tunnel === "string" && TUNNEL_ID.test(value.tunnel))
        return value as unknown as UnexposeRequest | Unexposed;
      break;
    case "error":
      if (
        typeof value.code === "string" &&
        typeof value.message === "string" &&
        (value.id === undefined || isCount(value.id))
      )
        return value as unknown as ErrorMessage;
      break;
  }
  // JSON.stringify, not String(): a parsed `type` may be an object whose `toString` is not callable.
  const type = String(JSON.stringify(value.type)).slice(0, 40);
  throw new ProtocolError(`malformed or unknown control message: type ${type}`);
}
