/**
 * Memory budgets: how many bytes one side of a session may buffer in one direction (received and not
 * yet written to a socket, or sent and not yet acknowledged), alone and together with every other
 * session of the server. A stream's window bounds what one stream buffers; budgets bound the sum over
 * streams, tunnels and clients, which windows alone cannot (4096 streams × a window each).
 *
 * A budget over its limit does not drop or refuse bytes already granted: it tells its owner to stop
 * taking more (the server stops reading that client's WebSocket, or stops reading its visitors), and
 * tells it to go on once use fell to {@link RESUME_FRACTION} of the limit (hysteresis: no flapping per
 * frame). Counting is per chunk (a frame, a write), never per byte.
 * @module
 */

/** A budget over its limit lets its owner go on once its use fell to this fraction of the limit. */
export const RESUME_FRACTION = 0.75;

/** The {@link Budget.held} of every budget that never held one back (never added to). */
const NONE_HELD: ReadonlySet<Budget> = new Set<Budget>();

/** A byte counter with a limit, optionally counted into a wider (server-wide) budget too. */
export class Budget {
  /** Bytes counted now. */
  used = 0;
  /** The most bytes counted since the last {@link Budget.takePeak}. */
  private peak = 0;
  private over = false;
  /**
   * Narrower budgets held back because this one was over (server-wide: the clients it paused). Only a
   * wider budget ever holds any: an empty shared set spares every session's budgets one each.
   */
  private held = NONE_HELD as Set<Budget>;

  /**
   * @param limit most bytes before the owner is told to stop taking more.
   * @param parent a wider budget these bytes also count against (the server-wide one).
   * @param onChange told `true` when the owner must stop taking bytes, `false` when it may go on.
   */
  constructor(
    readonly limit: number,
    private readonly parent?: Budget,
    private readonly onChange?: (over: boolean) => void,
  ) {}

  /** True while the owner is told to stop taking bytes. */
  get isOver(): boolean {
    return this.over;
  }

  /** Counts `n` more bytes (negative: fewer). */
  add(n: number): void {
    this.used += n;
    const parent = this.parent;
    if (parent !== undefined) parent.used += n;
    if (n > 0) {
      if (this.used > this.peak) this.peak = this.used;
      if (parent !== undefined && parent.used > parent.peak) parent.peak = parent.used;
      if (this.over) return;
      if (this.used > this.limit) this.set(true);
      else if (parent !== undefined && parent.used > parent.limit) {
        parent.hold(this);
        this.set(true);
      }
    } else {
      if (this.over) this.recheck();
      if (parent !== undefined && parent.held.size > 0 && parent.used <= parent.limit * RESUME_FRACTION)
        parent.release();
    }
  }

  /**
   * Whether `n` more bytes fit, here and in the wider budget (a stream asks before it grows its window,
   * so that growth stops where the budgets say so).
   */
  fits(n: number): boolean {
    const parent = this.parent;
    return this.used + n <= this.limit && (parent === undefined || parent.used + n <= parent.limit);
  }

  /** The most bytes counted since the last call (or since the start); the next period starts at `used`. */
  takePeak(): number {
    const peak = Math.max(this.peak, this.used);
    this.peak = this.used;
    return peak;
  }

  /** Forgets this budget's bytes and its place in the wider one (its owner is gone). */
  dispose(): void {
    const parent = this.parent;
    if (parent !== undefined) {
      parent.held.delete(this);
      parent.used -= this.used;
      if (parent.held.size > 0 && parent.used <= parent.limit * RESUME_FRACTION) parent.release();
    }
    this.used = 0;
    this.over = false;
  }

  private recheck(): void {
    const parent = this.parent;
    if (this.used > this.limit * RESUME_FRACTION) return;
    if (parent !== undefined && parent.used > parent.limit * RESUME_FRACTION) {
      parent.hold(this); // still over the wider one: it lets this go when it has room
      return;
    }
    parent?.held.delete(this);
    this.set(false);
  }

  private hold(budget: Budget): void {
    if (this.held === NONE_HELD) this.held = new Set();
    this.held.add(budget);
  }

  /** Room again in this (wider) budget: let every budget it held back recheck. */
  private release(): void {
    for (const budget of [...this.held]) {
      this.held.delete(budget);
      if (budget.over) budget.recheck();
    }
  }

  private set(over: boolean): void {
    this.over = over;
    this.onChange?.(over);
  }
}

/**
 * Default per-client budget, per direction (`--client-budget`): four streams at a full default window
 * (16 MiB each), so that a client's parallel long-path transfers are not held back by it.
 */
export const DEFAULT_CLIENT_BUDGET = 64 * 1024 * 1024;

/** Default server-wide budget, per direction (`--server-budget`): four such clients at once. */
export const DEFAULT_SERVER_BUDGET = 256 * 1024 * 1024;
