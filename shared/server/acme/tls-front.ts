/**
 * The server's HTTPS port (`--https-port`): one plain TCP listener that reads each visitor's
 * ClientHello without terminating it (client-hello.ts) and, by its server name:
 * - a TLS-ALPN-01 validation (ALPN `acme-tls/1` for a name being ordered) is answered with the
 *   challenge certificate;
 * - an end-to-end TLS tunnel's name (`--tls-passthrough`) gets its raw bytes carried to the client,
 *   ClientHello included, so that only the local service holds the key;
 * - a name the server has a certificate for (ACME's, a wildcard, `--tls-cert`) is terminated here and
 *   its plaintext goes to the HTTP ingress, as on `--http-port`;
 * - anything else gets a TLS alert (unrecognized_name) and one log line.
 *
 * Bun's TLS listener takes one certificate and cannot be handed a socket whose ClientHello JS already
 * read, so terminating is done by a TLS listener per certificate on the loopback interface (each an
 * HTTP ingress of its own): the front connects to it, writes what it read, then pipes both ways with
 * backpressure (one chunk held at most per direction). A new certificate gets a new listener that
 * serves the next connection; the old one gets no new ones, its open connections go on, and it
 * closes with the last of them. The ingress learns the visitor's address from the front
 * (X-Forwarded-For), not the loopback peer.
 *
 * A ClientHello must complete within the head timeout, {@link MAX_CLIENT_HELLO} bytes and
 * {@link MAX_HELLO_READS} reads.
 * @module
 */

import type { Socket, TCPSocketListener } from "bun";
import { formatHost, unmappedAddress } from "../../args.ts";
import type { Logger } from "../../log.ts";
import { type RelaySocket, relaySocketHandlers, type Stream } from "../../relay/stream.ts";
import { ResetCode } from "../../wire/protocol.ts";
import { HeadBudget, type HttpIngress, type HttpIngressOptions, listenHttp } from "../http-ingress.ts";
import type { Certificate, CertificateStore } from "./certificates.ts";
import { Alert, alertRecord, readClientHello } from "./client-hello.ts";

/** An end-to-end TLS tunnel: the raw connection is carried to its client. */
export interface PassthroughRoute {
  /**
   * Opens a stream for the visitor, or says why not; a promise when the tunnel's node is a moment away
   * (a cluster): the connection waits unread meanwhile.
   */
  open(socket: RelaySocket): Stream | string | Promise<Stream | string>;
}

/** What the front needs from the server. */
export interface TlsFrontOptions {
  host: string;
  port: number;
  /** Seconds a visitor has to send its whole ClientHello. */
  headTimeoutSeconds: number;
  certificates: CertificateStore;
  /** The passthrough tunnel holding a name, if any. */
  passthrough(host: string): PassthroughRoute | undefined;
  /** The TLS-ALPN-01 certificate for a name being ordered, if any. */
  alpnCertificate(host: string): { cert: string; key: string } | undefined;
  /** The HTTP ingress behind terminated connections (as on `--http-port`). */
  http: Omit<HttpIngressOptions, "host" | "port" | "tls" | "log" | "visitorAddress">;
  log: Logger;
}

/** A listening HTTPS front. */
export interface TlsFront {
  readonly port: number;
  /** Stops accepting; with `closeActive`, closes every connection too. */
  stop(closeActive?: boolean): void;
}

/** The `data` slot of a front socket. */
interface FrontData {
  stream: Stream | null;
  /**
   * "hello": reading the ClientHello; "waiting": for a passthrough route's answer; "pipe": to a
   * terminator; "relay": a passthrough stream; "done".
   */
  phase: "hello" | "waiting" | "pipe" | "relay" | "done";
  /** Bytes read while in "hello" (and, in "pipe", until the terminator connection opens). */
  head: Uint8Array;
  /** Reads that went into {@link head}: a ClientHello comes in a few; a dribble is cut at {@link MAX_HELLO_READS}. */
  reads: number;
  /** Bytes of an incomplete ClientHello counted against the server's head budget. */
  held: number;
  deadline: number;
  pipe?: Pipe;
}

/** The loopback connection to a terminator, and what waits to cross. */
interface Pipe {
  peer?: Socket<PipeData>;
  /** Bytes for the peer not taken yet (before it opens, or after a short write). */
  toPeer?: Uint8Array;
  /** Bytes for the visitor not taken yet. */
  toVisitor?: Uint8Array;
  visitorEnded: boolean;
  /** The terminator sent FIN: passed on once {@link toVisitor} is written. */
  peerEnded: boolean;
  closed: boolean;
}

interface PipeData {
  visitor: Socket<FrontData>;
}

/**
 * Most reads a ClientHello may take: real ones arrive in one to three packets; each read re-reads what
 * arrived so far, so a ClientHello dribbled a byte at a time is refused here rather than costing
 * quadratic time until the head timeout.
 */
const MAX_HELLO_READS = 32;

/** Most distinct refusal lines logged per minute. */
const MAX_LOGGED_REFUSALS = 100;

/** How long a visitor has to read the last bytes of a connection its terminator closed. */
const LINGER_MS = 10_000;

/** How often deadlines are checked. */
const SWEEP_MS = 250;
const ACME_TLS_ALPN = "acme-tls/1";

/** A TLS listener for one certificate, on loopback. */
interface Terminator {
  certificate: Certificate;
  ingress: HttpIngress;
  /** Loopback connections to it open now. */
  pipes: number;
  /** Replaced (a renewal) or idle: gets no more connections, and closes for good once its last pipe closed. */
  retired: boolean;
  lastUsed: number;
}

/** A terminator unused this long is retired (its listener and timers go; the next visitor makes a new one). */
const TERMINATOR_IDLE_MS = 10 * 60_000;

/** Opens the HTTPS front; see the module comment. */
export function listenTlsFront(options: TlsFrontOptions): TlsFront {
  const { log, certificates } = options;
  const headTimeoutMs = options.headTimeoutSeconds * 1000;
  // Incomplete ClientHellos count against the same budget as the HTTP ports' incomplete heads.
  const heads = options.http.heads ?? new HeadBudget();
  /** Gives back what a connection's incomplete ClientHello held of the budget. */
  const release = (data: FrontData) => {
    heads.used -= data.held;
    data.held = 0;
  };
  const open = new Set<Socket<FrontData>>();
  const terminators = new Map<Certificate, Terminator>();
  /** Every terminator not closed for good yet, retired ones included. */
  const living = new Set<Terminator>();
  const challengeListeners = new Map<string, { pem: string; listener: TCPSocketListener<undefined> }>();
  /** Visitor addresses by the local port of the front's loopback connection (the ingress's remote port). */
  const visitors = new Map<number, string>();
  let version = -1;

  const sweep = setInterval(() => {
    const now = performance.now();
    for (const socket of open) {
      const data = socket.data;
      // A ClientHello not complete in time, or a visitor that does not take the last bytes of a
      // connection the terminator closed.
      const lingering = data.phase === "pipe" && data.pipe?.closed === true;
      if ((data.phase === "hello" || lingering) && now >= data.deadline) {
        data.phase = "done";
        socket.terminate();
      }
    }
  }, SWEEP_MS);
  sweep.unref?.();

  /**
   * Retires a terminator: no new connections (those open go on); once its last pipe closed, its
   * listener and timers are gone.
   */
  function retire(terminator: Terminator): void {
    if (!terminator.retired) {
      terminator.retired = true;
      // Its listener is not stopped yet: the ingress's stop() would close its keep-alive connections at
      // their next request (a draining server's behaviour), and a renewal must let them go on. Only the
      // front connects to it, and no longer does once it is out of the map.
      if (terminators.get(terminator.certificate) === terminator) terminators.delete(terminator.certificate);
    }
    if (terminator.pipes === 0) {
      terminator.ingress.stop(true);
      living.delete(terminator);
    }
  }

  /** Refusals logged this minute (cleared every minute; at most {@link MAX_LOGGED_REFUSALS}). */
  const logged = new Set<string>();
  const idleSweep = setInterval(() => {
    logged.clear();
    const now = performance.now();
    for (const terminator of [...terminators.values()])
      if (terminator.pipes === 0 && now - terminator.lastUsed > TERMINATOR_IDLE_MS) retire(terminator);
  }, 60_000);
  idleSweep.unref?.();

  /** The terminator for a certificate, made on first use; those of replaced certificates retire. */
  function terminatorFor(certificate: Certificate): Terminator {
    if (certificates.version !== version) {
      version = certificates.version;
      for (const [cert, old] of [...terminators]) if (!certificates.isCurrent(cert)) retire(old);
    }
    let terminator = terminators.get(certificate);
    if (terminator === undefined) {
      const ingress = listenHttp({
        ...options.http,
        host: "127.0.0.1",
        port: 0,
        tls: { cert: certificate.cert, key: certificate.key },
        visitorAddress: (socket) => visitors.get(socket.remotePort),
        log,
      });
      terminator = { certificate, ingress, pipes: 0, retired: false, lastUsed: 0 };
      terminators.set(certificate, terminator);
      living.add(terminator);
    }
    terminator.lastUsed = performance.now();
    return terminator;
  }

  /** A TLS listener presenting the TLS-ALPN-01 certificate for `host` (one per pending challenge). */
  function challengePort(host: string, challenge: { cert: string; key: string }): number {
    const existing = challengeListeners.get(host);
    if (existing !== undefined && existing.pem === challenge.cert) return existing.listener.port;
    existing?.listener.stop(true);
    const listener = Bun.listen({
      hostname: "127.0.0.1",
      port: 0,
      tls: { ...challenge, ALPNProtocols: Buffer.from(`\x0a${ACME_TLS_ALPN}`) } as never,
      socket: {
        // The validation is the handshake itself: nothing is read or written after it.
        handshake(socket) {
          socket.end();
        },
        data() {},
      },
    });
    challengeListeners.set(host, { pem: challenge.cert, listener });
    // Validations come within seconds of the challenge; the listener does not outlive it long.
    setTimeout(() => {
      const current = challengeListeners.get(host);
      if (current?.listener === listener) challengeListeners.delete(host);
      listener.stop(true);
    }, 120_000).unref?.();
    return listener.port;
  }

  function refuse(socket: Socket<FrontData>, description: number, line?: string): void {
    socket.data.phase = "done";
    release(socket.data);
    // One line per refused reason and minute: a scanner cycling names must not flood the log.
    if (line !== undefined && !logged.has(line) && logged.size < MAX_LOGGED_REFUSALS) {
      logged.add(line);
      log.info(`https visitor ${describe(socket)}: ${line}`);
    }
    socket.write(alertRecord(description));
    socket.end();
  }

  /** The ClientHello is complete: route the connection. */
  function route(socket: Socket<FrontData>, serverName: string | undefined, alpn: string[]): void {
    if (serverName !== undefined && alpn.includes(ACME_TLS_ALPN)) {
      const challenge = options.alpnCertificate(serverName);
      if (challenge === undefined)
        refuse(socket, Alert.UnrecognizedName, `no acme-tls/1 challenge for ${serverName}`);
      else pipeTo(socket, challengePort(serverName, challenge));
      return;
    }
    const passthrough = serverName === undefined ? undefined : options.passthrough(serverName);
    if (passthrough !== undefined) {
      const opened = passthrough.open(socket as unknown as RelaySocket);
      if (opened instanceof Promise) {
        socket.data.phase = "waiting";
        socket.pause();
        opened.then(
          (answer) => {
            if (socket.data.phase !== "waiting") {
              // The visitor left meanwhile: the stream has nobody to carry.
              if (typeof answer !== "string") answer.reset(ResetCode.Aborted, "visitor gone");
              return;
            }
            socket.resume();
            relayPassthrough(socket, serverName as string, answer);
          },
          () => refuse(socket, Alert.InternalError, `${serverName}: routing failed`),
        );
      } else relayPassthrough(socket, serverName as string, opened);
      return;
    }
    const certificate = certificates.select(serverName);
    if (certificate !== undefined) {
      const terminator = terminatorFor(certificate);
      terminator.pipes++;
      pipeTo(socket, terminator.ingress.port, () => {
        terminator.pipes--;
        if (terminator.retired) retire(terminator);
      });
    } else
      refuse(
        socket,
        Alert.UnrecognizedName,
        serverName === undefined
          ? "no server name (SNI) and no default certificate"
          : `no tunnel or certificate for ${serverName}`,
      );
  }

  /** A passthrough route answered: relay the raw bytes (what was read first), or refuse. */
  function relayPassthrough(socket: Socket<FrontData>, serverName: string, opened: Stream | string): void {
    if (typeof opened === "string") {
      refuse(socket, Alert.InternalError, `${serverName}: ${opened}`);
      return;
    }
    const head = socket.data.head;
    socket.data.phase = "relay";
    socket.data.head = EMPTY;
    opened.onSocketData(head);
  }

  /** Carries the connection to a loopback TLS listener, the bytes read so far first. */
  function pipeTo(socket: Socket<FrontData>, port: number, onClosed?: () => void): void {
    const pipe: Pipe = { toPeer: socket.data.head, visitorEnded: false, peerEnded: false, closed: false };
    socket.data.phase = "pipe";
    socket.data.head = EMPTY;
    socket.data.pipe = pipe;
    const visitor = `${formatHost(unmappedAddress(socket.remoteAddress))}`;
    let finished = false;
    const finish = () => {
      if (finished) return;
      finished = true;
      onClosed?.();
    };
    Bun.connect<PipeData>({
      hostname: "127.0.0.1",
      port,
      allowHalfOpen: true,
      data: { visitor: socket },
      socket: {
        open(peer) {
          if (pipe.closed) {
            peer.terminate();
            return;
          }
          pipe.peer = peer;
          visitors.set(peer.localPort, visitor);
          flushToPeer(socket, pipe);
          if (pipe.toPeer === undefined) {
            if (pipe.visitorEnded) peer.shutdown();
            else socket.resume();
          }
        },
        data(peer, chunk) {
          const n = socket.write(chunk);
          if (n < chunk.length) {
            pipe.toVisitor = chunk.subarray(n);
            peer.pause();
          }
        },
        drain(peer) {
          flushToPeer(socket, pipe);
          if (pipe.toPeer === undefined) {
            if (pipe.visitorEnded) peer.shutdown();
            else socket.resume();
          }
        },
        end() {
          pipe.peerEnded = true;
          if (pipe.toVisitor === undefined) socket.shutdown();
        },
        close(peer) {
          visitors.delete(peer.localPort);
          if (!pipe.closed) {
            pipe.closed = true;
            // What the terminator sent last still goes out first; the visitor has a while to read it.
            if (pipe.toVisitor === undefined) socket.end();
            else {
              pipe.peerEnded = true;
              socket.data.deadline = performance.now() + LINGER_MS;
            }
          }
          finish();
        },
        error() {},
        connectError() {
          pipe.closed = true;
          socket.terminate();
          finish();
        },
      },
    }).catch(() => {
      pipe.closed = true;
      socket.terminate();
      finish();
    });
  }

  /** Writes what waits for the peer; pauses the visitor while the peer cannot take it. */
  function flushToPeer(socket: Socket<FrontData>, pipe: Pipe): void {
    const peer = pipe.peer;
    const pending = pipe.toPeer;
    if (peer === undefined || pending === undefined) return;
    const n = peer.write(pending);
    if (n < pending.length) {
      pipe.toPeer = pending.subarray(n);
      socket.pause();
    } else pipe.toPeer = undefined;
  }

  const listener = Bun.listen<FrontData>({
    hostname: options.host,
    port: options.port,
    allowHalfOpen: true,
    socket: {
      open(socket) {
        socket.data = {
          stream: null,
          phase: "hello",
          head: EMPTY,
          reads: 0,
          held: 0,
          deadline: performance.now() + headTimeoutMs,
        };
        open.add(socket);
      },
      data(socket, chunk) {
        const data = socket.data;
        switch (data.phase) {
          case "relay":
            data.stream?.onSocketData(chunk, true);
            return;
          case "pipe": {
            const pipe = data.pipe as Pipe;
            if (pipe.toPeer !== undefined) {
              pipe.toPeer = concat(pipe.toPeer, chunk);
              socket.pause();
              flushToPeer(socket, pipe);
              return;
            }
            const n = pipe.peer?.write(chunk) ?? 0;
            if (n < chunk.length) {
              pipe.toPeer = chunk.subarray(n);
              socket.pause();
            }
            return;
          }
          case "waiting":
            // Read before the pause took hold: kept, in order, for the stream.
            data.head = concat(data.head, chunk);
            return;
          case "done":
            return;
        }
        data.head = data.head.length === 0 ? chunk.slice() : concat(data.head, chunk);
        const read = readClientHello(data.head);
        if (read.status === "more") {
          if (++data.reads >= MAX_HELLO_READS) {
            refuse(socket, Alert.HandshakeFailure);
            return;
          }
          heads.used += data.head.length - data.held;
          data.held = data.head.length;
          if (heads.used > heads.limit) {
            log.warn(
              `https visitor refused: incomplete ClientHellos and heads hold ${heads.used} bytes (limit ${heads.limit})`,
            );
            refuse(socket, Alert.InternalError);
          }
          return;
        }
        release(data);
        if (read.status === "bad") {
          refuse(socket, Alert.HandshakeFailure);
          return;
        }
        route(socket, read.hello.serverName, read.hello.alpn);
      },
      drain(socket) {
        const data = socket.data;
        if (data.phase === "relay") relaySocketHandlers.drain(socket as unknown as RelaySocket);
        else if (data.phase === "pipe") {
          const pipe = data.pipe as Pipe;
          const pending = pipe.toVisitor;
          if (pending !== undefined) {
            const n = socket.write(pending);
            if (n < pending.length) pipe.toVisitor = pending.subarray(n);
            else {
              pipe.toVisitor = undefined;
              if (pipe.closed) socket.end();
              else if (pipe.peerEnded) socket.shutdown();
              else pipe.peer?.resume();
            }
          }
        }
      },
      end(socket) {
        const data = socket.data;
        if (data.phase === "relay") relaySocketHandlers.end(socket as unknown as RelaySocket);
        else if (data.phase === "pipe") {
          const pipe = data.pipe as Pipe;
          pipe.visitorEnded = true;
          if (pipe.peer !== undefined && pipe.toPeer === undefined) pipe.peer.shutdown();
        } else {
          data.phase = "done";
          socket.end();
        }
      },
      close(socket, error) {
        open.delete(socket);
        const data = socket.data;
        if (data === undefined) return;
        release(data);
        if (data.phase === "relay" || data.phase === "waiting")
          relaySocketHandlers.close(socket as unknown as RelaySocket, error);
        else if (data.pipe !== undefined && !data.pipe.closed) {
          data.pipe.closed = true;
          data.pipe.peer?.end();
        }
        data.phase = "done";
      },
      error(socket, error) {
        if (socket.data?.phase === "relay")
          relaySocketHandlers.error(socket as unknown as RelaySocket, error);
      },
    },
  });

  return {
    port: listener.port,
    stop(closeActive = false) {
      listener.stop(closeActive);
      for (const terminator of living) terminator.ingress.stop(closeActive);
      if (closeActive) {
        clearInterval(sweep);
        clearInterval(idleSweep);
        for (const socket of open) socket.terminate();
        open.clear();
        for (const { listener: challenge } of challengeListeners.values()) challenge.stop(true);
        challengeListeners.clear();
      }
    },
  };
}

const EMPTY = new Uint8Array(0);

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

function describe(socket: Socket<FrontData>): string {
  return formatHost(unmappedAddress(socket.remoteAddress));
}
