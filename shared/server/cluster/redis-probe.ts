/**
 * Why a node could not connect to its Redis, in words. Bun's RedisClient reports a refused password,
 * a certificate it does not trust and a TLS/plain mismatch all as "Connection closed" (or as no
 * connection at all): after such a failure the node opens one connection of its own, does the TLS
 * handshake itself (checking the certificate as the client would) and sends what the client sends
 * first (`AUTH USER PASSWORD`, or `PING` without a password), and names what went wrong. The password
 * is sent, never reported.
 * @module
 */

import { isIP } from "node:net";

/** How long the probe may take in all (connect, handshake, reply). */
export const PROBE_TIMEOUT_MS = 1500;

/** Certificate errors that trusting the right CA cures (the others are a wrong name, an expired certificate…). */
const UNTRUSTED = new Set([
  "SELF_SIGNED_CERT_IN_CHAIN",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
]);

/** One RESP command, as Redis reads it. */
function resp(args: string[]): string {
  return `*${args.length}\r\n${args.map((arg) => `$${Buffer.byteLength(arg)}\r\n${arg}\r\n`).join("")}`;
}

/** What the probe saw. */
type Seen =
  | { kind: "reply"; line: string }
  | { kind: "tls"; code: string; message: string }
  | { kind: "refused"; message: string }
  | { kind: "closed" }
  | { kind: "timeout"; handshaken: boolean };

/**
 * Connects to the Redis of `url` once, as Bun's client would, and says why that client failed: a
 * one-line reason, or undefined when this connection worked (the reason is elsewhere; keep the
 * client's own message).
 * @param ca PEM certificate(s) trusted for a rediss:// Redis (`--cluster-ca`); absent: the system's.
 */
export async function explainRedisFailure(url: string, ca?: string): Promise<string | undefined> {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return undefined;
  }
  const secure = parsed.protocol === "rediss:";
  const host = parsed.hostname.replace(/^\[(.*)\]$/, "$1");
  const port = Number(parsed.port || 6379);
  const password = decodeURIComponent(parsed.password);
  const user = decodeURIComponent(parsed.username) || "default";
  const command = resp(password === "" ? ["PING"] : ["AUTH", user, password]);
  const seen = await probe(host, port, secure, ca, command);
  switch (seen.kind) {
    case "reply": {
      if (/^-WRONGPASS\b/.test(seen.line)) return "authentication failed (wrong password?)";
      if (/^-NOAUTH\b/.test(seen.line))
        return "authentication required: give the password in the URL (redis://:PASSWORD@HOST:PORT)";
      if (seen.line.startsWith("-")) return `Redis refused the connection: ${seen.line.slice(1)}`;
      return undefined;
    }
    case "tls": {
      const hint = UNTRUSTED.has(seen.code)
        ? ca === undefined
          ? "; trust its CA with --cluster-ca FILE"
          : " (--cluster-ca does not hold the CA that signed it)"
        : "";
      return `TLS: Redis' certificate was refused: ${seen.message.replace(/[\s:]+$/, "")}${hint}`;
    }
    case "refused":
      return seen.message;
    case "closed":
      return secure
        ? "the connection closed during the TLS handshake"
        : "Redis closed the connection without a reply (does it want TLS? use rediss://)";
    case "timeout":
      if (secure && !seen.handshaken)
        return `no TLS handshake within ${PROBE_TIMEOUT_MS} ms (a plain Redis port? use redis://)`;
      return undefined;
  }
}

/** The probe's one connection: TLS (verified by hand, to learn why it fails) when `secure`. */
function probe(host: string, port: number, secure: boolean, ca: string | undefined, command: string) {
  return new Promise<Seen>((resolve) => {
    let received = "";
    let handshaken = false;
    let settled = false;
    let socket: { end(): void } | undefined;
    const finish = (seen: Seen) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(seen);
      socket?.end();
    };
    const timer = setTimeout(() => finish({ kind: "timeout", handshaken }), PROBE_TIMEOUT_MS);
    const tls = secure
      ? {
          ...(ca === undefined ? {} : { ca }),
          // Checked in handshake() below: a refused certificate is reported with its reason, not as a close.
          rejectUnauthorized: false,
          ...(isIP(host) === 0 ? { serverName: host } : {}),
        }
      : undefined;
    Bun.connect({
      hostname: host,
      port,
      tls,
      socket: {
        open(opened) {
          socket = opened;
          if (settled) opened.end();
          else if (!secure) opened.write(command);
        },
        handshake(opened, success, error) {
          handshaken = true;
          if (!success || error)
            return finish({
              kind: "tls",
              code: (error as (Error & { code?: string }) | null)?.code ?? "",
              message: error?.message ?? "handshake failed",
            });
          opened.write(command);
        },
        data(_, data) {
          received += data.toString();
          const end = received.indexOf("\r\n");
          if (end !== -1) finish({ kind: "reply", line: received.slice(0, end) });
        },
        close() {
          finish({ kind: "closed" });
        },
        error() {
          finish({ kind: "closed" });
        },
        connectError(_, error) {
          const code = (error as { code?: string }).code;
          finish({
            kind: "refused",
            message:
              code === "ECONNREFUSED" ? "connection refused" : `cannot connect (${code ?? error.message})`,
          });
        },
      },
    }).catch((error: Error & { code?: string }) =>
      finish({
        kind: "refused",
        message: error.code === "ECONNREFUSED" ? "connection refused" : `cannot connect (${error.message})`,
      }),
    );
  });
}
