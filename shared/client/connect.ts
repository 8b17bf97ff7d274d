/**
 * The client's side of the control connection: open the WebSocket (TLS, API key, protocol version),
 * wait for the server's hello, explain failures in one line, and report send-side backpressure.
 * @module
 */

import { lookup } from "node:dns/promises";
import { isIP } from "node:net";
import { connect as tlsConnect } from "node:tls";
import { describeError } from "../log.ts";
import { SendWatch } from "../relay/send-watch.ts";
import {
  AUTH_HEADER,
  CONNECT_PATH,
  type Hello,
  NODE_HEADER,
  parseControl,
  RESUME_HEADER,
  STANDBY_PATH,
  SUBPROTOCOL,
  type SyncMessage,
} from "../wire/protocol.ts";

/**
 * One server to try: the URL as given and, for a host name with several addresses, the address to
 * dial (the URL's name still goes in the Host header, the TLS SNI and the certificate check).
 */
export interface ServerTarget {
  url: URL;
  address?: string;
}

/** How logs name a target: its URL without the trailing slash, and the address when it has one. */
export function targetLabel(target: ServerTarget): string {
  const { url, address } = target;
  const base = `${url.protocol}//${url.host}${url.pathname === "/" ? "" : url.pathname}`;
  return address === undefined ? base : `${base} (${address})`;
}

/** Whether two targets are the same server (same URL, same address). */
export function sameTarget(a: ServerTarget, b: ServerTarget): boolean {
  return a.url.href === b.url.href && a.address === b.address;
}

/** Every address of a host name, in the resolver's order. */
export type AddressLookup = (host: string) => Promise<string[]>;

const lookupAll: AddressLookup = async (host) =>
  (await lookup(host, { all: true })).map((entry) => entry.address);

/**
 * The servers to try, in order: each URL whose host name has several A/AAAA records becomes one target
 * per address (a DNS round robin is a list of servers). Resolved at each call, since the records may
 * change between attempts. An IP literal, a name with one address, and a name that does not resolve
 * stay one target dialled by name (the dial then explains the failure). Repeats are dropped.
 */
export async function resolveServers(
  urls: readonly URL[],
  resolve: AddressLookup = lookupAll,
): Promise<ServerTarget[]> {
  const expanded = await Promise.all(
    urls.map(async (url): Promise<ServerTarget[]> => {
      const host = url.hostname.replace(/^\[|\]$/g, "");
      if (isIP(host) !== 0) return [{ url }];
      const addresses = await resolve(host).catch(() => [] as string[]);
      const unique = [...new Set(addresses)];
      return unique.length > 1 ? unique.map((address) => ({ url, address })) : [{ url }];
    }),
  );
  const targets: ServerTarget[] = [];
  for (const target of expanded.flat())
    if (!targets.some((seen) => sameTarget(seen, target))) targets.push(target);
  return targets;
}

/** How to reach the server. */
export interface ConnectOptions {
  url: URL;
  /** Dial this address instead of resolving the URL's host (which still names the server to TLS and HTTP). */
  address?: string;
  apiKey?: string;
  ca?: string;
  insecure?: boolean;
  /** Give up after this long (ms). */
  timeout?: number;
  /** The session to resume, from an earlier hello. */
  resume?: { session: string; secret: string };
}

/** An open, greeted control connection. */
export interface ControlConnection {
  ws: WebSocket;
  hello: Hello;
  /** The server's stream positions, when `hello.resumed`. */
  sync?: SyncMessage;
  /** Sends a binary frame and reports backpressure through {@link ControlConnection.onBlocked}. */
  send(frame: Uint8Array): void;
  /** Called with true when the send buffer is past its high mark, false once it drained below the low. */
  onBlocked: (blocked: boolean) => void;
}

/** Connection failure with a one-line, user-facing message. */
export class ConnectError extends Error {
  override name = "ConnectError";
  /**
   * @param message one line for the user.
   * @param fatal true when trying again cannot help (auth rejected, version mismatch, resume refused).
   */
  constructor(
    message: string,
    readonly fatal = false,
  ) {
    super(message);
  }
}

const TLS_CODES = /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|TLS|SSL|HOSTNAME|ALTNAME/i;

/** Opens the control WebSocket and waits for the server's hello. */
export async function connectControl(options: ConnectOptions): Promise<ControlConnection> {
  const headers: Record<string, string> = {};
  if (options.resume) headers[RESUME_HEADER] = `${options.resume.session} ${options.resume.secret}`;
  const { ws, url, dial, tls } = dialWebSocket(CONNECT_PATH, options, headers);
  const timeout = options.timeout ?? 10_000;

  const greeting = await new Promise<{ hello: Hello; sync?: SyncMessage }>((resolve, reject) => {
    const timer = setTimeout(() => {
      done(); // the error event terminate() may raise must not start explainFailure's probes
      ws.terminate();
      reject(
        new ConnectError(
          `no answer from ${options.url.href} within ${timeout / 1000} s${portNote(options.url)}`,
        ),
      );
    }, timeout);
    const fail = () => {
      clearTimeout(timer);
      explainFailure(url, dial, headers, tls).then(reject, reject);
    };
    let hello: Hello | undefined;
    const onMessage = (event: MessageEvent) => {
      try {
        const message = typeof event.data === "string" ? parseControl(event.data) : undefined;
        if (hello === undefined && message?.type === "hello") hello = message;
        else if (hello?.resumed && message?.type === "sync") {
          done();
          return resolve({ hello, sync: message });
        } else throw new Error(`unexpected ${message?.type ?? "binary frame"} before the session started`);
        if (!hello.resumed) {
          done();
          resolve({ hello });
        }
      } catch (error) {
        done();
        ws.close();
        reject(
          new ConnectError(
            `server at ${options.url.href} does not speak ${SUBPROTOCOL}: ${describeError(error)}`,
            true,
          ),
        );
      }
    };
    const done = () => {
      clearTimeout(timer);
      ws.removeEventListener("error", fail);
      ws.removeEventListener("message", onMessage);
    };
    ws.addEventListener("error", fail, { once: true });
    ws.addEventListener("message", onMessage);
  });

  const queue = new SendWatch(ws, (blocked) => connection.onBlocked(blocked));
  const connection: ControlConnection = {
    ws,
    ...greeting,
    onBlocked: () => {},
    send(frame) {
      ws.send(frame);
      queue.sent();
    },
  };
  return connection;
}

/**
 * Opens a standby connection to a cluster node (PROTOCOL.md "Standby connections"): an idle WebSocket
 * that the node closes with {@link CloseCode.MoveHere} when `node` (the client's own node) leaves the
 * cluster. Returned at once; its events are the caller's.
 */
export function openStandby(options: ConnectOptions & { node: string }): WebSocket {
  return dialWebSocket(STANDBY_PATH, options, { [NODE_HEADER]: options.node }).ws;
}

/** A WebSocket to `path` on the server, opening now: the URL asked for, the one dialled, and its TLS options. */
function dialWebSocket(
  path: string,
  options: ConnectOptions,
  headers: Record<string, string>,
): { ws: WebSocket; url: URL; dial: URL; tls: ProbeTls } {
  const url = new URL(path, options.url);
  if (options.apiKey) headers[AUTH_HEADER] = `Bearer ${options.apiKey}`;
  const tls: ProbeTls = { ca: options.ca, rejectUnauthorized: !options.insecure };
  // One address of several: dial it, but name the server as the URL does. Bun's WebSocket (1.4.5) takes
  // tls.serverName for both the SNI and the certificate check, and a Host header of the caller's.
  const dial = new URL(url);
  if (options.address !== undefined) {
    dial.hostname = isIP(options.address) === 6 ? `[${options.address}]` : options.address;
    headers.Host = url.host;
    tls.serverName = url.hostname;
  }
  const ws = new WebSocket(dial.href, { protocols: [SUBPROTOCOL], headers, tls } as unknown as string[]);
  ws.binaryType = "arraybuffer";
  return { ws, url, dial, tls };
}

/** The server's default control port, suggested when a URL without a port reached nothing. */
const DEFAULT_SERVER_PORT = 7070;

/** Statuses a sockets server refuses an upgrade with, each as one line of text/plain. */
const REFUSALS = new Set([400, 401, 403, 426, 429, 503]);

/** How long each diagnostic probe may take. */
const PROBE_MS = 3000;

/** The port a URL means, written or implied by its scheme. */
function portOf(url: URL): number {
  return Number(url.port || (url.protocol === "wss:" ? 443 : 80));
}

/**
 * A URL without a port means 80 or 443, rarely where a sockets server listens: every failure to reach
 * one says so, with the URL the user probably meant.
 */
function portNote(url: URL): string {
  if (url.port !== "") return "";
  return ` (the URL has no port, so ${url.protocol}// meant ${portOf(url)}; a sockets server listens on ${DEFAULT_SERVER_PORT} unless told otherwise: --server ${url.protocol}//${url.host}:${DEFAULT_SERVER_PORT})`;
}

/**
 * The WebSocket API reports every failed upgrade the same way; ask the same URL over plain HTTP(S) to
 * learn why: the server's refusal (401, 426), something that is no sockets server, a TLS failure (the
 * wrong scheme, or a certificate for another name), or no route to it.
 */
async function explainFailure(
  url: URL,
  dial: URL,
  headers: Record<string, string>,
  tls: ProbeTls,
): Promise<ConnectError> {
  const httpUrl = new URL(dial);
  httpUrl.protocol = url.protocol === "wss:" ? "https:" : "http:";
  const where = `${url.protocol}//${url.host}`;
  let response: Response;
  try {
    response = await fetch(httpUrl, {
      headers: { ...headers, "sec-websocket-protocol": SUBPROTOCOL },
      tls,
      signal: AbortSignal.timeout(5000),
      redirect: "manual",
    } as RequestInit);
  } catch (error) {
    return explainUnreachable(url, dial, error);
  }
  const type = response.headers.get("content-type") ?? "";
  const body = (await response.text()).trim().split("\n")[0] ?? "";
  // Anything else (a web page, a redirect, a 404) comes from another program on that port: its body
  // would only confuse.
  if (!REFUSALS.has(response.status) || !type.startsWith("text/plain")) {
    const location = response.headers.get("location");
    const answer = `${response.status}${response.statusText ? ` ${response.statusText}` : ""}${type ? `, ${type.split(";")[0]}` : ""}${location ? `, to ${location}` : ""}`;
    // A reverse proxy in front of the server answers these (as a page) while the server behind it is down.
    if (response.status === 502 || response.status === 503 || response.status === 504)
      return new ConnectError(
        `${where} answered HTTP ${answer}: a proxy there cannot reach the sockets server behind it`,
      );
    return new ConnectError(
      `${where} is not a sockets server (it answered HTTP ${answer} instead of a WebSocket upgrade); check the host and port in --server${portNote(url)}`,
    );
  }
  if (response.status === 401)
    return headers[AUTH_HEADER] === undefined
      ? new ConnectError(`server ${where} wants an API key and none was sent: set SOCKETS_API_KEY`, true)
      : new ConnectError(`server ${where} rejected the API key: ${body}`, true);
  // 426: another protocol version; 403: the resume secret does not match. Neither heals by retrying.
  const fatal = response.status === 426 || response.status === 403;
  return new ConnectError(`server ${where} refused the connection: ${response.status} ${body}`, fatal);
}

/** TLS settings of the dial and of the probes that explain its failure. */
interface ProbeTls {
  ca?: string;
  rejectUnauthorized: boolean;
  /** The URL's host name, when the dial goes to one of its addresses. */
  serverName?: string;
}

/**
 * The request never got an HTTP answer: refused, the wrong scheme, a certificate problem, or no route.
 * Messages name `url` (what the user wrote); the probes go where the dial went (`dial`).
 */
async function explainUnreachable(url: URL, dial: URL, error: unknown): Promise<ConnectError> {
  const where = `${url.protocol}//${url.host}`;
  const host = dial.hostname.replace(/^\[|\]$/g, "");
  const name = url.hostname.replace(/^\[|\]$/g, "");
  const port = portOf(url);
  const code = (error as { code?: string }).code ?? "";
  // Bun's fetch appends advice about its own `verbose` option, which means nothing to a user.
  const reason = describeError(error).replace(/\.?\s*For more information, pass `verbose: true`.*$/, "");
  if (code === "ConnectionRefused" || code === "ECONNREFUSED")
    return new ConnectError(`cannot reach server ${where}: connection refused${portNote(url)}`);
  if (url.protocol === "wss:" && TLS_CODES.test(`${code} ${reason}`)) {
    if (/ALTNAME|HOSTNAME/i.test(`${code} ${reason}`)) {
      const names = (await peerCertificate(host, port, name))?.names;
      if (names !== undefined) {
        const usable = names.find((n) => !n.includes("*"));
        const example = usable === undefined ? "" : ` (e.g. wss://${formatName(usable)}:${port})`;
        return new ConnectError(
          `the certificate of ${where} is for ${names.join(", ")}, not ${url.hostname}: name the server by one of those in --server${example}, or give the server a certificate for ${url.hostname}`,
        );
      }
    }
    if (await answersPlainHttp(dial))
      return new ConnectError(
        `server ${where} speaks plain ws://, not TLS (wss://): use --server ws://${url.hostname}:${port}`,
      );
    return new ConnectError(
      `TLS verification of ${where} failed (${code || reason}); trust its certificate with --ca FILE, or skip the check with --insecure`,
    );
  }
  if (url.protocol === "ws:" && (await peerCertificate(host, port, name)) !== undefined)
    return new ConnectError(
      `server ${where} expects TLS (wss://), not plain ws://: use --server wss://${url.hostname}:${port}`,
    );
  return new ConnectError(`cannot reach server ${where}: ${reason}${portNote(url)}`);
}

/** A certificate name as a URL host (`IP Address:::1` → `[::1]`). */
function formatName(name: string): string {
  const bare = name.replace(/^(DNS|IP Address):/, "");
  return bare.includes(":") ? `[${bare}]` : bare;
}

/**
 * Completes a TLS handshake without verification and reads the names the certificate holds; undefined
 * when the port does not speak TLS (or does not answer within {@link PROBE_MS}).
 */
function peerCertificate(host: string, port: number, name = host): Promise<{ names: string[] } | undefined> {
  return new Promise((resolve) => {
    const socket = tlsConnect({
      host,
      port,
      rejectUnauthorized: false,
      // SNI takes names only; an IP address there is refused (and the server's default certificate is wanted).
      ...(isIP(name) ? {} : { servername: name }),
    });
    const finish = (result: { names: string[] } | undefined) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(result);
    };
    const timer = setTimeout(() => finish(undefined), PROBE_MS);
    socket.once("secureConnect", () => {
      const cert = socket.getPeerCertificate();
      const alt = (cert?.subjectaltname ?? "").split(/,\s*/).filter((n) => n !== "");
      const names = alt.length > 0 ? alt : cert?.subject?.CN ? [`CN=${cert.subject.CN}`] : ["no name"];
      finish({ names });
    });
    socket.once("error", () => finish(undefined));
  });
}

/** True when the URL's port answers plain HTTP (any answer at all), i.e. it has no TLS. */
async function answersPlainHttp(url: URL): Promise<boolean> {
  const plain = new URL(url);
  plain.protocol = "http:";
  if (plain.port === "") plain.port = String(portOf(url));
  try {
    const response = await fetch(plain, { signal: AbortSignal.timeout(PROBE_MS), redirect: "manual" });
    await response.arrayBuffer();
    return true;
  } catch {
    return false;
  }
}
