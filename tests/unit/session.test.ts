/**
 * The server's per-client Session, driven without a network: a fake WebSocket (a plain object that
 * records what it was sent) in place of the client's connection. Covers the liveness rule, the
 * greeting, expose refusals, HTTP tunnels (which open no listener), protocol errors, and what a lost
 * or closed connection keeps.
 */

import { afterEach, describe, expect, test } from "bun:test";
import type { PortRange } from "../../shared/args.ts";
import { Namespace } from "../../shared/server/namespace/namespace.ts";
import type { SessionContext, SessionSocket, SessionSocketData } from "../../shared/server/session.ts";
import { Session } from "../../shared/server/session.ts";
import { encodePing } from "../../shared/wire/codec.ts";
import { CloseCode, DEFAULTS, PROTOCOL_VERSION } from "../../shared/wire/protocol.ts";

/** What the server's code calls on a client's WebSocket, recording it. */
class FakeWebSocket {
  data: SessionSocketData = { peer: null, resume: null, remote: "192.0.2.7" };
  readonly sent: (string | Uint8Array)[] = [];
  closed: { code: number; reason: string } | null = null;
  pings = 0;
  terminated = false;
  isPaused = false;
  buffered = 0;

  send(message: string | Uint8Array): number {
    if (this.closed || this.terminated) return 0;
    this.sent.push(message);
    return message.length;
  }
  close(code = 1000, reason = ""): void {
    this.closed ??= { code, reason };
  }
  ping(): void {
    this.pings++;
  }
  getBufferedAmount(): number {
    return this.buffered;
  }
  pause(): void {
    this.isPaused = true;
  }
  resume(): void {
    this.isPaused = false;
  }
  terminate(): void {
    this.terminated = true;
  }
  /** The JSON messages sent, parsed. */
  messages(): Record<string, unknown>[] {
    return this.sent.filter((m) => typeof m === "string").map((m) => JSON.parse(m as string));
  }
  last(): Record<string, unknown> | undefined {
    return this.messages().at(-1);
  }
}

const sessions: Session[] = [];
afterEach(() => {
  for (const s of sessions.splice(0)) s.end();
});

/** What a test may change: the context's fields, the namespace's rules, or another test's namespace. */
type Overrides = Partial<SessionContext> & { httpPort?: number | null; tcpPorts?: PortRange };

/** A session with a namespace of its own (or `namespace`'s), and what it logged. */
function setup(overrides: Overrides = {}) {
  const warnings: string[] = [];
  const ended: Session[] = [];
  const log = { info() {}, warn: (m: string) => warnings.push(m), error: (m: string) => warnings.push(m) };
  const { httpPort, tcpPorts, ...fields } = overrides;
  const namespace =
    fields.namespace ??
    new Namespace({ host: "127.0.0.1", domain: "localhost", tcpPorts, maxTunnelsPerClient: 2 }, log);
  if (fields.namespace === undefined && httpPort !== null)
    namespace.bind({ httpPort: httpPort ?? 8080, https: false, ownPorts: [] });
  const context: SessionContext = {
    namespace,
    limits: {
      protocol: PROTOCOL_VERSION,
      window: DEFAULTS.window,
      initialWindow: DEFAULTS.initialWindow,
      maxFramePayload: DEFAULTS.maxFramePayload,
      maxStreamsPerTunnel: 10,
      maxTunnelsPerClient: 2,
    },
    graceSeconds: 30,
    handshakeSeconds: 10,
    log,
    onEnded: (s) => ended.push(s),
    ...fields,
  };
  const session = new Session(context);
  sessions.push(session);
  const ws = new FakeWebSocket();
  session.attach(ws as unknown as SessionSocket);
  return { session, ws, context, warnings, ended };
}

/** Whether an HTTP name is in the namespace (held, reserved or pooled). */
const held = (context: SessionContext, name: string) =>
  context.namespace.holding(`http:${name}`).state !== "free";

const expose = (id: number, fields: Record<string, unknown>) =>
  JSON.stringify({ type: "expose", id, ...fields });

describe("greeting", () => {
  test("attach sends hello first: the limits, the session id, a secret, not resumed", () => {
    const { session, ws } = setup();
    expect(ws.data.peer).toBe(session);
    const first = ws.messages()[0] as Record<string, unknown>;
    expect(first).toMatchObject({
      type: "hello",
      protocol: PROTOCOL_VERSION,
      maxTunnelsPerClient: 2,
      session: session.id,
      resumed: false,
    });
    expect(typeof first.secret).toBe("string");
    expect(session.secretMatches(first.secret as string)).toBe(true);
    expect(session.secretMatches("guess")).toBe(false);
  });

  test("a second connection resumes the session: the old one is closed as replaced, the new one gets hello and sync", () => {
    const { session, ws } = setup();
    const newer = new FakeWebSocket();
    session.attach(newer as unknown as SessionSocket);
    expect(ws.closed?.code).toBe(CloseCode.Replaced);
    expect(ws.data.peer).toBeNull();
    expect(newer.messages().map((m) => m.type)).toEqual(["hello", "sync"]);
    expect(newer.messages()[0]).toMatchObject({ resumed: true, session: session.id });
  });
});

describe("liveness: heard since the last tick, or dead after the timeout of silence", () => {
  /** A message from the client: a PING frame on stream 0 (the mux answers it; nothing else changes). */
  const message = (session: Session, n: number) => session.onMessage(encodePing(n));

  test("a client heard from between ticks is kept however long it lives, and not pinged (it pings us)", () => {
    const { session, ws } = setup();
    const t = Date.now();
    for (let i = 1; i <= 20; i++) {
      message(session, i);
      session.heartbeat(t + i * 2000, 3000); // 20 ticks, 40 s in all, each after a message
    }
    expect(ws.pings).toBe(0);
    expect(ws.terminated).toBe(false);
    session.heartbeat(t + 42_000, 3000); // silent this interval: pinged
    expect(ws.pings).toBe(1);
    expect(session.reserved).toBe(false);
  });

  test("silent for longer than the timeout: terminated and the session ends (nothing to keep)", () => {
    const { session, ws, ended, warnings } = setup();
    const t = Date.now();
    session.liveness.restart(t); // silence counts from t exactly (attach read the clock a moment before)
    session.heartbeat(t + 2000, 3000); // silent 2 s: still alive
    expect(ws.terminated).toBe(false);
    expect(ws.pings).toBe(1);
    session.heartbeat(t + 3000, 3000); // exactly the timeout: not past it
    expect(ws.terminated).toBe(false);
    session.heartbeat(t + 3001, 3000);
    expect(ws.terminated).toBe(true);
    expect(ws.pings).toBe(2); // no ping to a dead client
    expect(warnings.some((w) => /silent for 3 s: dead/.test(w))).toBe(true);
    expect(ended).toEqual([session]);
  });

  test("silence counts from the last tick that found the client heard, not from the message itself", () => {
    const { session, ws } = setup();
    const t = Date.now();
    session.heartbeat(t + 2000, 3000);
    message(session, 1);
    session.heartbeat(t + 4000, 3000); // heard: silence restarts at t + 4000
    session.heartbeat(t + 7000, 3000);
    expect(ws.terminated).toBe(false);
    session.heartbeat(t + 7001, 3000);
    expect(ws.terminated).toBe(true);
  });

  test("a client paused for its budget is not read: its silence is ours and does not count", () => {
    const { session, ws } = setup();
    const t = Date.now();
    ws.isPaused = true;
    session.heartbeat(t + 10_000, 3000);
    session.heartbeat(t + 20_000, 3000);
    expect(ws.terminated).toBe(false);
    expect(ws.pings).toBe(2); // we do not read its pings while paused: ours keep it alive
    ws.isPaused = false;
    session.heartbeat(t + 23_001, 3000);
    expect(ws.terminated).toBe(true);
  });

  test("a silent client with a tunnel is not ended: its tunnel is reserved for the grace period", () => {
    const { session, ws, ended, context } = setup();
    session.onMessage(expose(1, { kind: "http", subdomain: "kept" })); // heard: the next tick restarts the count
    const t = Date.now();
    session.heartbeat(t + 1000, 3000); // heard: not pinged
    session.heartbeat(t + 2000, 3000); // silent this interval: pinged
    session.heartbeat(t + 60_000, 3000);
    expect(ws.terminated).toBe(true);
    expect(session.reserved).toBe(true);
    expect(ended).toEqual([]);
    expect(held(context, "kept")).toBe(true);
    session.heartbeat(t + 120_000, 3000); // no WebSocket: nothing to ping or declare dead
    expect(ws.pings).toBe(1);
  });
});

describe("expose", () => {
  test("an HTTP tunnel: exposed with its name and URL, registered server-wide, no listener needed", () => {
    const { session, ws, context } = setup();
    session.onMessage(expose(7, { kind: "http", subdomain: "demo" }));
    const exposed = ws.last() as Record<string, unknown>;
    expect(exposed).toMatchObject({
      type: "exposed",
      id: 7,
      name: "demo",
      host: "demo.localhost",
      port: 8080,
      url: "http://demo.localhost:8080",
    });
    expect(held(context, "demo")).toBe(true);
    expect(context.namespace.tunnelIds.has(exposed.tunnel as string)).toBe(true);
    expect(session.tunnels.size).toBe(1);
  });

  test("a tunnel id asked for is kept unless another client holds it", () => {
    const { session, ws, context } = setup();
    context.namespace.tunnelIds.add("held-by-another");
    session.onMessage(expose(1, { kind: "http", subdomain: "one", tunnel: "mine-from-before" }));
    expect(ws.last()).toMatchObject({ type: "exposed", tunnel: "mine-from-before" });
    session.onMessage(expose(2, { kind: "http", subdomain: "two", tunnel: "held-by-another" }));
    expect(ws.last()?.type).toBe("exposed");
    expect(ws.last()?.tunnel).not.toBe("held-by-another");
  });

  const refusals: [string, Overrides, Record<string, unknown>, string, RegExp][] = [
    ["no --http-port", { httpPort: null }, { kind: "http" }, "no_http", /no --http-port/],
    [
      "a subdomain that is no DNS label",
      {},
      { kind: "http", subdomain: "Not_A_Label" },
      "bad_subdomain",
      /not a DNS label/,
    ],
    [
      "a privileged port without --tcp-ports",
      {},
      { kind: "tcp", port: 80 },
      "port_out_of_range",
      /privileged/,
    ],
    [
      "a port outside --tcp-ports",
      { tcpPorts: { min: 40000, max: 40010 } },
      { kind: "tcp", port: 50000 },
      "port_out_of_range",
      /outside the server's range 40000-40010/,
    ],
  ];
  for (const [what, context, request, code, message] of refusals)
    test(`refused: ${what} (${code}), and nothing registered`, () => {
      const { session, ws, context: ctx } = setup(context);
      session.onMessage(expose(3, request));
      expect(ws.last()).toMatchObject({ type: "error", id: 3, code });
      expect(ws.last()?.message).toMatch(message);
      expect(session.tunnels.size).toBe(0);
      expect(ctx.namespace.tunnelIds.size).toBe(0);
      expect(ws.closed).toBeNull(); // a refusal is an answer, not the end of the session
    });

  test("a subdomain another session holds is taken", () => {
    const first = setup();
    first.session.onMessage(expose(1, { kind: "http", subdomain: "popular" }));
    const second = setup({ namespace: first.context.namespace });
    second.session.onMessage(expose(1, { kind: "http", subdomain: "popular" }));
    expect(second.ws.last()).toMatchObject({ type: "error", code: "subdomain_taken" });
  });

  test("past maxTunnelsPerClient: limit", () => {
    const { session, ws } = setup();
    session.onMessage(expose(1, { kind: "http", subdomain: "a" }));
    session.onMessage(expose(2, { kind: "http", subdomain: "b" }));
    session.onMessage(expose(3, { kind: "http", subdomain: "c" }));
    expect(
      ws
        .messages()
        .slice(1)
        .map((m) => m.type),
    ).toEqual(["exposed", "exposed", "error"]);
    expect(ws.last()).toMatchObject({ id: 3, code: "limit", message: "a client may hold at most 2 tunnels" });
  });

  test("refused exposes do not end the handshake: the connection is closed at the handshake timeout", async () => {
    const refused = setup({ handshakeSeconds: 0.05, httpPort: null });
    refused.session.onMessage(expose(1, { kind: "http" }));
    const live = setup({ handshakeSeconds: 0.05 });
    live.session.onMessage(expose(1, { kind: "http", subdomain: "up" }));
    await Bun.sleep(150);
    expect(refused.ws.closed?.code).toBe(CloseCode.PolicyViolation);
    expect(refused.ws.closed?.reason).toMatch(/no expose or sync within 0.05 s/);
    expect(live.ws.closed).toBeNull();
  });
});

describe("protocol errors end the session at once", () => {
  for (const [what, text] of [
    ["text that is no JSON", "{oops"],
    ["an unknown message", JSON.stringify({ type: "launch", id: 1 })],
    ["a sync while live", JSON.stringify({ type: "sync", streams: [], finished: [], accepted: 0 })],
  ] as const)
    test(what, () => {
      const { session, ws, ended, context } = setup();
      session.onMessage(expose(1, { kind: "http", subdomain: "gone" }));
      session.onMessage(text);
      expect(ws.closed?.code).toBe(CloseCode.ProtocolError);
      expect(ended).toEqual([session]);
      expect(session.reserved).toBe(false);
      expect(held(context, "gone")).toBe(false); // nothing reserved for a broken client
    });
});

describe("when the connection goes", () => {
  test("lost (1006) with a tunnel: reserved, the name kept; the same secret resumes it", () => {
    const { session, ws, context, ended } = setup();
    session.onMessage(expose(1, { kind: "http", subdomain: "stay" }));
    session.onClose(ws as unknown as SessionSocket, 1006);
    expect(session.reserved).toBe(true);
    expect(held(context, "stay")).toBe(true);
    expect(ended).toEqual([]);
    const back = new FakeWebSocket();
    session.attach(back as unknown as SessionSocket);
    expect(session.reserved).toBe(false);
    expect(back.messages()[0]).toMatchObject({ type: "hello", resumed: true });
  });

  test("closed with 1000: ended, its tunnel's name and id released", () => {
    const { session, ws, context, ended } = setup();
    session.onMessage(expose(1, { kind: "http", subdomain: "bye" }));
    session.onClose(ws as unknown as SessionSocket, CloseCode.Normal);
    expect(ended).toEqual([session]);
    expect(held(context, "bye")).toBe(false);
    expect(context.namespace.tunnelIds.size).toBe(0);
  });

  test("a client that broke the WebSocket protocol (1009, or Bun's 'too big' 1006) is not reserved", () => {
    for (const [code, reason] of [
      [1009, ""],
      [1006, "Received too big message"],
    ] as const) {
      const { session, ws, ended } = setup();
      session.onMessage(expose(1, { kind: "http", subdomain: `big${code}` }));
      session.onClose(ws as unknown as SessionSocket, code, reason);
      expect(session.reserved).toBe(false);
      expect(ended).toEqual([session]);
    }
  });

  test("an old connection that a resume replaced closing later changes nothing", () => {
    const { session, ws } = setup();
    session.onMessage(expose(1, { kind: "http", subdomain: "x" }));
    const newer = new FakeWebSocket();
    session.attach(newer as unknown as SessionSocket);
    session.onClose(ws as unknown as SessionSocket, 1006);
    expect(session.reserved).toBe(false);
    expect(newer.closed).toBeNull();
  });
});
