/**
 * The client's side of the control connection: open the WebSocket (TLS, API key, protocol version),
 * wait for the server's hello, explain failures in one line, and report send-side backpressure.
 * @module
 */

import { describeError } from "./log.ts";
import {
  AUTH_HEADER,
  CONNECT_PATH,
  type Hello,
  parseControl,
  RESUME_HEADER,
  SUBPROTOCOL,
  type SyncMessage,
} from "./protocol.ts";

/** How to reach the server. */
export interface ConnectOptions {
  url: URL;
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

// The client WebSocket has no drain event; bufferedAmount is the only signal, polled while high.
const HIGH_WATER = 8 * 1024 * 1024;
const LOW_WATER = 2 * 1024 * 1024;
const POLL_MS = 1;

const TLS_CODES = /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|TLS|SSL|HOSTNAME|ALTNAME/i;

/** Opens the control WebSocket and waits for the server's hello. */
export async function connectControl(options: ConnectOptions): Promise<ControlConnection> {
  const url = new URL(CONNECT_PATH, options.url);
  const headers: Record<string, string> = {};
  if (options.apiKey) headers[AUTH_HEADER] = `Bearer ${options.apiKey}`;
  if (options.resume) headers[RESUME_HEADER] = `${options.resume.session} ${options.resume.secret}`;
  const tls = { ca: options.ca, rejectUnauthorized: !options.insecure };
  const ws = new WebSocket(url.href, { protocols: [SUBPROTOCOL], headers, tls } as unknown as string[]);
  ws.binaryType = "arraybuffer";
  const timeout = options.timeout ?? 10_000;

  const greeting = await new Promise<{ hello: Hello; sync?: SyncMessage }>((resolve, reject) => {
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new ConnectError(`no answer from ${options.url.href} within ${timeout / 1000} s`));
    }, timeout);
    const fail = () => {
      clearTimeout(timer);
      explainFailure(url, headers, tls).then(reject, reject);
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

  let blocked = false;
  const connection: ControlConnection = {
    ws,
    ...greeting,
    onBlocked: () => {},
    send(frame) {
      ws.send(frame);
      if (!blocked && ws.bufferedAmount > HIGH_WATER) {
        blocked = true;
        connection.onBlocked(true);
        setTimeout(poll, POLL_MS);
      }
    },
  };
  const poll = () => {
    if (ws.readyState !== WebSocket.OPEN || ws.bufferedAmount < LOW_WATER) {
      blocked = false;
      connection.onBlocked(false);
    } else setTimeout(poll, POLL_MS);
  };
  return connection;
}

/**
 * The WebSocket API reports every failed upgrade the same way; ask the same URL over plain HTTP(S) to
 * learn why: the server's refusal (401, 426), a TLS verification failure, or no route to it.
 */
async function explainFailure(
  url: URL,
  headers: Record<string, string>,
  tls: { ca?: string; rejectUnauthorized: boolean },
): Promise<ConnectError> {
  const httpUrl = new URL(url);
  httpUrl.protocol = url.protocol === "wss:" ? "https:" : "http:";
  const where = `${url.protocol}//${url.host}`;
  try {
    const response = await fetch(httpUrl, {
      headers: { ...headers, "sec-websocket-protocol": SUBPROTOCOL },
      tls,
      signal: AbortSignal.timeout(5000),
    } as RequestInit);
    const body = (await response.text()).trim().split("\n")[0] ?? "";
    if (response.status === 401)
      return new ConnectError(`server ${where} rejected the API key: ${body}`, true);
    // 426: another protocol version; 403: the resume secret does not match. Neither heals by retrying.
    const fatal = response.status === 426 || response.status === 403;
    return new ConnectError(`server ${where} refused the connection: ${response.status} ${body}`, fatal);
  } catch (error) {
    const code = (error as { code?: string }).code ?? "";
    const text = `${code} ${describeError(error)}`;
    if (TLS_CODES.test(text))
      return new ConnectError(
        `TLS verification of ${where} failed (${code || describeError(error)}); trust its certificate with --ca FILE, or skip the check with --insecure`,
      );
    if (code === "ConnectionRefused" || code === "ECONNREFUSED")
      return new ConnectError(`cannot reach server ${where}: connection refused`);
    return new ConnectError(`cannot reach server ${where}: ${describeError(error)}`);
  }
}
