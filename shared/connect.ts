/**
 * The client's side of the control connection: open the WebSocket (TLS, API key, protocol version),
 * wait for the server's hello, explain failures in one line, and report send-side backpressure.
 * @module
 */

import { describeError } from "./log.ts";
import { AUTH_HEADER, CONNECT_PATH, type Hello, parseControl, SUBPROTOCOL } from "./protocol.ts";

/** How to reach the server. */
export interface ConnectOptions {
  url: URL;
  apiKey?: string;
  ca?: string;
  insecure?: boolean;
  /** Give up after this long (ms). */
  timeout?: number;
}

/** An open, greeted control connection. */
export interface ControlConnection {
  ws: WebSocket;
  hello: Hello;
  /** Sends a binary frame and reports backpressure through {@link ControlConnection.onBlocked}. */
  send(frame: Uint8Array): void;
  /** Called with true when the send buffer is past its high mark, false once it drained below the low. */
  onBlocked: (blocked: boolean) => void;
}

/** Connection failure with a one-line, user-facing message. */
export class ConnectError extends Error {
  override name = "ConnectError";
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
  const tls = { ca: options.ca, rejectUnauthorized: !options.insecure };
  const ws = new WebSocket(url.href, { protocols: [SUBPROTOCOL], headers, tls } as unknown as string[]);
  ws.binaryType = "arraybuffer";
  const timeout = options.timeout ?? 10_000;

  const hello = await new Promise<Hello>((resolve, reject) => {
    const timer = setTimeout(() => {
      ws.close();
      reject(new ConnectError(`no answer from ${options.url.href} within ${timeout / 1000} s`));
    }, timeout);
    const fail = () => {
      clearTimeout(timer);
      explainFailure(url, headers, tls).then(reject, reject);
    };
    ws.addEventListener("error", fail, { once: true });
    ws.addEventListener(
      "message",
      (event) => {
        clearTimeout(timer);
        ws.removeEventListener("error", fail);
        try {
          const message = typeof event.data === "string" ? parseControl(event.data) : undefined;
          if (message?.type !== "hello") throw new Error("first message is not hello");
          resolve(message);
        } catch (error) {
          ws.close();
          reject(
            new ConnectError(
              `server at ${options.url.href} does not speak ${SUBPROTOCOL}: ${describeError(error)}`,
            ),
          );
        }
      },
      { once: true },
    );
  });

  let blocked = false;
  const connection: ControlConnection = {
    ws,
    hello,
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
    if (response.status === 401) return new ConnectError(`server ${where} rejected the API key: ${body}`);
    return new ConnectError(`server ${where} refused the connection: ${response.status} ${body}`);
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
