/**
 * Inspector store: the last N HTTP exchanges (a ring, 500 by default) and TCP connections (open ones,
 * and a ring of recent ones) the client's taps captured, with the client's own figures (connections
 * open, bytes each way) and subscribers told of every change (the inspector's live stream). Memory is
 * bounded twice: by the ring's length and by a total of kept body bytes, past which the oldest
 * exchanges go first.
 *
 * Exchanges the store lets go are handed back to the capture for reuse ({@link InspectorStore.reusable}),
 * on the terms slabs are (slabs.ts): an exchange is read only while kept, or by a reader that holds the
 * slabs meanwhile; one read long after it left may show a later exchange's figures.
 * @module
 */

import { DEFAULT_BODY_CAP, type HttpExchange, type TcpConnection, wallClock } from "./capture.ts";
import { RequestHistory } from "./history.ts";
import { DEFAULT_CAPACITY } from "./settings.ts";
import { SlabPool } from "./slabs.ts";

/** The most body bytes all kept exchanges may hold together, by default (64 MiB). */
export const DEFAULT_BODY_BUDGET = 64 * 1024 * 1024;

/** Exchanges waiting for reuse at most (one is taken for each pushed out, so few wait). */
const MAX_SPARE = 64;

/** What subscribers hear. */
export type StoreEvent =
  | { type: "request"; exchange: HttpExchange }
  | { type: "connection"; connection: TcpConnection }
  | { type: "clear" };

/** The client's own figures, kept by its taps. */
export interface ClientFigures {
  /** Visitor connections open now (every tunnel kind). */
  connectionsOpen: number;
  /** Visitor connections since the start. */
  connectionsTotal: number;
  /** Bytes from visitors to local services. */
  bytesIn: number;
  /** Bytes from local services to visitors. */
  bytesOut: number;
  /** HTTP requests seen since the start (kept or not). */
  requestsTotal: number;
}

/** A fixed-size ring, oldest first when listed. */
export class Ring<T> {
  private readonly items: (T | undefined)[];
  private start = 0;
  private count = 0;

  constructor(readonly capacity: number) {
    if (!(Number.isInteger(capacity) && capacity >= 1)) throw new RangeError("capacity must be ≥ 1");
    this.items = new Array(capacity);
  }

  /** Items held. */
  get length(): number {
    return this.count;
  }

  /** Adds `item`; returns the item it pushed out when full. */
  push(item: T): T | undefined {
    if (this.count < this.capacity) {
      this.items[(this.start + this.count++) % this.capacity] = item;
      return undefined;
    }
    const out = this.items[this.start];
    this.items[this.start] = item;
    this.start = (this.start + 1) % this.capacity;
    return out;
  }

  /** The item `index` places after the oldest (undefined past the newest). */
  at(index: number): T | undefined {
    return index >= 0 && index < this.count ? this.items[(this.start + index) % this.capacity] : undefined;
  }

  /** Removes and returns the oldest item. */
  shift(): T | undefined {
    if (this.count === 0) return undefined;
    const out = this.items[this.start];
    this.items[this.start] = undefined;
    this.start = (this.start + 1) % this.capacity;
    this.count--;
    return out;
  }

  /** The items, newest first, at most `limit`. */
  newest(limit = this.count): T[] {
    const out: T[] = [];
    for (let i = this.count - 1; i >= 0 && out.length < limit; i--)
      out.push(this.items[(this.start + i) % this.capacity] as T);
    return out;
  }

  /** Drops every item. */
  clear(): void {
    this.items.fill(undefined);
    this.start = 0;
    this.count = 0;
  }
}

/** How big a store is. */
export interface StoreSettings {
  /** Exchanges kept (and recent TCP connections), default {@link DEFAULT_CAPACITY}. */
  capacity?: number;
  /** Bytes kept of each body, default 1 MiB. */
  bodyCap?: number;
  /** Body bytes all exchanges may keep together, default {@link DEFAULT_BODY_BUDGET}. */
  bodyBudget?: number;
}

/** Where captured exchanges and connections live (see the module header). */
export class InspectorStore {
  /** Bytes kept of each body. */
  readonly bodyCap: number;
  /** Body bytes all kept exchanges may hold together. */
  readonly bodyBudget: number;
  /** The client's figures, counted by the taps. */
  readonly stats: ClientFigures = {
    connectionsOpen: 0,
    connectionsTotal: 0,
    bytesIn: 0,
    bytesOut: 0,
    requestsTotal: 0,
  };
  /**
   * Kept exchanges, oldest first. Their numbers are consecutive (each new one is pushed, the oldest go
   * first), so one is found by its number's distance from the oldest: no map, no id string per request.
   */
  private readonly exchanges: Ring<HttpExchange>;
  /** Requests per second and latency percentiles over the last minutes, for the charts. */
  readonly history = new RequestHistory();
  /** Where the taps keep captured bytes; slabs are reused once their exchanges left the ring. */
  readonly slabs = new SlabPool();
  /** The number of the oldest exchange kept (meaningful while any is kept). */
  private oldest = 1;
  private readonly open = new Map<string, TcpConnection>();
  private readonly recent: Ring<TcpConnection>;
  private readonly subscribers = new Set<(event: StoreEvent) => void>();
  /** Exchanges let go, for the capture to reuse. */
  private readonly spare: HttpExchange[] = [];
  private nextRequest = 1;
  private nextConnection = 1;
  private bodyBytes = 0;

  constructor(settings: StoreSettings = {}) {
    const capacity = settings.capacity ?? DEFAULT_CAPACITY;
    this.exchanges = new Ring(capacity);
    this.recent = new Ring(capacity);
    this.bodyCap = settings.bodyCap ?? DEFAULT_BODY_CAP;
    this.bodyBudget = settings.bodyBudget ?? DEFAULT_BODY_BUDGET;
  }

  /** Exchanges kept now. */
  get size(): number {
    return this.exchanges.length;
  }

  /** Most exchanges kept. */
  get capacity(): number {
    return this.exchanges.capacity;
  }

  /** The number the next exchange will get. */
  get nextSeq(): number {
    return this.nextRequest;
  }

  /** The number of the oldest exchange kept (the next one's when none is). */
  get firstKept(): number {
    return this.exchanges.length === 0 ? this.nextRequest : this.oldest;
  }

  /** Hears every change until the returned function is called. */
  subscribe(listener: (event: StoreEvent) => void): () => void {
    this.subscribers.add(listener);
    return () => this.subscribers.delete(listener);
  }

  private publish(event: StoreEvent): void {
    for (const listener of this.subscribers) listener(event);
  }

  /** Tells subscribers of an exchange's change; nothing is built when nobody listens. */
  private publishExchange(exchange: HttpExchange): void {
    if (this.subscribers.size > 0) this.publish({ type: "request", exchange });
  }

  /** A new exchange (its request head just arrived): gives it an id, keeps it, tells subscribers. */
  add(exchange: HttpExchange): void {
    const seq = this.nextRequest++;
    exchange.seq = seq;
    this.stats.requestsTotal++;
    if (this.exchanges.length === 0) this.oldest = seq;
    const out = this.exchanges.push(exchange);
    if (out !== undefined) this.forget(out);
    this.publishExchange(exchange);
  }

  /** The kept exchange numbered `seq`, if any. */
  private bySeq(seq: number): HttpExchange | undefined {
    return this.exchanges.at(seq - this.oldest);
  }

  /** An exchange changed (its response ended, or it failed): counts its bodies, tells subscribers. */
  update(exchange: HttpExchange): void {
    // Its second by the capture's own clock reading (its end): no clock read here.
    if (exchange.state !== "pending")
      this.history.record(
        exchange.state === "complete" ? exchange.durationMs : undefined,
        wallClock(exchange.startedAt + (exchange.durationMs ?? 0)),
      );
    if (this.bySeq(exchange.seq) !== exchange) return; // cleared or pushed out meanwhile
    this.bodyBytes += bodyBytesOf(exchange);
    this.publishExchange(exchange); // first: a listener that keeps it holds the slabs before any trim
    // Over the budget: the oldest exchanges go (never the one just completed).
    for (let guard = this.exchanges.length; this.bodyBytes > this.bodyBudget && guard > 1; guard--) {
      const out = this.exchanges.shift();
      if (out === undefined) break;
      this.forget(out);
    }
  }

  /** The oldest exchange left the ring (pushed out or over the budget). */
  private forget(exchange: HttpExchange): void {
    this.oldest = exchange.seq + 1;
    if (exchange.state === "pending") return; // its tap still writes to it
    this.bodyBytes -= bodyBytesOf(exchange);
    if (exchange.reusable === true && this.slabs.idle && this.spare.length < MAX_SPARE)
      this.spare.push(exchange);
  }

  /**
   * An exchange the store has let go, for the capture to fill anew (undefined when none waits): no
   * reader can reach it any more (it is complete, out of the ring, and nobody held the slabs).
   */
  reusable(): HttpExchange | undefined {
    return this.spare.pop();
  }

  /** The exchange with this id, if still kept. */
  get(id: string): HttpExchange | undefined {
    if (!/^req_[1-9][0-9]{0,15}$/.test(id)) return undefined;
    return this.bySeq(Number(id.slice(4)));
  }

  /** Kept exchanges, newest first: at most `limit`, only `tunnelName`'s when given. */
  list(limit = this.capacity, tunnelName?: string): HttpExchange[] {
    if (tunnelName === undefined) return this.exchanges.newest(limit);
    return this.exchanges
      .newest()
      .filter((e) => e.tunnelName === tunnelName)
      .slice(0, limit);
  }

  /** Forgets every exchange and recent TCP connection (open ones stay). */
  clear(): void {
    this.exchanges.clear();
    this.spare.length = 0;
    this.recent.clear();
    this.bodyBytes = 0;
    this.publish({ type: "clear" });
  }

  /** A TCP visitor connected: a record, open until {@link closeConnection}. */
  openConnection(tunnelName: string, remote: string): TcpConnection {
    const connection: TcpConnection = {
      id: `conn_${this.nextConnection++}`,
      tunnelName,
      remote,
      start: Date.now(),
      startedAt: performance.now(),
      bytesIn: 0,
      bytesOut: 0,
    };
    this.open.set(connection.id, connection);
    this.publish({ type: "connection", connection });
    return connection;
  }

  /** A TCP connection ended: moves to the recent ring. */
  closeConnection(connection: TcpConnection): void {
    this.open.delete(connection.id);
    this.recent.push(connection);
    this.publish({ type: "connection", connection });
  }

  /** TCP connections: open ones, then recent ones, newest first, at most `limit` in all. */
  connections(limit = this.capacity * 2): TcpConnection[] {
    const open = [...this.open.values()].reverse();
    return [...open, ...this.recent.newest()].slice(0, limit);
  }

  /** Body bytes the kept exchanges hold. */
  get keptBodyBytes(): number {
    return this.bodyBytes;
  }
}

function bodyBytesOf(exchange: HttpExchange): number {
  return exchange.request.kept + (exchange.response?.kept ?? 0);
}
