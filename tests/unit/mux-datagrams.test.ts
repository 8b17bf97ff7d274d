/**
 * The mux and UDP frames: a side that never agreed to UDP (no flow table) treats FLOW_OPEN, DATAGRAM
 * and FLOW_CLOSE as protocol errors; with one, they reach it (alone or inside a BATCH); a datagram
 * is sent whole, batched when small, and dropped (false) while detached.
 */

import { expect, test } from "bun:test";
import { type DatagramHandler, Mux } from "../../shared/relay/mux.ts";
import {
  decodeFrame,
  encodeDatagram,
  encodeFlowClose,
  encodeFlowOpen,
  forEachInBatch,
} from "../../shared/wire/codec.ts";
import { DEFAULTS, FrameType, ProtocolError } from "../../shared/wire/protocol.ts";

const settings = { window: DEFAULTS.window, maxFramePayload: DEFAULTS.maxFramePayload };

test("without a flow table, every UDP frame is a protocol error", () => {
  const mux = new Mux(() => {}, settings);
  for (const frame of [
    encodeFlowOpen(1, 1, { remote: "127.0.0.1:5" }),
    encodeDatagram(1, new Uint8Array(3)),
    encodeFlowClose(1, 1),
  ])
    expect(() => mux.receive(frame)).toThrow(ProtocolError);
});

test("with one, each frame reaches it; datagrams go out whole, small ones batched; none while detached", async () => {
  const seen: string[] = [];
  const handler: DatagramHandler = {
    onFlowOpen: (f) => void seen.push(`open ${f.stream} ${f.tunnel} ${f.meta.remote}`),
    onDatagram: (f) => void seen.push(`datagram ${f.stream} ${f.payload.length}`),
    onFlowClose: (f) => void seen.push(`close ${f.stream} ${f.code}`),
  };
  const sent: Uint8Array[] = [];
  const mux = new Mux((frame) => void sent.push(frame.slice()), settings);
  mux.datagrams = handler;
  mux.receive(encodeFlowOpen(7, 2, { remote: "[::1]:9" }));
  mux.receive(encodeDatagram(7, new Uint8Array(0)));
  mux.receive(encodeFlowClose(7, 3));
  expect(seen).toEqual(["open 7 2 [::1]:9", "datagram 7 0", "close 7 3"]);

  expect(mux.sendDatagram(7, new Uint8Array(100).fill(1))).toBe(true);
  expect(mux.sendDatagram(7, new Uint8Array(0))).toBe(true);
  expect(mux.sendDatagram(8, new Uint8Array(65_507).fill(2))).toBe(true);
  await new Promise((resolve) => setImmediate(resolve));
  const frames: { stream: number; length: number }[] = [];
  for (const message of sent) {
    const take = (bytes: Uint8Array) => {
      const frame = decodeFrame(bytes, DEFAULTS.maxFramePayload);
      if (frame.type === FrameType.Datagram)
        frames.push({ stream: frame.stream, length: frame.payload.length });
    };
    if (message[0] === FrameType.Batch) forEachInBatch(message, take);
    else take(message);
  }
  // The big one leaves at once, after what was batched before it: order kept.
  expect(frames).toEqual([
    { stream: 7, length: 100 },
    { stream: 7, length: 0 },
    { stream: 8, length: 65_507 },
  ]);
  mux.detach();
  expect(mux.sendDatagram(7, new Uint8Array(1))).toBe(false);
});
