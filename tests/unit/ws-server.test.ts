/**
 * The control port's server-side WebSocket (RFC 6455): the handshake helpers, and a RawWebSocket over
 * a real loopback socket pair, fed frames written by hand (masked, split anywhere, fragmented, broken).
 */

import { afterEach, describe, expect, test } from "bun:test";
import type { Socket } from "bun";
import {
  acceptKey,
  RawWebSocket,
  switchingProtocols,
  upgradeProblem,
  type WebSocketLimits,
} from "../../shared/server/ws-server.ts";
import { cleanup, defer, eventually } from "../support/processes.ts";
import { clientFrame, closeOf, FrameReader, type ServerFrame } from "../support/ws-frames.ts";

afterEach(cleanup);

const Op = { Continuation: 0, Text: 1, Binary: 2, Close: 8, Ping: 9, Pong: 10 };

describe("handshake", () => {
  test("Sec-WebSocket-Accept of RFC 6455's example key", () => {
    expect(acceptKey("dGhlIHNhbXBsZSBub25jZQ==")).toBe("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
  });

  test("the 101 head carries the accept value and the extra fields, and ends the head", () => {
    const head = switchingProtocols("dGhlIHNhbXBsZSBub25jZQ==", { "Sec-WebSocket-Protocol": "sockets.v3" });
    expect(head.startsWith("HTTP/1.1 101 Switching Protocols\r\n")).toBe(true);
    expect(head).toContain("\r\nUpgrade: websocket\r\n");
    expect(head).toContain("\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n");
    expect(head).toContain("\r\nSec-WebSocket-Protocol: sockets.v3\r\n");
    expect(head.endsWith("\r\n\r\n")).toBe(true);
    expect(head.indexOf("\r\n\r\n")).toBe(head.length - 4);
  });

  const valid = {
    upgrade: "websocket",
    connection: "Upgrade",
    "sec-websocket-version": "13",
    "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
  };
  const problem = (change: Record<string, string | null>, method = "GET") => {
    const headers = new Headers(valid);
    for (const [name, value] of Object.entries(change))
      if (value === null) headers.delete(name);
      else headers.set(name, value);
    return upgradeProblem(headers, method);
  };

  test("a valid upgrade has no problem, whatever the case and the other Connection tokens", () => {
    expect(problem({})).toBeUndefined();
    expect(problem({ upgrade: "WebSocket", connection: "keep-alive, UPGRADE" })).toBeUndefined();
  });

  test("each missing or wrong part is named", () => {
    expect(problem({}, "POST")).toMatch(/must be a GET/);
    expect(problem({ upgrade: null })).toMatch(/Upgrade: websocket/);
    expect(problem({ upgrade: "h2c" })).toMatch(/Upgrade: websocket/);
    expect(problem({ connection: "keep-alive" })).toMatch(/Connection: upgrade/);
    expect(problem({ connection: "upgraded" })).toMatch(/Connection: upgrade/);
    expect(problem({ "sec-websocket-version": "8" })).toMatch(/version 13/);
    expect(problem({ "sec-websocket-version": null })).toMatch(/version 13/);
    expect(problem({ "sec-websocket-key": null })).toMatch(/Sec-WebSocket-Key/);
    expect(problem({ "sec-websocket-key": "c2hvcnQ=" })).toMatch(/Sec-WebSocket-Key/); // 5 bytes, not 16
    expect(problem({ "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ=" })).toMatch(/Sec-WebSocket-Key/);
  });
});

/** A RawWebSocket on the server end of a loopback pair, and a raw client end. */
interface Pair {
  ws: RawWebSocket<{ name: string }>;
  client: Socket<undefined>;
  /** What the server sent, as frames. */
  reader: FrameReader;
  /** Messages, pings, pongs and drains the handlers saw, in order. */
  events: (string | Uint8Array)[];
  /** Resolves with what the close handler got. */
  closed: Promise<{ code: number; reason: string }>;
  /** The client's end saw the server's FIN or the socket close. */
  clientEnded: () => boolean;
  /** Sends raw bytes from the client. */
  send(bytes: Uint8Array): void;
  /** Waits until the server sent `n` frames in all. */
  frames(n: number): Promise<ServerFrame[]>;
}

async function pair(
  options: { split?: boolean; limits?: Partial<WebSocketLimits>; pausedClient?: boolean } = {},
): Promise<Pair> {
  const limits = { maxPayloadLength: 1024 * 1024, backpressureLimit: 64 * 1024 * 1024, ...options.limits };
  const events: (string | Uint8Array)[] = [];
  let report: (close: { code: number; reason: string }) => void = () => {};
  const closed = new Promise<{ code: number; reason: string }>((resolve) => {
    report = resolve;
  });
  let accepted: (ws: RawWebSocket<{ name: string }>) => void = () => {};
  const serverSide = new Promise<RawWebSocket<{ name: string }>>((resolve) => {
    accepted = resolve;
  });
  const listener = Bun.listen<{ ws: RawWebSocket<{ name: string }> }>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(socket) {
        socket.data = {
          ws: new RawWebSocket(
            socket as Socket<unknown>,
            { name: "test" },
            {
              open() {},
              message: (_ws, message) => events.push(message),
              drain: () => events.push("(drain)"),
              ping: () => events.push("(ping)"),
              pong: () => events.push("(pong)"),
              close: (_ws, code, reason) => report({ code, reason }),
            },
            limits,
          ),
        };
        accepted(socket.data.ws);
      },
      data(socket, chunk) {
        // Split: every byte its own read, the worst a peer's segmentation can do.
        if (options.split)
          for (let i = 0; i < chunk.length; i++) socket.data.ws.onData(chunk.slice(i, i + 1));
        else socket.data.ws.onData(chunk);
      },
      drain(socket) {
        socket.data.ws.onDrain();
      },
      close(socket) {
        socket.data.ws.onClose();
      },
    },
  });
  defer(() => listener.stop(true));
  const reader = new FrameReader();
  let ended = false;
  const client = await Bun.connect({
    hostname: "127.0.0.1",
    port: listener.port,
    socket: {
      data: (_socket, chunk) => {
        reader.push(chunk);
      },
      end: () => {
        ended = true;
      },
      close: () => {
        ended = true;
      },
    },
  });
  defer(() => client.terminate());
  if (options.pausedClient) client.pause();
  const ws = await serverSide;
  return {
    ws,
    client,
    reader,
    events,
    closed,
    clientEnded: () => ended,
    send: (bytes) => client.write(bytes),
    async frames(n) {
      await eventually(() => reader.frames.length >= n, 5000, `${n} frames from the server`);
      return reader.frames;
    },
  };
}

describe("RawWebSocket over a loopback socket pair", () => {
  test("text arrives as a string, binary as bytes; the server's messages go out unmasked, one frame each", async () => {
    const p = await pair();
    p.send(clientFrame(Op.Text, "héllo"));
    p.send(clientFrame(Op.Binary, new Uint8Array([0, 1, 2, 255])));
    await eventually(() => p.events.length === 2);
    expect(p.events[0]).toBe("héllo");
    expect(Array.from(p.events[1] as Uint8Array)).toEqual([0, 1, 2, 255]);

    const big = crypto.getRandomValues(new Uint8Array(100_000));
    expect(p.ws.send("ok")).toBe(2);
    expect(p.ws.send(big)).toBe(100_000);
    const [text, binary] = await p.frames(2);
    expect(text).toMatchObject({ fin: true, opcode: Op.Text });
    expect(new TextDecoder().decode(text?.payload)).toBe("ok");
    expect(binary).toMatchObject({ fin: true, opcode: Op.Binary });
    expect(Buffer.from(binary?.payload as Uint8Array).equals(Buffer.from(big))).toBe(true);
  });

  test("frames split byte by byte, 16- and 64-bit lengths and a fragmented message arrive whole, in order", async () => {
    const p = await pair({ split: true });
    const medium = crypto.getRandomValues(new Uint8Array(300));
    const large = crypto.getRandomValues(new Uint8Array(70_000));
    p.send(clientFrame(Op.Binary, medium));
    p.send(clientFrame(Op.Binary, large));
    p.send(clientFrame(Op.Text, "frag", false));
    p.send(clientFrame(Op.Ping, "mid")); // a control frame may come between fragments
    p.send(clientFrame(Op.Continuation, "ment", false));
    p.send(clientFrame(Op.Continuation, "ed", true));
    await eventually(() => p.events.length === 4, 10_000);
    expect(Buffer.from(p.events[0] as Uint8Array).equals(Buffer.from(medium))).toBe(true);
    expect(Buffer.from(p.events[1] as Uint8Array).equals(Buffer.from(large))).toBe(true);
    expect(p.events.slice(2)).toEqual(["(ping)", "fragmented"]);
  });

  test("a ping is answered with a pong carrying its payload", async () => {
    const p = await pair();
    p.send(clientFrame(Op.Ping, "are you there"));
    const [pong] = await p.frames(1);
    expect(pong?.opcode).toBe(Op.Pong);
    expect(new TextDecoder().decode(pong?.payload)).toBe("are you there");
    p.send(clientFrame(Op.Pong, ""));
    await eventually(() => p.events.includes("(pong)"));
  });

  test("the client's close is echoed with its code, the socket ends, and the handler gets code and reason", async () => {
    const p = await pair();
    p.send(clientFrame(Op.Close, new Uint8Array([0x03, 0xe8, ...new TextEncoder().encode("bye")])));
    const [echo] = await p.frames(1);
    expect(echo?.opcode).toBe(Op.Close);
    expect(closeOf(echo as ServerFrame).code).toBe(1000);
    await eventually(p.clientEnded);
    expect(await p.closed).toEqual({ code: 1000, reason: "bye" });
    expect(p.ws.send("too late")).toBe(0);
  });

  test("the server's close sends code and reason first; nothing is sent after it", async () => {
    const p = await pair();
    p.ws.close(4000, "session resumed on a newer connection");
    expect(p.ws.send("after")).toBe(0);
    const [frame] = await p.frames(1);
    expect(closeOf(frame as ServerFrame)).toEqual({
      code: 4000,
      reason: "session resumed on a newer connection",
    });
    p.send(clientFrame(Op.Close, new Uint8Array([0x0f, 0xa0])));
    p.client.end();
    expect(await p.closed).toEqual({ code: 4000, reason: "session resumed on a newer connection" });
    expect(p.reader.frames).toHaveLength(1);
  });

  test("an unmasked client frame fails the connection with 1002", async () => {
    const p = await pair();
    p.send(clientFrame(Op.Text, "plain", true, false));
    const [frame] = await p.frames(1);
    expect(closeOf(frame as ServerFrame)).toEqual({ code: 1002, reason: "client frames must be masked" });
    expect((await p.closed).code).toBe(1002);
    expect(p.events).toEqual([]);
  });

  test("a continuation with no message started, or an unknown opcode, is 1002", async () => {
    const a = await pair();
    a.send(clientFrame(Op.Continuation, "orphan"));
    expect(closeOf((await a.frames(1))[0] as ServerFrame)).toEqual({
      code: 1002,
      reason: "bad fragmentation",
    });
    const b = await pair();
    b.send(clientFrame(3, "?"));
    expect(closeOf((await b.frames(1))[0] as ServerFrame)).toEqual({
      code: 1002,
      reason: "unknown opcode 3",
    });
  });

  test("invalid UTF-8 in a text message is 1007", async () => {
    const p = await pair();
    p.send(clientFrame(Op.Text, new Uint8Array([0xc3, 0x28])));
    expect(closeOf((await p.frames(1))[0] as ServerFrame).code).toBe(1007);
    expect((await p.closed).code).toBe(1007);
  });

  test("a message over maxPayloadLength: 1009 to the client, 1006 'too big' to the handler (as Bun does)", async () => {
    const p = await pair({ limits: { maxPayloadLength: 1000 } });
    p.send(clientFrame(Op.Binary, new Uint8Array(1000))); // at the limit: fine
    p.send(clientFrame(Op.Binary, new Uint8Array(1001)));
    const [frame] = await p.frames(1);
    expect(closeOf(frame as ServerFrame).code).toBe(1009);
    expect(await p.closed).toEqual({ code: 1006, reason: "Received too big message" });
    expect(p.events).toHaveLength(1);
  });

  test("a peer that does not read: send returns -1 and queues; drain once the kernel took it all", async () => {
    const p = await pair({ pausedClient: true });
    const message = new Uint8Array(1024 * 1024).fill(7);
    let sent = 0;
    let result = 0;
    while (sent < 256) {
      result = p.ws.send(message);
      sent++;
      if (result === -1) break;
    }
    expect(result).toBe(-1);
    expect(p.ws.getBufferedAmount()).toBeGreaterThan(0);
    expect(p.events).not.toContain("(drain)");
    p.client.resume();
    await eventually(() => p.events.includes("(drain)"), 10_000, "drain");
    expect(p.ws.getBufferedAmount()).toBe(0);
    const frames = await p.frames(sent);
    expect(frames.every((f) => f.payload.length === message.length && f.payload[0] === 7)).toBe(true);
  });

  test("past backpressureLimit queued bytes the connection is dropped", async () => {
    const p = await pair({ pausedClient: true, limits: { backpressureLimit: 4 * 1024 * 1024 } });
    const message = new Uint8Array(1024 * 1024);
    let result = 1;
    for (let i = 0; i < 256 && result !== 0; i++) result = p.ws.send(message);
    expect(result).toBe(0);
    expect((await p.closed).code).toBe(1006);
  });
});
