/**
 * The server's namespace in types: what a public TCP port or HTTP name is (a key), who may hold one (a
 * session, through its tunnel), and the one type that says how a key is held now ({@link Holding}):
 *
 * ```text
 * free ──claim──▶ held ──client lost──▶ reserved (N s) ──grace over──▶ free
 *   │               │ ▲                     │
 *   │        join (--pool)                  └──resumed──▶ held
 *   │               ▼ │ leave
 *   │             pooled (members of one user)
 *   └──another node leased it──▶ held by node X ──lease expired──▶ free
 * ```
 * PROTOCOL.md "Implementation notes" has the same table in words.
 * @module
 */

import type { RelaySocket, Stream } from "../../relay/stream.ts";
import type { StreamKind } from "../../wire/protocol.ts";
import type { RouteAnswer } from "../cluster/node.ts";
import type { UdpMember, UdpPort, UdpSessionFlows } from "../udp-port.ts";
import type { Account } from "../users.ts";

/**
 * A place in the namespace: an HTTP tunnel's name, a public TCP port (the cluster's lease key too) or
 * a public UDP port (TCP's and UDP's port numbers are separate places, as they are to the kernel).
 */
export type PlaceKey = `http:${string}` | `tcp:${number}` | `udp:${number}`;

/** Why a claim or a visitor was refused, for the client's (or the log's) one line. */
export interface Refusal {
  code: string;
  message: string;
}

/** Who may reach a tunnel: an allow and deny list (see access-list.ts); absent: everyone. */
export interface VisitorFilter {
  /** Whether a visitor from this address (as the socket reports it) may reach the tunnel. */
  permits(ip: string): boolean;
}

/** What the namespace needs of a session that holds tunnels. */
export interface TunnelHolder {
  /** Cluster: sha256 of the session's resume secret (who owns its leases). */
  readonly owner: string;
  /** Cluster: the hash of the resume secret the client had on another node (its proof of ownership). */
  readonly claim?: string;
  /** The user whose token opened the session (absent on a server without users). */
  readonly account?: Account;
  /** The client's IP address (what certificate orders count against without users). */
  readonly address?: string;
  /** True while its client is connected and its frames flow: only then are visitors carried. */
  readonly live: boolean;
  /** True while the session waits for its client to come back (its grace period). */
  readonly reserved: boolean;
  /** When the grace period ends (ms since the epoch), while reserved. */
  readonly graceEnds: number;
  /** Announces a visitor to the client as a new stream of `tunnel`, or says why not. */
  openVisitor(tunnel: Tunnel, socket: RelaySocket, kind: StreamKind): Stream | string;
  /** Cluster: another node took the tunnel's key; the holder drops the tunnel and tells its client. */
  lose(tunnel: Tunnel): void;
  /**
   * The session's UDP flows (made with its first UDP tunnel): where a UDP place's flows are carried.
   * A holder without it holds no UDP tunnel.
   */
  udpFlows?(): UdpSessionFlows;
}

/** One session's share of a place: what its client exposed, with its own visitors. */
export interface Tunnel {
  /** Tunnel id (nanoid), shown to the user; unique server-wide while held. */
  readonly id: string;
  /** Small number that OPEN frames use to name this tunnel on its client's connection. */
  readonly ref: number;
  /** "tls": an end-to-end TLS tunnel on the HTTPS port, routed by SNI like an HTTP name (acme/tls-front.ts). */
  readonly kind: "tcp" | "http" | "udp" | "tls";
  /** Its public port (for HTTP tunnels, the server's HTTP port). */
  port: number;
  /** HTTP and TLS tunnels: the name under the server's domain, or a custom domain's whole host name. */
  name?: string;
  /** UDP tunnels: the place's public socket (shared by a pool's members) and this member's share. */
  udp?: UdpPort;
  udpMember?: UdpMember;
  /** The URL its client was told. */
  url?: string;
  /** Its open visitor streams (their count is what `--max-streams` limits). */
  readonly visitors: Set<Stream>;
  /** The session holding it. */
  readonly holder: TunnelHolder;
  /** Whether its client asked to share the place with others (`--pool`). */
  readonly pool: boolean;
  /** The tunnel's own allow and deny lists (`--allow`, `--deny`), if any. */
  readonly filter?: VisitorFilter;
  /** HTTP: the Host header for the local service, and the basic-auth credentials visitors must send. */
  readonly hostHeader?: string;
  readonly basicAuth?: string;
}

/** How a key is held now. */
export type Holding =
  | { state: "free" }
  /** One live session's tunnel. */
  | { state: "held"; tunnel: Tunnel }
  /** A session whose client is away, until its grace period ends (ms since the epoch). */
  | { state: "reserved"; tunnel: Tunnel; until: number }
  /** Tunnels of several sessions (one user's, each with `--pool`) sharing the visitors. */
  | { state: "pooled"; tunnels: readonly Tunnel[] }
  /** Another node of the cluster, through its lease in Redis. */
  | { state: "remote"; node: string };

/** Where an HTTP name leads: a tunnel (or a pool, or another node) that opens a stream per visitor connection. */
export interface HttpRoute {
  /** Host header for the local service, or undefined to keep the visitor's. */
  hostHeader?: string;
  /** `user:password` every request must present (HTTP basic auth), checked here, never forwarded. */
  basicAuth?: string;
  /**
   * The same as its sha256 (hex), for a tunnel held by another node of a cluster: the password itself
   * never leaves the node its client is on.
   */
  basicAuthHash?: string;
  /**
   * Opens a stream for this visitor, or says why not (an HTTP status and a one-line page; with
   * `retryAfter`, seconds, a Retry-After header). A promise: the connection waits unread for the answer
   * (a cluster's name whose node is a moment away: its link coming up, or the name moving; the cluster
   * bounds the wait).
   */
  open(socket: RelaySocket): RouteAnswer | Promise<RouteAnswer>;
  /** An end-to-end TLS tunnel: its raw bytes go to the client from the HTTPS front; no plain HTTP route. */
  passthrough?: boolean;
}

/** What {@link HttpRoute.open} answers: the visitor's stream, or the refusal it is answered with. */
export type { RouteAnswer };
