/**
 * Redis Sentinel for a cluster's Redis (`--cluster redis+sentinel://HOST:PORT[,HOST:PORT…]/MASTER`):
 * Bun's RedisClient speaks to one Redis and knows no Sentinel, so the node asks the sentinels itself
 * which Redis is the master (`SENTINEL get-master-addr-by-name`), and follows a failover: it listens
 * for `+switch-master` on one sentinel (the next one when that connection drops) and asks again every
 * few seconds in case a message was missed. The directory then moves its two Redis clients to the new
 * master (directory.ts `switchTo`).
 *
 * The form is Lettuce's and redis-py's (`redis+sentinel://`), with a comma-separated host list as in
 * go-redis' failover options: one string that names every sentinel, so that a single `--cluster` flag
 * or `SOCKETS_CLUSTER` carries it. The password in the URL is the master's (and its replicas');
 * sentinels that need one of their own get it with `?sentinel_password=…`.
 * @module
 */

import { withDeadline } from "../../deadline.ts";
import { describeError, type Logger } from "../../log.ts";

/** A sentinel's address. */
export interface SentinelAddress {
  host: string;
  port: number;
}

/** A parsed `redis+sentinel://` URL. */
export interface SentinelUrl {
  sentinels: SentinelAddress[];
  /** The master's name as the sentinels monitor it. */
  master: string;
  /** TLS to the master and to the sentinels (`rediss+sentinel://`). */
  tls: boolean;
  /** The master's user and password (percent-encoded as in the URL), if any. */
  auth: string;
  /** Database number of the master, if given (`/MASTER/DB`). */
  db?: number;
  sentinelPassword?: string;
}

/** The default port of a sentinel. */
const SENTINEL_PORT = 26379;
/** How long one question to one sentinel may take. */
const ASK_TIMEOUT_MS = 1000;
/** How often the sentinels are asked again, besides the +switch-master messages. */
const POLL_MS = 2000;

/** Whether a `--cluster` URL names sentinels rather than one Redis. */
export function isSentinelUrl(text: string): boolean {
  return /^rediss?\+sentinel:\/\//i.test(text);
}

/**
 * Parses `redis+sentinel://[USER:PASSWORD@]HOST[:PORT][,HOST[:PORT]…]/MASTER[/DB][?sentinel_password=…]`.
 * @throws {Error} with one line saying what is wrong.
 */
export function parseSentinelUrl(text: string): SentinelUrl {
  const match = /^(rediss?)\+sentinel:\/\/(?:([^@/]*)@)?([^/?]+)\/([^/?]+)(?:\/(\d+))?\/?(?:\?(.*))?$/i.exec(
    text,
  );
  if (match === null)
    throw new Error(
      `'${redactSentinelUrl(text)}' is not a sentinel URL (redis+sentinel://HOST:PORT[,HOST:PORT…]/MASTER_NAME)`,
    );
  const [, scheme, auth = "", hosts = "", master = "", db, query = ""] = match;
  const sentinels = hosts.split(",").map((part) => {
    const hostPort = /^(?:\[([^\]]+)\]|([^:]+))(?::(\d{1,5}))?$/.exec(part.trim());
    const port = Number(hostPort?.[3] ?? SENTINEL_PORT);
    if (hostPort === null || port < 1 || port > 65535)
      throw new Error(`sentinel '${part}' is not HOST[:PORT]`);
    return { host: (hostPort[1] ?? hostPort[2]) as string, port };
  });
  const params = new URLSearchParams(query);
  const sentinelPassword = params.get("sentinel_password") ?? undefined;
  return {
    sentinels,
    master: decodeURIComponent(master),
    tls: (scheme as string).toLowerCase() === "rediss",
    auth,
    ...(db === undefined ? {} : { db: Number(db) }),
    ...(sentinelPassword === undefined ? {} : { sentinelPassword }),
  };
}

/** The URL without any password, for logs. */
export function redactSentinelUrl(text: string): string {
  return text.replace(/\/\/[^@/]*@/, "//***@").replace(/sentinel_password=[^&]*/, "sentinel_password=***");
}

/** The `redis://` (or `rediss://`) URL of the master at `host:port`, with the sentinel URL's password and db. */
export function masterUrl(parsed: SentinelUrl, host: string, port: number): string {
  const scheme = parsed.tls ? "rediss" : "redis";
  const at = parsed.auth === "" ? "" : `${parsed.auth}@`;
  const bracketed = host.includes(":") ? `[${host}]` : host;
  return `${scheme}://${at}${bracketed}:${port}${parsed.db === undefined ? "" : `/${parsed.db}`}`;
}

/** One RESP command. */
function resp(args: string[]): string {
  return `*${args.length}\r\n${args.map((arg) => `$${Buffer.byteLength(arg)}\r\n${arg}\r\n`).join("")}`;
}

/** A RESP value: a string, an integer, null, an error, or an array of those. */
export type RespValue = string | number | null | Error | RespValue[];

/**
 * Reads RESP values from a byte stream (replies and pub/sub pushes): {@link push} the bytes as they
 * come; each complete value is handed to `onValue`. A value bigger than 1 MiB is refused (a sentinel
 * sends short ones).
 */
export class RespReader {
  private buffer = "";

  constructor(private readonly onValue: (value: RespValue) => void) {}

  /** Takes more bytes; throws on a malformed or oversized value. */
  push(bytes: Uint8Array | string): void {
    this.buffer += typeof bytes === "string" ? bytes : Buffer.from(bytes).toString("latin1");
    if (this.buffer.length > 1024 * 1024) throw new Error("reply too long");
    for (;;) {
      const parsed = this.parse(0);
      if (parsed === undefined) return;
      this.buffer = this.buffer.slice(parsed.end);
      this.onValue(parsed.value);
    }
  }

  /** One value from `at`, or undefined while incomplete. */
  private parse(at: number): { value: RespValue; end: number } | undefined {
    const lineEnd = this.buffer.indexOf("\r\n", at);
    if (lineEnd === -1) return undefined;
    const kind = this.buffer[at];
    const line = this.buffer.slice(at + 1, lineEnd);
    const next = lineEnd + 2;
    switch (kind) {
      case "+":
        return { value: line, end: next };
      case "-":
        return { value: new Error(line), end: next };
      case ":":
        return { value: Number(line), end: next };
      case "$": {
        const length = Number(line);
        if (length < 0) return { value: null, end: next };
        if (this.buffer.length < next + length + 2) return undefined;
        const text = Buffer.from(this.buffer.slice(next, next + length), "latin1").toString();
        return { value: text, end: next + length + 2 };
      }
      case "*": {
        const count = Number(line);
        if (count < 0) return { value: null, end: next };
        const values: RespValue[] = [];
        let end = next;
        for (let i = 0; i < count; i++) {
          const item = this.parse(end);
          if (item === undefined) return undefined;
          values.push(item.value);
          end = item.end;
        }
        return { value: values, end };
      }
      default:
        throw new Error(`not RESP (${JSON.stringify(kind)})`);
    }
  }
}

/** A connection to one sentinel: commands answered in order, pushes (pub/sub) to `onPush`. */
class SentinelConnection {
  private readonly waiting: ((value: RespValue) => void)[] = [];
  private socket: { write(data: string): number; end(): void } | undefined;
  closed = false;

  private constructor(private readonly onPush: (value: RespValue) => void) {}

  /** Connects (TLS when asked), AUTHs with the sentinel password if any. Rejects within {@link ASK_TIMEOUT_MS}. */
  static async open(
    address: SentinelAddress,
    tls: boolean,
    password: string | undefined,
    onPush: (value: RespValue) => void = () => {},
    onClose: () => void = () => {},
  ): Promise<SentinelConnection> {
    const connection = new SentinelConnection(onPush);
    const reader = new RespReader((value) => {
      const waiter = connection.waiting.shift();
      if (waiter !== undefined) waiter(value);
      else connection.onPush(value);
    });
    const closed = () => {
      if (connection.closed) return;
      connection.closed = true;
      for (const waiter of connection.waiting.splice(0)) waiter(new Error("connection closed"));
      onClose();
    };
    let late = false;
    const connecting = Bun.connect({
      hostname: address.host,
      port: address.port,
      ...(tls ? { tls: true } : {}),
      socket: {
        data(_, data) {
          try {
            reader.push(data);
          } catch {
            connection.close();
          }
        },
        close: closed,
        error: closed,
      },
    });
    // A connection that comes up after the deadline is closed at once, not left open.
    connecting.then(
      (socket) => late && socket.end(),
      () => {},
    );
    const socket = await withDeadline(
      connecting,
      ASK_TIMEOUT_MS,
      `no connection to sentinel ${address.host}:${address.port} within ${ASK_TIMEOUT_MS} ms`,
    ).catch((error) => {
      late = true;
      throw error;
    });
    connection.socket = socket;
    if (password !== undefined) {
      const reply = await connection.send(["AUTH", password]);
      if (reply instanceof Error) {
        connection.close();
        throw new Error(`sentinel ${address.host}:${address.port} refused the password: ${reply.message}`);
      }
    }
    return connection;
  }

  /** Sends one command; resolves with its reply (an Error value for an error reply), rejects on timeout. */
  send(args: string[]): Promise<RespValue> {
    if (this.closed || this.socket === undefined) return Promise.reject(new Error("connection closed"));
    const reply = new Promise<RespValue>((resolve) => this.waiting.push(resolve));
    this.socket.write(resp(args));
    return withDeadline(reply, ASK_TIMEOUT_MS, `no answer from the sentinel within ${ASK_TIMEOUT_MS} ms`);
  }

  /** Subscribes: from here on every value is a push. */
  subscribe(channel: string): void {
    this.socket?.write(resp(["SUBSCRIBE", channel]));
  }

  close(): void {
    this.closed = true;
    this.socket?.end();
  }
}

/**
 * Asks the sentinels in turn where the master is; the first that knows answers.
 * @throws {Error} with one line naming what each sentinel said when none knows.
 */
export async function askMaster(parsed: SentinelUrl): Promise<{ host: string; port: number }> {
  const said: string[] = [];
  for (const address of parsed.sentinels) {
    let connection: SentinelConnection | undefined;
    try {
      connection = await SentinelConnection.open(address, parsed.tls, parsed.sentinelPassword);
      const reply = await connection.send(["SENTINEL", "get-master-addr-by-name", parsed.master]);
      if (Array.isArray(reply) && typeof reply[0] === "string" && reply[1] !== undefined)
        return { host: reply[0], port: Number(reply[1]) };
      said.push(
        `${address.host}:${address.port}: ${reply instanceof Error ? reply.message : `no master named '${parsed.master}'`}`,
      );
    } catch (error) {
      said.push(`${address.host}:${address.port}: ${describeError(error)}`);
    } finally {
      connection?.close();
    }
  }
  throw new Error(`no sentinel named the master '${parsed.master}' (${said.join("; ")})`);
}

/**
 * Follows the master of a sentinel URL: `onMaster(host, port)` whenever the sentinels name another
 * master than the last one (a failover), from a `+switch-master` message or the periodic question.
 */
export class SentinelWatch {
  private current: string;
  private subscription: SentinelConnection | undefined;
  private next = 0;
  private pollTimer: ReturnType<typeof setTimeout> | undefined;
  private stopped = false;
  private asking = false;

  constructor(
    private readonly parsed: SentinelUrl,
    first: { host: string; port: number },
    private readonly onMaster: (host: string, port: number) => void,
    private readonly log: Logger,
  ) {
    this.current = `${first.host}:${first.port}`;
    void this.listen();
    this.pollTimer = setTimeout(this.poll, POLL_MS);
  }

  /** Asks the sentinels now (e.g. Redis answered READONLY: the master we use was demoted). */
  check(): void {
    void this.ask();
  }

  /** Stops listening and asking. */
  stop(): void {
    this.stopped = true;
    clearTimeout(this.pollTimer);
    this.subscription?.close();
  }

  private poll = async (): Promise<void> => {
    await this.ask();
    if (!this.stopped) this.pollTimer = setTimeout(this.poll, POLL_MS);
  };

  private async ask(): Promise<void> {
    if (this.asking || this.stopped) return;
    this.asking = true;
    try {
      const master = await askMaster(this.parsed);
      this.found(master.host, master.port);
    } catch {
      // Sentinels away too: the next poll asks again; the directory keeps its current master.
    } finally {
      this.asking = false;
    }
  }

  private found(host: string, port: number): void {
    const where = `${host}:${port}`;
    if (this.stopped || where === this.current) return;
    this.current = where;
    this.log.info(`cluster: sentinels name ${where} as master '${this.parsed.master}'`);
    this.onMaster(host, port);
  }

  /** Subscribes to +switch-master on one sentinel after another (the next one when a connection drops). */
  private async listen(): Promise<void> {
    if (this.stopped) return;
    const address = this.parsed.sentinels[this.next % this.parsed.sentinels.length] as SentinelAddress;
    this.next++;
    try {
      const connection = await SentinelConnection.open(
        address,
        this.parsed.tls,
        this.parsed.sentinelPassword,
        (value) => {
          // ["message", "+switch-master", "NAME OLDIP OLDPORT NEWIP NEWPORT"]
          if (!Array.isArray(value) || value[0] !== "message" || typeof value[2] !== "string") return;
          const [name, , , host, port] = value[2].split(" ");
          if (name === this.parsed.master && host !== undefined && port !== undefined)
            this.found(host, Number(port));
        },
        () => {
          if (!this.stopped) setTimeout(() => void this.listen(), 500);
        },
      );
      if (this.stopped) return connection.close();
      this.subscription = connection;
      connection.subscribe("+switch-master");
    } catch {
      if (!this.stopped) setTimeout(() => void this.listen(), 500);
    }
  }
}
