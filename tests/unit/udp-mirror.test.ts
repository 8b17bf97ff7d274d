/**
 * UDP over a node link (server/udp-mirror.ts), the frames alone: each end of a link takes flow ids
 * from its own half (the dialler's below 2^31), a FLOW_OPEN for a lease this node does not serve, or
 * with an id from this end's own half, is answered with FLOW_CLOSE (code 1, gone), a DATAGRAM for a flow
 * the node does not know is answered the same way and counted, and a lost connection lets go of the
 * link's flow table. (Datagrams end to end through a mirror: tests/e2e/cluster-udp.test.ts.)
 */

import { expect, test } from "bun:test";
import { Mux } from "../../shared/relay/mux.ts";
import { ClusterUdp } from "../../shared/server/udp-mirror.ts";
import { newUdpCounters } from "../../shared/server/udp-port.ts";
import {
  decodeFrame,
  encodeDatagram,
  encodeFlowOpen,
  type Frame,
  forEachInBatch,
} from "../../shared/wire/codec.ts";
import { DEFAULTS, FlowCloseCode, FrameType } from "../../shared/wire/protocol.ts";

const settings = { window: DEFAULTS.window, maxFramePayload: DEFAULTS.maxFramePayload };
const silent = { info() {}, warn() {}, error() {}, debug() {} } as never;

function udpSide() {
  const closed = newUdpCounters();
  const udp = new ClusterUdp({
    host: "127.0.0.1",
    route: () => "offline",
    place: (target) => `no tunnel ${target} here`,
    settings: () => ({ idleMs: 60_000, maxFlows: 16 }),
    listensOn: () => false,
    closed,
    log: silent,
  });
  return { udp, closed };
}

/** Every frame `sent` holds, batches opened. */
function framesOf(sent: Uint8Array[]): Frame[] {
  const frames: Frame[] = [];
  const take = (bytes: Uint8Array) => void frames.push(decodeFrame(bytes.slice(), DEFAULTS.maxFramePayload));
  for (const message of sent) {
    if (message[0] === FrameType.Batch) forEachInBatch(message, take);
    else take(message);
  }
  return frames;
}

test("flow ids are split by link end; an unserved target, an id of this end's half and an unknown flow get FLOW_CLOSE (gone)", async () => {
  const { udp, closed } = udpSide();
  const sent: Uint8Array[] = [];
  const mux = new Mux(() => {}, settings);
  mux.start((frame) => void sent.push(frame.slice()));
  // This end accepted the link: its own ids are from 2^31 up.
  const flows = udp.datagrams("n1")(mux, false, () => 0);
  mux.datagrams = flows;
  expect(flows.allocate()).toBe(0x80000000);
  expect(flows.allocate()).toBe(0x80000001);
  const dialler = udp.datagrams("n2")(new Mux(() => {}, settings), true, () => 0);
  expect(dialler.allocate()).toBe(1);
  expect(udp.linkTo("n1")).toBe(flows);

  mux.receive(encodeFlowOpen(5, 0, { remote: "192.0.2.1:4000", target: "udp:40000" }));
  mux.receive(encodeFlowOpen(0x80000009, 0, { remote: "192.0.2.1:4000", target: "udp:40000" }));
  mux.receive(encodeDatagram(6, new Uint8Array(3)));
  // A reply for a flow of this end's half that it no longer has: dropped quietly.
  mux.receive(encodeDatagram(0x80000003, new Uint8Array(3)));
  await new Promise((resolve) => setImmediate(resolve));
  const closes = framesOf(sent).flatMap((f) => (f.type === FrameType.FlowClose ? [[f.stream, f.code]] : []));
  expect(closes).toEqual([
    [5, FlowCloseCode.Gone],
    [0x80000009, FlowCloseCode.Gone],
    [6, FlowCloseCode.Gone],
  ]);
  expect(closed.drops.offline).toBe(1);
  expect(closed.drops.unknown_flow).toBe(1);

  flows.gone();
  expect(udp.linkTo("n1")).toBeUndefined();
  expect(flows.live).toBe(false);
});
