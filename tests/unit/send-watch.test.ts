/** The send-queue watch (shared/relay/send-watch.ts): blocked past the high-water mark, unblocked below the low one. */

import { expect, test } from "bun:test";
import { SendWatch } from "../../shared/relay/send-watch.ts";

test("blocked once over the high mark, polled only while blocked, unblocked below the low mark or when closed", async () => {
  const ws = { bufferedAmount: 0, readyState: 1 };
  const events: boolean[] = [];
  const watch = new SendWatch(ws, (blocked) => events.push(blocked), 100, 10);
  watch.sent();
  expect(watch.blocked).toBe(false);
  ws.bufferedAmount = 101;
  watch.sent();
  watch.sent(); // told once
  expect(events).toEqual([true]);
  ws.bufferedAmount = 50; // between the marks: still blocked
  await Bun.sleep(5);
  expect(watch.blocked).toBe(true);
  ws.bufferedAmount = 9;
  for (let i = 0; i < 200 && watch.blocked; i++) await Bun.sleep(1);
  expect(events).toEqual([true, false]);
  ws.bufferedAmount = 500;
  watch.sent();
  ws.readyState = 3; // closed with a full queue: nothing will drain it
  for (let i = 0; i < 200 && watch.blocked; i++) await Bun.sleep(1);
  expect(events).toEqual([true, false, true, false]);
  watch.stop();
});
