/**
 * The HTTP ingress's routing name and its heads budget. The rest of the ingress (routing, rewriting,
 * timeouts, upgrades) is covered end to end in tests/e2e (http, http-parity, hardening).
 */

import { afterEach, describe, expect, test } from "bun:test";
import { DEFAULT_HEAD_BUDGET, HeadBudget, listenHttp, nameOf } from "../../shared/server/http-ingress.ts";
import { cleanup, defer, eventually } from "../support/processes.ts";
import { recordingVisitor } from "../support/sockets.ts";

afterEach(cleanup);

const log = { info() {}, warn() {}, error() {} };

describe("nameOf", () => {
  test("NAME.DOMAIN, with or without a port, in any case", () => {
    expect(nameOf("demo.localhost", "localhost")).toBe("demo");
    expect(nameOf("demo.localhost:8080", "localhost")).toBe("demo");
    expect(nameOf("DeMo.LocalHost:80", "localhost")).toBe("demo");
    expect(nameOf("app.tunnel.example.com", "Tunnel.Example.com")).toBe("app");
  });

  test("the domain itself, an empty name, another domain or a look-alike: no name", () => {
    expect(nameOf("localhost", "localhost")).toBeUndefined();
    expect(nameOf("localhost:8080", "localhost")).toBeUndefined();
    expect(nameOf(".localhost", "localhost")).toBeUndefined();
    expect(nameOf("demo.example.com", "localhost")).toBeUndefined();
    expect(nameOf("demo-localhost", "localhost")).toBeUndefined();
    expect(nameOf("demo.notlocalhost", "localhost")).toBeUndefined();
    expect(nameOf("", "localhost")).toBeUndefined();
    expect(nameOf("[::1]:8080", "localhost")).toBeUndefined();
  });

  test("only a trailing :PORT is cut; more labels stay in the name (the subdomain rule refuses them later)", () => {
    expect(nameOf("a.b.localhost", "localhost")).toBe("a.b");
    expect(nameOf("demo.localhost:", "localhost")).toBeUndefined();
  });
});

describe("HeadBudget", () => {
  test("32 MiB by default; nothing held at first", () => {
    const budget = new HeadBudget();
    expect(budget.limit).toBe(DEFAULT_HEAD_BUDGET);
    expect(DEFAULT_HEAD_BUDGET).toBe(32 * 1024 * 1024);
    expect(budget.used).toBe(0);
    expect(new HeadBudget(1000).limit).toBe(1000);
  });

  test("one budget across listeners: a head held on one port counts against the other; 503 past it, back to 0 after", async () => {
    const heads = new HeadBudget(1000);
    const options = { host: "127.0.0.1", port: 0, domain: "localhost", route: () => undefined, heads, log };
    const first = listenHttp(options);
    const second = listenHttp(options);
    defer(() => first.stop(true));
    defer(() => second.stop(true));

    const holder = await recordingVisitor(first.port);
    holder.socket.write(`GET / HTTP/1.1\r\nHost: demo.localhost\r\nX-Pad: ${"a".repeat(700)}`);
    await eventually(() => heads.used > 700, 3000, "the first head counted");
    const held = heads.used;
    expect(held).toBeLessThanOrEqual(1000);
    expect(holder.text()).toBe("");

    const late = await recordingVisitor(second.port);
    late.socket.write(`GET / HTTP/1.1\r\nHost: demo.localhost\r\nX-Pad: ${"b".repeat(400)}`);
    await eventually(late.ended, 3000, "the second visitor answered and closed");
    expect(late.text()).toMatch(/^HTTP\/1\.1 503 /);
    expect(late.text()).toContain("server busy");
    expect(heads.used).toBe(held); // the refused head gave its bytes back

    holder.socket.destroy();
    await eventually(() => heads.used === 0, 3000, "the held head released");
  });

  test("a head that completes releases its bytes", async () => {
    const heads = new HeadBudget(1000);
    const ingress = listenHttp({
      host: "127.0.0.1",
      port: 0,
      domain: "localhost",
      route: () => undefined,
      heads,
      log,
    });
    defer(() => ingress.stop(true));
    const v = await recordingVisitor(ingress.port);
    v.socket.write("GET / HTTP/1.1\r\nHost: demo.localhost\r\n");
    await eventually(() => heads.used > 0, 3000, "the partial head counted");
    v.socket.write("\r\n");
    await eventually(() => v.text().includes("\r\n\r\n"), 3000, "an answer");
    expect(v.text()).toMatch(/^HTTP\/1\.1 404 /); // no tunnel at demo.localhost
    expect(heads.used).toBe(0);
  });
});
