/**
 * The HTTP section's WebSocket echo, both ends (bench/http.ts runs each in its own process).
 *
 * ```sh
 * bun bench/wsecho.ts serve                          # echo server on 127.0.0.1:0; prints "port N"; exits when stdin closes
 * bun bench/wsecho.ts ping URL ROUNDS WARMUP SIZE    # round trips of SIZE-byte binary messages, one at a time
 * ```
 *
 * `ping` connects, runs WARMUP round trips, prints "ready" and waits for a line on stdin; then it times
 * ROUNDS round trips (send → the echo's message event) and prints one JSON line with p50/p99 in µs, the
 * echoes that differed, and its own CPU seconds over the timed part. Bounded by env BENCH_TIMEOUT
 * seconds (default 120).
 * @module
 */

function serve(): void {
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(request, srv) {
      if (srv.upgrade(request)) return undefined;
      return new Response("WebSocket echo only\n", { status: 426 });
    },
    websocket: {
      message(ws, message) {
        ws.send(message);
      },
    },
  });
  process.stdout.write(`port ${server.port}\n`);
  // Lives as long as its stdin: the bench closes it (or dies) and the server goes with it.
  void (async () => {
    for await (const _ of Bun.stdin.stream()) {
    }
    process.exit(0);
  })();
}

/** The p-th percentile (0–100) of sorted values. */
function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] as number;
}

async function ping(url: string, rounds: number, warmup: number, size: number): Promise<void> {
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  let onMessage: ((data: ArrayBuffer) => void) | undefined;
  ws.onmessage = (event) => onMessage?.(event.data as ArrayBuffer);
  await new Promise<void>((resolve, reject) => {
    ws.onopen = () => resolve();
    ws.onerror = () => reject(new Error(`cannot open ${url}`));
    ws.onclose = (event) => reject(new Error(`${url} closed (${event.code}) before it opened`));
  });
  let closing = false;
  ws.onclose = (event) => {
    if (closing) return;
    process.stdout.write(`${JSON.stringify({ mode: "wsecho", error: `${url} closed (${event.code})` })}\n`);
    process.exit(1);
  };
  const payload = new Uint8Array(size);
  let errors = 0;
  const once = (i: number): Promise<number> =>
    new Promise((resolve) => {
      payload[0] = i & 0xff;
      const started = Bun.nanoseconds();
      onMessage = (data) => {
        const elapsed = Bun.nanoseconds() - started;
        if (data.byteLength !== size || new Uint8Array(data)[0] !== (i & 0xff)) errors++;
        resolve(elapsed);
      };
      ws.send(payload);
    });
  for (let i = 0; i < warmup; i++) await once(i);
  process.stdout.write("ready\n");
  const reader = Bun.stdin.stream().getReader();
  await reader.read();
  const cpu0 = process.cpuUsage();
  const times: number[] = [];
  for (let i = 0; i < rounds && errors < 10; i++) times.push((await once(i)) / 1000);
  const cpu = process.cpuUsage(cpu0);
  closing = true;
  ws.close();
  times.sort((a, b) => a - b);
  const result = {
    mode: "wsecho",
    rounds: times.length,
    p50: Math.round(percentile(times, 50)),
    p99: Math.round(percentile(times, 99)),
    errors,
    cpu: (cpu.user + cpu.system) / 1e6,
  };
  process.stdout.write(`${JSON.stringify({ phase: "timed" })}\n${JSON.stringify(result)}\n`);
  process.exit(0);
}

async function main(): Promise<void> {
  const [mode, ...args] = process.argv.slice(2);
  if (mode === "serve") return serve();
  if (mode === "ping" && args.length === 4) {
    const limit = Number(process.env.BENCH_TIMEOUT ?? 120);
    setTimeout(() => {
      process.stdout.write(`${JSON.stringify({ mode: "wsecho", error: `no result within ${limit} s` })}\n`);
      process.exit(1);
    }, limit * 1000);
    const [url, rounds, warmup, size] = args as [string, string, string, string];
    return ping(url, Number(rounds), Number(warmup), Number(size));
  }
  process.stderr.write("usage: bun bench/wsecho.ts serve | ping URL ROUNDS WARMUP SIZE\n");
  process.exit(2);
}

if (import.meta.main) await main();
