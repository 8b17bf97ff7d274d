/**
 * Who a node is, by default, and what it must agree on with the others. A node's name defaults to
 * its node URL's `HOST:PORT` (two nodes that other nodes can tell apart have different URLs, so their
 * default names differ too); a node bound to all addresses takes as its node URL the address of its own
 * end of a connection toward the cluster's Redis (the address the other nodes, which reach that Redis
 * too, can most likely reach it at), and refuses to guess when it cannot tell. The settings every node
 * must share (users, domain, the lease…) are hashed, and the hashes compared through Redis.
 * @module
 */

import { createHash } from "node:crypto";
import { formatHost, unmappedAddress } from "../../args.ts";
import { withDeadline } from "../../deadline.ts";
import { NODE_NAME } from "../../wire/protocol.ts";
import { isSentinelUrl, parseSentinelUrl } from "./sentinel.ts";

/** How long the connection that finds this node's address may take. */
const PROBE_TIMEOUT_MS = 3000;

/** The default node name: the node URL's `HOST:PORT`, made a valid node name (at most 64 characters). */
export function defaultNodeName(nodeUrl: string): string {
  const url = new URL(nodeUrl);
  const host = url.hostname.replace(/^\[|\]$/g, "");
  const port = url.port || (url.protocol === "wss:" ? "443" : "80");
  const name = `${host}:${port}`.replace(/[^A-Za-z0-9._:-]/g, "-");
  // A long host name keeps its end (the port, the distinguishing part of a name like node-7.region…).
  const clipped = name.length > 64 ? name.slice(-64) : name;
  return NODE_NAME.test(clipped) ? clipped : "node";
}

/** Where the cluster's Redis (or its first sentinel) listens, from a `--cluster` URL. */
function redisAddress(cluster: string): { host: string; port: number } {
  if (isSentinelUrl(cluster)) return parseSentinelUrl(cluster).sentinels[0] as { host: string; port: number };
  const url = new URL(cluster);
  return { host: url.hostname.replace(/^\[|\]$/g, ""), port: Number(url.port || 6379) };
}

/**
 * This machine's address toward `host:port`: the local end of a TCP connection there (the kernel picks
 * the address of the route the other nodes' traffic comes back on).
 * @throws {Error} when no connection can be made.
 */
async function localAddressToward(host: string, port: number): Promise<string> {
  let late = false;
  const connecting = Bun.connect({ hostname: host, port, socket: { data() {} } });
  connecting.then(
    (socket) => late && socket.end(),
    () => {},
  );
  const socket = await withDeadline(connecting, PROBE_TIMEOUT_MS, () => {
    late = true; // a connection that comes after all is ended at once
    return new Error(`no connection within ${PROBE_TIMEOUT_MS} ms`);
  });
  const address = unmappedAddress(socket.localAddress);
  socket.end();
  return address;
}

/**
 * The node URL when `--node-url` is not given: the control port at the bind address, or, when bound to
 * all addresses, at this machine's address toward Redis.
 * @throws {Error} with one line saying to set `--node-url` when that address cannot be found.
 */
export async function defaultNodeUrl(
  host: string,
  port: number,
  tls: boolean,
  cluster: string,
): Promise<string> {
  const scheme = tls ? "wss" : "ws";
  if (host !== "::" && host !== "0.0.0.0") return `${scheme}://${formatHost(host)}:${port}`;
  const redis = redisAddress(cluster);
  let address: string;
  try {
    address = await localAddressToward(redis.host, redis.port);
  } catch (error) {
    throw new Error(
      `cluster: this node listens on all addresses (--host ${host}) and could not learn which one the other nodes reach it at (no connection to ${formatHost(redis.host)}:${redis.port}: ${(error as Error).message}); set --node-url ws://ADDRESS:${port}`,
    );
  }
  return `${scheme}://${formatHost(address)}:${port}`;
}

/** What a node's users and cluster-wide settings hash to (compared with the other nodes' through Redis). */
export interface SettingsDigest {
  /** sha256 (hex, 16 digits) of the users: names, token hashes, limits, and the single API key's hash. */
  users: string;
  /** The same of the settings every node must share: domain, TCP port range, lease, TLS on or off. */
  settings: string;
}

/** Canonical JSON: object keys sorted, so that the same settings always hash alike. */
function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  if (value !== null && typeof value === "object")
    return `{${Object.keys(value)
      .sort()
      .filter((key) => (value as Record<string, unknown>)[key] !== undefined)
      .map((key) => `${JSON.stringify(key)}:${canonical((value as Record<string, unknown>)[key])}`)
      .join(",")}}`;
  return JSON.stringify(value);
}

function digest(value: unknown): string {
  return createHash("sha256").update(canonical(value)).digest("hex").slice(0, 16);
}

/** The server options a digest covers (the server's options, seen from the cluster's layer). */
export interface DigestedOptions<User extends { name: string } = { name: string }> {
  users?: readonly User[];
  apiKey?: string;
  domain?: string;
  tcpPorts?: unknown;
  clusterLeaseSeconds?: number;
  tls?: unknown;
}

/** The digest of what every node of a cluster should have alike. */
export function settingsDigest<User extends { name: string }>(
  options: DigestedOptions<User>,
): SettingsDigest {
  const users = [...(options.users ?? [])].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return {
    users: digest({
      users,
      apiKey: options.apiKey === undefined ? null : createHash("sha256").update(options.apiKey).digest("hex"),
    }),
    settings: digest({
      domain: options.domain ?? null,
      tcpPorts: options.tcpPorts ?? null,
      lease: options.clusterLeaseSeconds ?? null,
      tls: options.tls !== undefined,
    }),
  };
}
