/**
 * The public UDP socket's larger receive buffer (shared/udp-buffer.ts): on Linux the kernel reports
 * a buffer at least the default one, as large as `net.core.rmem_max` allows, on a real socket.
 */

import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { growReceiveBuffer } from "../../shared/udp-buffer.ts";

test("growReceiveBuffer sets SO_RCVBUF on a Bun UDP socket up to net.core.rmem_max", async () => {
  const socket = await Bun.udpSocket({ hostname: "127.0.0.1", port: 0 });
  try {
    const granted = await growReceiveBuffer(socket, 1024 * 1024);
    if (process.platform !== "linux") {
      expect(granted).toBeUndefined();
      return;
    }
    const max = Number(readFileSync("/proc/sys/net/core/rmem_max", "utf8"));
    // Linux doubles what it grants (bookkeeping) and caps an unprivileged request at rmem_max.
    expect(granted).toBe(2 * Math.min(1024 * 1024, max));
    // A socket that is not one (no descriptor) is left alone.
    expect(await growReceiveBuffer({})).toBeUndefined();
  } finally {
    socket.close();
  }
});
