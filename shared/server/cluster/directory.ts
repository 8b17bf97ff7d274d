/**
 * The cluster's namespace in Redis: which node holds each HTTP name and each public TCP port, as leases
 * with a time to live that the holding node renews (every lease/3), a fencing epoch per acquisition, a
 * cluster-wide count of each user's leases, the registry of alive nodes, and the link secret the nodes
 * authenticate each other with. Every node keeps a view of all leases, kept current by pub/sub
 * (`sockets:changes`) and rebuilt from Redis every second; PROTOCOL.md "Redis keys" lists the keys.
 *
 * Availability first: while Redis is unreachable a node keeps serving the leases it held (holds() stays
 * true) and refuses new ones (`redis_down`); when Redis is back, even empty, the node registers again,
 * sets its leases again (nobody else took them) and re-subscribes.
 *
 * Uses Bun's built-in RedisClient: one client for commands, one for pub/sub (a subscribed connection
 * takes no other commands). Bun reconnects by itself but does not restore subscriptions.
 * @module
 */

import { randomBytes } from "node:crypto";
import { RedisClient } from "bun";
import { withDeadline } from "../../deadline.ts";
import { describeError, type Logger } from "../../log.ts";
import { explainRedisFailure } from "./redis-probe.ts";
import {
  askMaster,
  isSentinelUrl,
  masterUrl,
  parseSentinelUrl,
  redactSentinelUrl,
  type SentinelUrl,
  SentinelWatch,
} from "./sentinel.ts";

/** A lease's name: an HTTP tunnel's name, or a public TCP or UDP port. */
export type LeaseKey = `http:${string}` | `tcp:${number}` | `udp:${number}`;

/** What Redis stores for a lease (JSON at `sockets:lease:KEY`). */
export interface LeaseRecord {
  /** The holding node's name. */
  node: string;
  /** Fencing token: every acquisition or takeover gets a higher one. */
  epoch: number;
  /** sha256 hex of the holding session's resume secret (the claim that lets it take the lease back). */
  owner: string;
  /** The holding user (its leases count against its cluster-wide limit). */
  user?: string;
  /** The Host header an HTTP tunnel rewrites to, for the node that receives its visitors. */
  hostHeader?: string;
  /** sha256 hex of "user:password" when the tunnel asks visitors for basic auth. */
  basicAuthHash?: string;
  /** "tls" for an end-to-end TLS tunnel: its visitors are carried raw (acme/tls-front.ts). */
  kind?: "tls";
  /**
   * A pool's place (`--pool`): other nodes with members of the same user hold member leases beside it
   * (`KEY~NODE`, see {@link poolMemberKey}) and share its visitors.
   */
  pool?: boolean;
}

/** The lease a node's pool members hold beside a pool's place `key` (node names never contain `~`). */
export function poolMemberKey(key: LeaseKey, node: string): LeaseKey {
  return `${key}~${node}` as LeaseKey;
}

/** The place a lease is for: `key` itself, or the pool place of a member lease (`KEY~NODE`). */
export function placeOfLease(key: LeaseKey): LeaseKey {
  const at = key.indexOf("~");
  return at < 0 ? key : (key.slice(0, at) as LeaseKey);
}

/** A node of the cluster, as registered in Redis. */
export interface NodeInfo {
  /** Unique node name (`--node-name`). */
  name: string;
  /** Where the other nodes reach this one (`--node-url`). */
  url: string;
  /** Random per process: tells a node restarted under its name from another node using the same name. */
  instance?: string;
  /** Hashes of its users and shared settings (identity.ts), compared between nodes. */
  digest?: { users: string; settings: string };
}

/** What {@link ClusterDirectory.acquire} answers. */
export type AcquireResult =
  | { ok: true; epoch: number; tookOver: boolean }
  | { ok: false; code: "taken" | "limit" | "redis_down"; message: string; holder?: LeaseRecord };

/** How {@link ClusterDirectory.open} connects and whom it tells about changes. */
export interface DirectoryOptions {
  /** redis://, rediss:// or redis+sentinel:// URL (password in the URL). */
  url: string;
  /** PEM certificate(s) trusted for a rediss:// Redis (`--cluster-ca`); absent: the system's CAs. */
  ca?: string;
  /** This node. */
  node: NodeInfo;
  /** Lease time to live in ms (renewed every third of it). */
  leaseMs: number;
  /** Where the link's transitions and lost leases are logged. */
  log: Logger;
  /** A lease this node held is gone (taken over by another node, or not renewable): stop serving it at once. */
  onLost(key: LeaseKey): void;
  /** Any key's holder changed in the view (acquired, moved, released, expired); record undefined = free. */
  onChange?(key: LeaseKey, record: LeaseRecord | undefined): void;
  /** A node joined or left (alive set changed). */
  onNodes?(nodes: NodeInfo[]): void;
}

/** Key names: the prefix and the pub/sub channel (PROTOCOL.md "Redis keys"). */
const PREFIX = "sockets:";
const LEASE_PREFIX = `${PREFIX}lease:`;
const EPOCH_KEY = `${PREFIX}epoch`;
const USER_PREFIX = `${PREFIX}user:`;
const NODES_KEY = `${PREFIX}nodes`;
const NODE_PREFIX = `${PREFIX}node:`;
const SECRET_KEY = `${PREFIX}secret`;
const VISITORS_PREFIX = `${PREFIX}visitors:`;
const CHANNEL = `${PREFIX}changes`;

/** How often the view is rebuilt from Redis: a missed message or an expiry is seen within this. */
const RESYNC_MS = 1000;
/** How long open() waits for both connections (Bun's connect() never rejects while it retries). */
const CONNECT_TIMEOUT_MS = 3000;
/** SCAN rounds per resync (COUNT 1000 each): bounds the loop at a million leases. */
const MAX_SCAN_ROUNDS = 1000;
/** Reconnection attempts before Bun's client gives up (it then fires onclose; we call connect() again). */
const MAX_RETRIES = 1_000_000_000;

// The Lua scripts: each multi-step operation runs atomically in Redis. Expiry scores use Redis' own
// clock (TIME), so the nodes' clocks never have to agree.

/**
 * KEYS: lease, epoch counter, [user zset]. ARGV: node, request JSON (owner, user, …), claim or "",
 * lease ms, user limit or "", member (the LeaseKey), channel, user key prefix.
 * Returns {status, epoch, tookOver, value}: value is our new record ("ok") or the holder's.
 */
const ACQUIRE_LUA = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[4])
local req = cjson.decode(ARGV[2])
local cur = redis.call('GET', KEYS[1])
local old = nil
local tookOver = 0
if cur then
  old = cjson.decode(cur)
  if old.node == ARGV[1] and old.owner == req.owner then
    redis.call('PEXPIRE', KEYS[1], lease)
    if KEYS[3] then redis.call('ZADD', KEYS[3], now + lease, ARGV[6]) end
    return {'ok', tonumber(old.epoch), 0, cur}
  end
  if ARGV[3] == '' or old.owner ~= ARGV[3] then return {'taken', 0, 0, cur} end
  tookOver = 1
end
if KEYS[3] then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  local limit = tonumber(ARGV[5])
  if limit and not redis.call('ZSCORE', KEYS[3], ARGV[6]) and redis.call('ZCARD', KEYS[3]) >= limit then
    return {'limit', 0, 0, cur or ''}
  end
end
local epoch = redis.call('INCR', KEYS[2])
if old and tonumber(old.epoch) >= epoch then
  epoch = tonumber(old.epoch) + 1
  redis.call('SET', KEYS[2], epoch)
end
req.node = ARGV[1]
req.epoch = epoch
local value = cjson.encode(req)
redis.call('SET', KEYS[1], value, 'PX', lease)
if KEYS[3] then redis.call('ZADD', KEYS[3], now + lease, ARGV[6]) end
if old and old.user and old.user ~= req.user then redis.call('ZREM', ARGV[8] .. old.user, ARGV[6]) end
redis.call('PUBLISH', ARGV[7], ARGV[6])
return {'ok', epoch, tookOver, value}
`;

/**
 * KEYS: lease, epoch counter, [user zset]. ARGV: node, epoch, our record JSON, lease ms, member, channel.
 * Returns {1} renewed, {2} set again (the key was gone: Redis lost it, nobody took it), {0, holder} lost.
 */
const RENEW_LUA = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[4])
local cur = redis.call('GET', KEYS[1])
local status = 1
if not cur then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', lease)
  if tonumber(redis.call('GET', KEYS[2]) or '0') < tonumber(ARGV[2]) then redis.call('SET', KEYS[2], ARGV[2]) end
  redis.call('PUBLISH', ARGV[6], ARGV[5])
  status = 2
else
  local rec = cjson.decode(cur)
  if rec.node ~= ARGV[1] or tonumber(rec.epoch) ~= tonumber(ARGV[2]) then return {0, cur} end
  redis.call('PEXPIRE', KEYS[1], lease)
end
if KEYS[3] then redis.call('ZADD', KEYS[3], now + lease, ARGV[5]) end
return {status}
`;

/** KEYS: lease, [user zset]. ARGV: node, epoch, member, channel. Returns 1 when it was ours and is gone. */
const RELEASE_LUA = `
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local rec = cjson.decode(cur)
if rec.node ~= ARGV[1] or tonumber(rec.epoch) ~= tonumber(ARGV[2]) then return 0 end
redis.call('DEL', KEYS[1])
if KEYS[2] then redis.call('ZREM', KEYS[2], ARGV[3]) end
redis.call('PUBLISH', ARGV[4], ARGV[3])
return 1
`;

/**
 * KEYS: nodes zset, node key. ARGV: name, node JSON, lease ms, channel, instance. Prunes dead nodes,
 * renews this one; returns 1 (and publishes node:NAME) when it was not registered, or the registration
 * of another process (another instance) that registered under this name meanwhile (it is kept).
 */
const HEARTBEAT_LUA = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local fresh = not redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
local cur = redis.call('GET', KEYS[2])
if cur and not fresh and ARGV[5] ~= '' and not string.find(cur, ARGV[5], 1, true) then
  redis.call('PEXPIRE', KEYS[2], lease)
  return cur
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', lease)
if fresh then
  redis.call('PUBLISH', ARGV[4], 'node:' .. ARGV[1])
  return 1
end
return 0
`;

/**
 * KEYS: nodes zset, node key. ARGV: name, instance, url, lease ms. At start: returns the registration
 * of another live node under this name at another URL (a clash), else "". Same URL: this node restarted
 * (only one process can listen there), its old registration is taken over.
 */
const CLASH_LUA = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = redis.call('GET', KEYS[2])
if not cur then return '' end
local ok, rec = pcall(cjson.decode, cur)
if not ok or type(rec) ~= 'table' then return '' end
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if rec.instance ~= ARGV[2] and rec.url ~= ARGV[3] and score and tonumber(score) > now then return cur end
return ''
`;

/**
 * ARGV: node, lease ms, key prefix, then user/count pairs. For each user: sets this node's count in
 * the user's hash (with an expiry of its own: a dead node's count stops counting), and returns
 * {user, the sum of the other nodes' live counts} pairs, flattened.
 */
const VISITORS_LUA = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
local out = {}
for i = 4, #ARGV, 2 do
  local key = ARGV[3] .. ARGV[i]
  redis.call('HSET', key, ARGV[1], ARGV[i + 1] .. ':' .. (now + lease))
  redis.call('PEXPIRE', key, 3 * lease)
  local all = redis.call('HGETALL', key)
  local sum = 0
  for j = 1, #all, 2 do
    if all[j] ~= ARGV[1] then
      local count, expiry = string.match(all[j + 1], '^(%d+):(%d+)$')
      if count and tonumber(expiry) > now then sum = sum + tonumber(count) else redis.call('HDEL', key, all[j]) end
    end
  end
  out[#out + 1] = ARGV[i]
  out[#out + 1] = sum
end
return out
`;

/** KEYS: nodes zset, node key. ARGV: name, channel. */
const DEREGISTER_LUA = `
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[2], 'node:' .. ARGV[1])
return 1
`;

/**
 * KEYS: nodes zset. ARGV: node key prefix, this node's name. Returns {the JSON NodeInfo of every node
 * alive now, ms until the first other node's registration runs out (-1: none)}.
 */
const NODES_LUA = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local names = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
local out = {}
local soonest = -1
for i = 1, #names, 2 do
  local name = names[i]
  local info = redis.call('GET', ARGV[1] .. name)
  if info then out[#out + 1] = info end
  local left = tonumber(names[i + 1]) - now
  if name ~= ARGV[2] and (soonest < 0 or left < soonest) then soonest = left end
end
return {out, soonest}
`;

/** A lease this node holds. */
interface Held {
  epoch: number;
  /** Our record as stored in Redis (renewal sets it again when the key is gone). */
  json: string;
  user: string | undefined;
  /** performance.now() until which we may serve it: when the last good renew/acquire was sent + leaseMs. */
  validUntil: number;
  /** The sequence number of the acquire: a view read sent later that names another holder means lost. */
  seq: number;
}

/** A command that did not reach Redis (not connected, connection lost, no answer in time). */
class RedisDownError extends Error {}

/** Server replies that mean "Redis cannot serve now" rather than "this command is wrong". */
const UNAVAILABLE_REPLY = /^(LOADING|READONLY|MASTERDOWN|BUSY|OOM|NOAUTH|WRONGPASS|TRYAGAIN|CLUSTERDOWN)\b/;

/** A stored node registration, or undefined when the value is not one. */
function parseNode(json: string): NodeInfo | undefined {
  try {
    const info = JSON.parse(json) as NodeInfo;
    return typeof info?.name === "string" && typeof info.url === "string" ? info : undefined;
  } catch {
    return undefined;
  }
}

/** The URL without its password, for logs and errors. */
function redactUrl(url: string): string {
  if (isSentinelUrl(url)) return redactSentinelUrl(url);
  try {
    const parsed = new URL(url);
    if (parsed.password !== "") parsed.password = "***";
    return parsed.toString().replace(/\/$/, "");
  } catch {
    return "(invalid URL)";
  }
}

/** `http:NAME` / `tcp:PORT` / `udp:PORT` (or a pool member's `…~NODE`) from a message or a Redis key's tail, or undefined. */
function toLeaseKey(text: string): LeaseKey | undefined {
  if (text.startsWith("http:") && text.length > 5) return text as LeaseKey;
  if (/^(?:tcp|udp):\d+(?:~[A-Za-z0-9._:-]{1,64})?$/.test(text)) return text as LeaseKey;
  return undefined;
}

/** A stored record, or undefined when the value is not one. */
function parseRecord(json: string): LeaseRecord | undefined {
  try {
    const value = JSON.parse(json) as LeaseRecord;
    return typeof value?.node === "string" && typeof value.epoch === "number" ? value : undefined;
  } catch {
    return undefined;
  }
}

/** The Redis directory of one node (see the module's comment). */
export class ClusterDirectory {
  /** The cluster's link secret (the other nodes present it on the node link). */
  readonly secret: string;

  private readonly name: string;
  private readonly renewMs: number;
  /** No answer within this → the link counts as down (a hung Redis looks connected). */
  private readonly commandTimeoutMs: number;
  private nodeJson: string;
  private readonly held = new Map<LeaseKey, Held>();
  /** Every lease in the cluster as last read, with its stored JSON (compared to spot changes). */
  private readonly view = new Map<LeaseKey, { record: LeaseRecord; json: string }>();
  /** Pool member leases in the view, by the place they are for (kept with the view). */
  private readonly members = new Map<LeaseKey, Set<LeaseKey>>();
  /** Per key, the sequence number of the read applied last: an older read arriving later is dropped. */
  private readonly stamps = new Map<LeaseKey, number>();
  /** Numbers every command as it is sent; one connection answers in order, so it orders the reads. */
  private seq = 0;
  private alive = new Map<string, NodeInfo>();
  private state: "starting" | "up" | "down" = "starting";
  /** Shutting down: out of the node list, and heartbeats register it no more. */
  private leavingList = false;
  /** performance.now() when the link last came back after an outage (or a master switch). */
  private recoveredAt = Number.NEGATIVE_INFINITY;
  /** performance.now() when the link went down. */
  private downSince = 0;
  private stopping = false;
  private clientsClosed = false;
  private frozen = false;
  private renewTimer: ReturnType<typeof setTimeout> | undefined;
  private resyncTimer: ReturnType<typeof setTimeout> | undefined;
  /** Fires when the first other node's registration runs out (see watchExpiry). */
  private expiryTimer: ReturnType<typeof setTimeout> | undefined;
  private recovering: Promise<void> | null = null;
  private resyncing = false;
  private nodesRefresh: { running: boolean; again: boolean } = { running: false, again: false };
  /** The current subscription's listener (Bun keeps old listeners after a reconnect: we drop them). */
  private listener: ((message: string) => void) | null = null;
  /** Listeners of earlier connections, unsubscribed once the new subscription holds. */
  private readonly stale = new Set<(message: string) => void>();
  /** Bun's client gave up reconnecting (fired onclose): connect() again from the next tick. */
  private gaveUp = false;
  /** Warnings already logged since the last success, so a failing timer logs once, not per tick. */
  private readonly warned = new Set<string>();
  private closing: Promise<void> | null = null;

  /** This process's instance id (in its registration): tells it from another process under its name. */
  private readonly instance = randomBytes(9).toString("base64url");
  /** With Sentinel: follows the master; the clients move when it changes. */
  private sentinel: SentinelWatch | undefined;
  /** The Redis the clients talk to now (the master's URL with Sentinel). */
  private redisUrl: string;

  private constructor(
    private readonly options: DirectoryOptions,
    private cmd: RedisClient,
    private sub: RedisClient,
    secret: string,
    redisUrl: string,
  ) {
    this.secret = secret;
    this.redisUrl = redisUrl;
    this.name = options.node.name;
    this.renewMs = Math.max(10, Math.floor(options.leaseMs / 3));
    this.commandTimeoutMs = Math.min(1000, Math.max(100, Math.floor(options.leaseMs / 3)));
    this.nodeJson = this.registration();
    this.alive.set(this.name, this.self());
  }

  /** This node as registered (with its instance and digest). */
  private self(): NodeInfo {
    return { ...this.options.node, instance: this.instance };
  }

  private registration(): string {
    const { name, url, digest } = this.options.node;
    return JSON.stringify({ name, url, instance: this.instance, ...(digest ? { digest } : {}) });
  }

  /** The two clients' settings for a Redis at `url`. */
  private static clients(url: string, ca: string | undefined): { cmd: RedisClient; sub: RedisClient } {
    const clientOptions = {
      enableOfflineQueue: false, // reject at once while disconnected: callers answer redis_down
      autoReconnect: true,
      maxRetries: MAX_RETRIES,
      connectionTimeout: CONNECT_TIMEOUT_MS,
      // Bun takes TLS from the rediss:// scheme; --cluster-ca is what it checks Redis' certificate against.
      ...(ca !== undefined && /^rediss:/i.test(url) ? { tls: { ca } } : {}),
    };
    return { cmd: new RedisClient(url, clientOptions), sub: new RedisClient(url, clientOptions) };
  }

  /**
   * Connects both clients, SET NX the secret (reads it back), registers the node, subscribes, loads the
   * view, starts timers. Rejects with a one-line Error when Redis is unreachable at start, or when
   * another live node uses this node's name. The initial load calls no callback: read {@link ports},
   * {@link nodes} and {@link holder} after it resolves. A `redis+sentinel://` URL: the sentinels are
   * asked for the master first, and followed from then on.
   */
  static async open(options: DirectoryOptions): Promise<ClusterDirectory> {
    let url = options.url;
    let sentinel: SentinelUrl | undefined;
    let master: { host: string; port: number } | undefined;
    if (isSentinelUrl(options.url)) {
      try {
        sentinel = parseSentinelUrl(options.url);
        master = await askMaster(sentinel);
      } catch (error) {
        throw new Error(
          `cluster: cannot use redis at ${redactSentinelUrl(options.url)}: ${describeError(error)}`,
        );
      }
      url = masterUrl(sentinel, master.host, master.port);
    }
    const { cmd, sub } = ClusterDirectory.clients(url, options.ca);
    let directory: ClusterDirectory | undefined;
    try {
      try {
        await withDeadline(
          Promise.all([cmd.connect(), sub.connect()]),
          CONNECT_TIMEOUT_MS,
          `no connection within ${CONNECT_TIMEOUT_MS} ms`,
        );
      } catch (error) {
        // Bun says "Connection closed" for a wrong password, an untrusted certificate, TLS to a plain
        // port…: one connection of our own tells which.
        throw new Error((await explainRedisFailure(url, options.ca)) ?? describeError(error));
      }
      const mine = randomBytes(32).toString("base64url");
      const noAnswer = `no answer within ${CONNECT_TIMEOUT_MS} ms`;
      await withDeadline(cmd.send("SET", [SECRET_KEY, mine, "NX"]), CONNECT_TIMEOUT_MS, noAnswer);
      const secret = await withDeadline(cmd.get(SECRET_KEY), CONNECT_TIMEOUT_MS, noAnswer);
      if (typeof secret !== "string" || secret === "")
        throw new Error("the cluster secret could not be read");
      directory = new ClusterDirectory(options, cmd, sub, secret, url);
      await directory.start();
    } catch (error) {
      directory?.stopTimers();
      cmd.close();
      sub.close();
      const why = describeError(error);
      if (why.startsWith("cluster:")) throw error;
      throw new Error(`cluster: cannot use redis at ${redactUrl(options.url)}: ${why}`);
    }
    if (sentinel !== undefined && master !== undefined) {
      const parsed = sentinel;
      const started = directory;
      directory.sentinel = new SentinelWatch(
        parsed,
        master,
        (host, port) => started.switchTo(masterUrl(parsed, host, port)),
        options.log,
      );
    }
    return directory;
  }

  /**
   * The master moved (a Sentinel failover): both clients go to `url`. Until the new master answered
   * the recovery (register, renew every lease, setting again those it never saw), the link counts as
   * down: new leases wait, live tunnels keep serving.
   */
  switchTo(url: string): void {
    if (this.stopping || url === this.redisUrl) return;
    this.options.log.warn(`cluster: redis master moved to ${redactUrl(url)}`);
    this.markDown("the master moved");
    const old = { cmd: this.cmd, sub: this.sub };
    this.unhook(old.cmd, old.sub);
    old.cmd.close();
    old.sub.close();
    this.redisUrl = url;
    const { cmd, sub } = ClusterDirectory.clients(url, this.options.ca);
    this.cmd = cmd;
    this.sub = sub;
    // Listeners of the old subscription are gone with its client.
    this.listener = null;
    this.stale.clear();
    this.hook();
    cmd.connect().catch(() => {});
    sub.connect().catch(() => {});
  }

  /**
   * Registers (refusing to start when another live node uses this name), subscribes, loads the view,
   * then hooks the reconnect handlers and starts the timers.
   */
  private async start(): Promise<void> {
    const { name, url } = this.options.node;
    const clash = (await this.eval(
      CLASH_LUA,
      [NODES_KEY, NODE_PREFIX + name],
      [name, this.instance, url, String(this.options.leaseMs)],
    )) as string;
    if (clash !== "") {
      const other = parseNode(clash);
      throw new Error(
        `cluster: node name ${name} is already used by a live node at ${other?.url ?? "(unknown URL)"} (this node: ${url}); give each node its own --node-name, or leave it out (the default is unique per node URL)`,
      );
    }
    await this.heartbeat();
    await this.subscribe();
    this.state = "up";
    await this.resync(true);
    this.hook();
    this.renewTimer = setTimeout(this.renewTick, this.renewMs);
    this.resyncTimer = setTimeout(this.resyncTick, RESYNC_MS);
  }

  /** The other live nodes whose users or shared settings differ from this node's: what differs, per node. */
  differences(): { node: string; users: boolean; settings: boolean }[] {
    const mine = this.options.node.digest;
    if (mine === undefined) return [];
    const out: { node: string; users: boolean; settings: boolean }[] = [];
    for (const info of this.alive.values()) {
      if (info.name === this.name || info.digest === undefined) continue;
      const users = info.digest.users !== mine.users;
      const settings = info.digest.settings !== mine.settings;
      if (users || settings) out.push({ node: info.name, users, settings });
    }
    return out;
  }

  /** The node's users or settings changed (a reload): registered again at once, with the new digest. */
  async setDigest(digest: { users: string; settings: string }): Promise<void> {
    this.options.node.digest = digest;
    this.nodeJson = this.registration();
    try {
      await this.heartbeat();
      await this.refreshNodes(false);
    } catch {
      // Redis away: the next heartbeat registers it.
    }
  }

  /**
   * Cluster-wide visitor counts: writes this node's count per user and reads the sum of the other
   * nodes' (each count expires with the lease). Undefined while Redis is away (keep the last sums).
   */
  async syncVisitors(counts: Map<string, number>): Promise<Map<string, number> | undefined> {
    if (this.state !== "up" || counts.size === 0) return undefined;
    const pairs = [...counts].flatMap(([user, count]) => [user, String(count)]);
    try {
      const reply = (await this.eval(
        VISITORS_LUA,
        [],
        [this.name, String(this.options.leaseMs), VISITORS_PREFIX, ...pairs],
      )) as (string | number)[];
      const sums = new Map<string, number>();
      for (let i = 0; i + 1 < reply.length; i += 2) sums.set(String(reply[i]), Number(reply[i + 1]));
      return sums;
    } catch {
      return undefined;
    }
  }

  /** Hooks the reconnect handlers of the current clients. */
  private hook(): void {
    this.cmd.onconnect = () => {
      this.gaveUp = false;
      // Also when no command noticed the outage: Redis may have come back empty (secret, registration).
      void this.recover();
    };
    this.cmd.onclose = () => {
      if (!this.clientsClosed) this.gaveUp = true;
    };
    this.sub.onconnect = () => {
      // Subscriptions are not restored after a reconnect; what was published meanwhile comes with the resync.
      this.subscribe().then(
        () => {
          this.warned.delete("subscribe");
          if (this.state === "up") this.resync().catch(() => {});
        },
        (error) => this.warnOnce("subscribe", `cluster: re-subscribe failed: ${describeError(error)}`),
      );
    };
    this.sub.onclose = () => {
      if (!this.clientsClosed) this.gaveUp = true;
    };
  }

  private unhook(cmd: RedisClient, sub: RedisClient): void {
    cmd.onconnect = null;
    cmd.onclose = null;
    sub.onconnect = null;
    sub.onclose = null;
  }

  /**
   * Ms left of the lease after this node's Redis link came back, else 0. Meanwhile a node missing from
   * the list may only be reconnecting too (the outage, or the master switch, cut every node off): its
   * absence is not yet a departure.
   */
  get settlingMs(): number {
    return Math.max(0, this.recoveredAt + this.options.leaseMs - performance.now());
  }

  /** True while Redis answers (after a loss: once this node registered and renewed its leases again). */
  get redisUp(): boolean {
    return this.state === "up";
  }

  /**
   * Acquire: free → take it (new epoch); held with record.owner === claim (the requester proved it owns
   * it: sha256 of its old resume secret) → take over (new epoch, publish); held by us with the same owner →
   * ok (idempotent); otherwise taken. `userLimit`: with `record.user`, refuse with "limit" when that user
   * holds >= userLimit live leases cluster-wide (ZSET, expired members pruned first). Redis down → redis_down.
   */
  async acquire(
    key: LeaseKey,
    record: Omit<LeaseRecord, "node" | "epoch">,
    claim?: string,
    userLimit?: number,
  ): Promise<AcquireResult> {
    if (this.stopping || this.state !== "up") return this.downResult();
    const request: Record<string, string | boolean> = { owner: record.owner };
    if (record.user !== undefined) request.user = record.user;
    if (record.pool === true) request.pool = true;
    if (record.hostHeader !== undefined) request.hostHeader = record.hostHeader;
    if (record.basicAuthHash !== undefined) request.basicAuthHash = record.basicAuthHash;
    if (record.kind !== undefined) request.kind = record.kind;
    const keys = [LEASE_PREFIX + key, EPOCH_KEY];
    if (record.user !== undefined) keys.push(USER_PREFIX + record.user);
    const seq = ++this.seq;
    const sentAt = performance.now();
    let reply: unknown;
    try {
      reply = await this.eval(ACQUIRE_LUA, keys, [
        this.name,
        JSON.stringify(request),
        claim ?? "",
        String(this.options.leaseMs),
        userLimit === undefined ? "" : String(userLimit),
        key,
        CHANNEL,
        USER_PREFIX,
      ]);
    } catch (error) {
      return error instanceof RedisDownError
        ? this.downResult()
        : { ok: false, code: "redis_down", message: `cluster: redis refused: ${describeError(error)}` };
    }
    const [status, epoch, tookOver, value] = reply as [string, number, number, string];
    if (status === "ok") {
      this.held.set(key, {
        epoch,
        json: value,
        user: record.user,
        validUntil: sentAt + this.options.leaseMs,
        seq,
      });
      this.apply(key, value, seq);
      return { ok: true, epoch, tookOver: tookOver === 1 };
    }
    if (status === "limit") {
      return {
        ok: false,
        code: "limit",
        message: `user ${record.user} may hold at most ${userLimit} tunnels across the cluster`,
      };
    }
    const holder = parseRecord(value);
    this.apply(key, value, seq);
    return {
      ok: false,
      code: "taken",
      message: `${key} is held by node ${holder?.node ?? "(unknown)"}`,
      ...(holder ? { holder } : {}),
    };
  }

  /** Releases a lease we hold (epoch matches), publishes; never throws (Redis down: it expires by itself). */
  async release(key: LeaseKey): Promise<void> {
    const mine = this.held.get(key);
    if (!mine) return;
    // Stop serving first: whatever Redis says, this node no longer holds it.
    this.held.delete(key);
    if (this.state !== "up") return;
    const keys = [LEASE_PREFIX + key];
    if (mine.user !== undefined) keys.push(USER_PREFIX + mine.user);
    const seq = ++this.seq;
    try {
      const released = await this.eval(RELEASE_LUA, keys, [this.name, String(mine.epoch), key, CHANNEL]);
      if (released === 1) this.apply(key, null, seq);
    } catch {
      // Not renewed any more, it expires within the lease.
    }
  }

  /**
   * True while this node may serve `key`: it holds the lease and the lease is valid on the local clock
   * (validUntil = time the last successful renew/acquire was SENT + leaseMs), or Redis is unreachable
   * (then local tunnels keep serving: availability first; documented). Synchronous, cheap.
   */
  holds(key: LeaseKey): boolean {
    const mine = this.held.get(key);
    if (!mine) return false;
    if (performance.now() < mine.validUntil) return true;
    // Only if the link went down while the lease was still valid: a process that was frozen past its
    // lease and finds the link down on waking must not serve (another node may hold it by now).
    return this.state !== "up" && this.downSince < mine.validUntil;
  }

  /** The member leases of pool place `key` in the view (other nodes' members, and this node's). */
  poolMembers(key: LeaseKey): { key: LeaseKey; record: LeaseRecord }[] {
    const keys = this.members.get(key);
    if (keys === undefined) return [];
    const out: { key: LeaseKey; record: LeaseRecord }[] = [];
    for (const member of keys) {
      const entry = this.view.get(member);
      if (entry !== undefined) out.push({ key: member, record: entry.record });
    }
    return out;
  }

  /** The view: who holds `key` now (synchronous; at most ~1 s stale: pub/sub + a resync every second). */
  holder(key: LeaseKey): LeaseRecord | undefined {
    return this.view.get(key)?.record;
  }

  /** Every key in the view with its holder's record (what a node joining starts from). */
  entries(): [LeaseKey, LeaseRecord][] {
    return [...this.view].map(([key, entry]) => [key, entry.record]);
  }

  /** Every TCP port leased in the cluster with its record (for the port mirrors). */
  ports(): Map<number, LeaseRecord> {
    const ports = new Map<number, LeaseRecord>();
    for (const [key, entry] of this.view) {
      if (key.startsWith("tcp:")) ports.set(Number.parseInt(key.slice(4), 10), entry.record);
    }
    return ports;
  }

  /** Alive nodes (from sockets:nodes), including this one, sorted by name. */
  nodes(): NodeInfo[] {
    return [...this.alive.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /** For /health and the metrics: this node, the link, the alive nodes, leases held here and elsewhere. */
  stats(): { node: string; redis: "up" | "down"; nodes: string[]; held: number; elsewhere: number } {
    let elsewhere = 0;
    for (const entry of this.view.values()) if (entry.record.node !== this.name) elsewhere++;
    return {
      node: this.name,
      redis: this.state === "up" ? "up" : "down",
      nodes: this.nodes().map((n) => n.name),
      held: this.held.size,
      elsewhere,
    };
  }

  /**
   * Takes the node out of the node list now (it keeps its leases, renewals stop registering it: a
   * shutting-down node). Never throws.
   */
  async deregister(): Promise<void> {
    this.leavingList = true;
    if (this.state !== "up" || this.clientsClosed) return;
    try {
      await this.eval(DEREGISTER_LUA, [NODES_KEY, NODE_PREFIX + this.name], [this.name, CHANNEL]);
    } catch {
      // Its registration expires within the lease.
    }
  }

  /** Releases every lease, deregisters the node, closes the clients. Never throws; bounded in time. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.stopping = true;
      this.stopTimers();
      if (this.state === "up" && !this.clientsClosed) {
        await Promise.allSettled([...this.held.keys()].map((key) => this.release(key)));
        try {
          await this.eval(DEREGISTER_LUA, [NODES_KEY, NODE_PREFIX + this.name], [this.name, CHANNEL]);
        } catch {
          // Its registration expires within the lease.
        }
      }
      this.held.clear();
      this.closeClients();
    })();
    return this.closing;
  }

  /**
   * Test hook: stops renewals, heartbeats and resyncs as a frozen process would (pub/sub still arrives).
   * Not for production code.
   */
  freezeForTest(): void {
    this.frozen = true;
    this.stopTimers();
  }

  /** Test hook: drops both connections without releasing anything, as a killed process would. */
  crashForTest(): void {
    this.stopping = true;
    this.stopTimers();
    this.closeClients();
  }

  private stopTimers(): void {
    clearTimeout(this.renewTimer);
    clearTimeout(this.resyncTimer);
    clearTimeout(this.expiryTimer);
    this.expiryTimer = undefined;
    this.renewTimer = undefined;
    this.resyncTimer = undefined;
  }

  private closeClients(): void {
    if (this.clientsClosed) return;
    this.clientsClosed = true;
    this.sentinel?.stop();
    this.unhook(this.cmd, this.sub);
    this.cmd.close();
    this.sub.close();
  }

  private downResult(): AcquireResult {
    return {
      ok: false,
      code: "redis_down",
      message: "the cluster's Redis is unreachable: new tunnels are refused until it is back",
    };
  }

  // Timers: each schedules the next when it is done (no overlap), never throws, stops on close/freeze.

  private renewTick = async (): Promise<void> => {
    try {
      this.reconnectIfGivenUp();
      if (this.state === "up") await this.renewAll();
      else if (this.cmd.connected) await this.recover();
    } catch {
      // Logged by the link's transition (markDown) or warnOnce.
    }
    if (!this.stopping && !this.frozen) this.renewTimer = setTimeout(this.renewTick, this.renewMs);
  };

  private resyncTick = async (): Promise<void> => {
    try {
      if (this.state === "up") await this.resync();
      else if (this.cmd.connected) await this.recover();
    } catch {
      // As above.
    }
    if (!this.stopping && !this.frozen) this.resyncTimer = setTimeout(this.resyncTick, RESYNC_MS);
  };

  /** After Bun's client gave up retrying, start it again (it then retries by itself). */
  private reconnectIfGivenUp(): void {
    if (!this.gaveUp || this.clientsClosed) return;
    this.gaveUp = false;
    if (!this.cmd.connected) this.cmd.connect().catch(() => {});
    if (!this.sub.connected) this.sub.connect().catch(() => {});
  }

  /**
   * Redis answers again (or the command client reconnected): put the secret back (Redis may have come
   * back empty), register, renew every lease (setting again those that are gone), and only then count
   * the link as up, so that holds() never sees "up" with validities that ran out during the outage.
   * One at a time.
   */
  private recover(): Promise<void> {
    this.recovering ??= (async () => {
      try {
        await this.command(() => this.cmd.send("SET", [SECRET_KEY, this.secret, "NX"]));
        const stored = await this.command(() => this.cmd.get(SECRET_KEY));
        if (stored !== this.secret) {
          this.warnOnce(
            "secret",
            "cluster: Redis holds another cluster secret than this node's: node links may fail",
          );
        }
        await this.heartbeat();
        await this.renewAll();
        if (this.stopping || this.state !== "down") return;
        this.state = "up";
        this.recoveredAt = performance.now();
        this.warned.clear();
        this.options.log.info("cluster: redis link back");
        await this.resync();
      } catch {
        // Still down: the next tick tries again.
      } finally {
        this.recovering = null;
      }
    })();
    return this.recovering;
  }

  /** Heartbeat and one renewal per held lease, pipelined. Rejects when Redis did not answer. */
  private async renewAll(): Promise<void> {
    const renewals = [...this.held].map(([key, mine]) => this.renew(key, mine));
    const results = await Promise.allSettled([this.heartbeat(), ...renewals]);
    const failed = results.find((r) => r.status === "rejected");
    if (failed) throw failed.reason;
  }

  /** Renews one lease: missing → set again; our epoch → PEXPIRE; else lost. */
  private async renew(key: LeaseKey, mine: Held): Promise<void> {
    const keys = [LEASE_PREFIX + key, EPOCH_KEY];
    if (mine.user !== undefined) keys.push(USER_PREFIX + mine.user);
    const seq = ++this.seq;
    const sentAt = performance.now();
    const reply = (await this.eval(RENEW_LUA, keys, [
      this.name,
      String(mine.epoch),
      mine.json,
      String(this.options.leaseMs),
      key,
      CHANNEL,
    ])) as [number, string?];
    // Released or acquired again meanwhile: that call's outcome stands.
    if (this.held.get(key) !== mine) return;
    if (reply[0] === 0) {
      const holder = reply[1] ?? null;
      this.apply(key, holder, seq);
      this.lose(key, holder === null ? undefined : parseRecord(holder));
      return;
    }
    mine.validUntil = sentAt + this.options.leaseMs;
    this.apply(key, mine.json, seq);
  }

  /**
   * Registers (or keeps registered) this node; a new registration is published by the script. Another
   * process that registered under this name meanwhile (e.g. while this node was cut off) is logged once.
   */
  private async heartbeat(): Promise<void> {
    if (this.leavingList) return;
    const reply = await this.eval(
      HEARTBEAT_LUA,
      [NODES_KEY, NODE_PREFIX + this.name],
      [this.name, this.nodeJson, String(this.options.leaseMs), CHANNEL, `"instance":"${this.instance}"`],
    );
    if (typeof reply === "string") {
      const other = parseNode(reply);
      this.warnOnce(
        "clash",
        `cluster: another node registered under this node's name ${this.name} (at ${other?.url ?? "(unknown URL)"}; this node: ${this.options.node.url}): give each node its own --node-name`,
      );
    }
  }

  /** Subscribes with a fresh listener, then drops the previous one (else each message would come twice). */
  private async subscribe(): Promise<void> {
    if (this.listener) this.stale.add(this.listener);
    const listener = (message: string) => {
      if (this.listener === listener) this.onMessage(message);
    };
    this.listener = listener;
    await this.sub.subscribe(CHANNEL, listener);
    for (const old of [...this.stale]) {
      this.stale.delete(old);
      await this.sub.unsubscribe(CHANNEL, old);
    }
  }

  /** A change was published: read that key (or the node list) at once. */
  private onMessage(message: string): void {
    if (this.stopping) return;
    if (message.startsWith("node:")) {
      void this.refreshNodes(false).catch(() => {});
      return;
    }
    const key = toLeaseKey(message);
    if (key === undefined || this.state !== "up") return;
    const seq = ++this.seq;
    this.command(() => this.cmd.get(LEASE_PREFIX + key)).then(
      (value) => this.apply(key, value, seq),
      () => {},
    );
  }

  /**
   * Rebuilds the view: SCAN the lease keys + MGET, apply what changed, drop what is gone (and publish
   * it: the other nodes learn of an expiry at once), refresh the node list. `initial`: no callbacks.
   */
  private async resync(initial = false): Promise<void> {
    if (this.resyncing) return;
    this.resyncing = true;
    try {
      const startSeq = ++this.seq;
      const found = new Map<LeaseKey, { value: string | null; seq: number }>();
      let cursor = "0";
      let complete = false;
      for (let round = 0; round < MAX_SCAN_ROUNDS; round++) {
        const [next, names] = (await this.command(() =>
          this.cmd.send("SCAN", [cursor, "MATCH", `${LEASE_PREFIX}*`, "COUNT", "1000"]),
        )) as [string, string[]];
        const keys = names.flatMap((name) => {
          const key = toLeaseKey(name.slice(LEASE_PREFIX.length));
          return key === undefined ? [] : [{ name, key }];
        });
        if (keys.length > 0) {
          const seq = ++this.seq;
          const values = (await this.command(() =>
            this.cmd.send(
              "MGET",
              keys.map((k) => k.name),
            ),
          )) as (string | null)[];
          keys.forEach(({ key }, i) => {
            found.set(key, { value: values[i] ?? null, seq });
          });
        }
        cursor = String(next);
        if (cursor === "0") {
          complete = true;
          break;
        }
      }
      for (const [key, { value, seq }] of found) this.apply(key, value, seq, initial);
      if (complete) {
        for (const key of [...this.view.keys()]) {
          if (found.has(key)) continue;
          if (this.apply(key, null, startSeq, initial)) {
            this.command(() => this.cmd.publish(CHANNEL, key)).catch(() => {});
          }
        }
        // Every read sent before startSeq has been answered: older stamps of free keys are not needed.
        for (const [key, stamp] of this.stamps) {
          if (stamp <= startSeq && !this.view.has(key)) this.stamps.delete(key);
        }
      }
      await this.refreshNodes(true, initial);
      this.warned.delete("resync");
    } catch (error) {
      if (!(error instanceof RedisDownError)) {
        this.warnOnce("resync", `cluster: reading the directory failed: ${describeError(error)}`);
      }
      throw error;
    } finally {
      this.resyncing = false;
    }
  }

  /** Reads the alive nodes; one at a time, once more if asked meanwhile. `fromResync`: publish departures. */
  private async refreshNodes(fromResync: boolean, initial = false): Promise<void> {
    if (this.nodesRefresh.running) {
      this.nodesRefresh.again = true;
      return;
    }
    this.nodesRefresh.running = true;
    try {
      for (let round = 0; round < 3; round++) {
        this.nodesRefresh.again = false;
        const [list, soonest] = (await this.eval(NODES_LUA, [NODES_KEY], [NODE_PREFIX, this.name])) as [
          string[],
          number,
        ];
        this.watchExpiry(soonest);
        const next = new Map<string, NodeInfo>();
        for (const json of list) {
          const info = parseNode(json);
          if (info !== undefined) next.set(info.name, info);
        }
        // This node counts as alive for itself whatever Redis says (e.g. just after Redis came back empty).
        next.set(this.name, this.self());
        const changed =
          next.size !== this.alive.size ||
          [...next].some(([name, info]) => this.alive.get(name)?.url !== info.url);
        if (changed) {
          if (fromResync) {
            for (const name of this.alive.keys()) {
              if (!next.has(name))
                this.command(() => this.cmd.publish(CHANNEL, `node:${name}`)).catch(() => {});
            }
          }
          this.alive = next;
          if (!initial) this.call("onNodes", () => this.options.onNodes?.(this.nodes()));
        } else this.alive = next; // digests may have changed
        if (!this.nodesRefresh.again) break;
      }
    } finally {
      this.nodesRefresh.running = false;
    }
  }

  /**
   * Reads the node list again right after the first other node's registration runs out, unless it is
   * renewed meanwhile (a later read moves the check): a node that stopped renewing is seen gone within
   * milliseconds of its expiry, not at the next resync.
   */
  private watchExpiry(soonestMs: number): void {
    clearTimeout(this.expiryTimer);
    this.expiryTimer = undefined;
    if (soonestMs < 0 || this.stopping || this.frozen) return;
    this.expiryTimer = setTimeout(() => {
      this.expiryTimer = undefined;
      if (this.state === "up") void this.refreshNodes(true).catch(() => {});
    }, soonestMs + 5);
  }

  /**
   * Applies one read of `key` (value null: free) sent as command number `seq`, unless a later one was
   * applied already. Calls onChange on a difference, and onLost when a read sent after our acquire
   * names another holder. Returns whether the view changed.
   */
  private apply(key: LeaseKey, value: string | null, seq: number, initial = false): boolean {
    const stamp = this.stamps.get(key);
    if (stamp !== undefined && stamp > seq) return false;
    this.stamps.set(key, seq);
    const before = this.view.get(key);
    if ((before?.json ?? null) === value) return false;
    const record = value === null ? undefined : parseRecord(value);
    if (value !== null && record !== undefined) this.view.set(key, { record, json: value });
    else this.view.delete(key);
    const place = placeOfLease(key);
    if (place !== key) {
      const set = this.members.get(place) ?? new Set<LeaseKey>();
      if (this.view.has(key)) this.members.set(place, set.add(key));
      else if (set.delete(key) && set.size === 0) this.members.delete(place);
    }
    if (!initial) this.call("onChange", () => this.options.onChange?.(key, record));
    const mine = this.held.get(key);
    if (mine && record && seq > mine.seq && (record.node !== this.name || record.epoch !== mine.epoch)) {
      this.lose(key, record);
    }
    return true;
  }

  /** A lease is no longer ours: stop serving it (holds() false) and tell the server. */
  private lose(key: LeaseKey, holder: LeaseRecord | undefined): void {
    if (!this.held.delete(key)) return;
    this.options.log.warn(`cluster: lost ${key} to node ${holder?.node ?? "(none)"}`);
    this.call("onLost", () => this.options.onLost(key));
  }

  /** Runs a callback of the server's; its error is logged, never breaks the directory's loops. */
  private call(what: string, run: () => void): void {
    try {
      run();
    } catch (error) {
      this.options.log.error(`cluster: ${what} callback failed: ${describeError(error)}`);
    }
  }

  private eval(script: string, keys: string[], args: string[]): Promise<unknown> {
    return this.command(() => this.cmd.send("EVAL", [script, String(keys.length), ...keys, ...args]));
  }

  /**
   * Runs one command with a deadline. A command that cannot reach Redis marks the link down (logged
   * once) and rejects with RedisDownError; an error reply rejects as it is.
   */
  private async command<T>(run: () => Promise<T>): Promise<T> {
    if (this.clientsClosed) throw new RedisDownError("the directory is closed");
    if (!this.cmd.connected) {
      this.markDown("connection closed");
      throw new RedisDownError("not connected");
    }
    const ms = this.commandTimeoutMs;
    try {
      return await withDeadline(run(), ms, () => new RedisDownError(`no answer within ${ms} ms`));
    } catch (error) {
      const code = (error as { code?: unknown } | null)?.code;
      const reply = code === "ERR_REDIS_SERVER_ERROR" && !UNAVAILABLE_REPLY.test(describeError(error));
      if (reply) throw error;
      this.markDown(describeError(error));
      throw error instanceof RedisDownError ? error : new RedisDownError(describeError(error));
    }
  }

  /** The link is down: logged once per transition; holds() keeps leases valid from here on. */
  private markDown(reason: string): void {
    if (this.state !== "up" || this.stopping) return;
    this.state = "down";
    this.downSince = performance.now();
    // With Sentinel: the master may have moved (READONLY, or gone): ask at once rather than at the next poll.
    this.sentinel?.check();
    this.options.log.warn(
      `cluster: redis link lost (${reason}); live tunnels keep serving, new ones are refused`,
    );
  }

  private warnOnce(tag: string, message: string): void {
    if (this.warned.has(tag)) return;
    this.warned.add(tag);
    this.options.log.warn(message);
  }
}
