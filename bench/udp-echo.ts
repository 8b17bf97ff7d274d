/**
 * The UDP section's helpers, as their own processes (so that the measuring loop shares no event loop
 * with the tunnel or the service):
 *
 * ```sh
 * bun bench/udp-echo.ts echo                      # a UDP echo service on 127.0.0.1; prints "port N"
 * bun bench/udp-echo.ts ping PORT ROUNDS WARMUP SIZE
 *     # one socket, request/response of SIZE bytes, one at a time; prints one JSON line:
 *     # {"p50":µs,"p99":µs,"lost":n,"rounds":n} (a round without its answer in 1 s counts as lost)
 * ```
 * @module
 */

const [mode, ...args] = process.argv.slice(2);

if (mode === "echo") {
  const socket = await Bun.udpSocket({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      data(s, data, port, address) {
        s.send(data, port, address);
      },
      error() {},
    },
  });
  process.stdout.write(`port ${socket.port}\n`);
} else if (mode === "ping") {
  const [port, rounds, warmup, size] = args.map(Number) as [number, number, number, number];
  let wake: (() => void) | undefined;
  let answers = 0;
  const socket = await Bun.udpSocket({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      data() {
        answers++;
        wake?.();
      },
      error() {},
    },
  });
  const payload = new Uint8Array(size).fill(0x61);
  const samples: number[] = [];
  let lost = 0;
  for (let i = 0; i < warmup + rounds; i++) {
    const before = answers;
    const started = performance.now();
    socket.send(payload, port, "127.0.0.1");
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 1000);
      wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
    wake = undefined;
    if (answers === before) lost++;
    else if (i >= warmup) samples.push((performance.now() - started) * 1000);
  }
  samples.sort((a, b) => a - b);
  const at = (q: number) =>
    Math.round(samples[Math.min(samples.length - 1, Math.floor(q * samples.length))] ?? 0);
  process.stdout.write(`${JSON.stringify({ p50: at(0.5), p99: at(0.99), lost, rounds })}\n`);
  socket.close();
} else {
  process.stderr.write("usage: bun bench/udp-echo.ts echo | ping PORT ROUNDS WARMUP SIZE\n");
  process.exit(2);
}

export {};
