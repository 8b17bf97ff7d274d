/**
 * Test support, bind9: Debian's `named` on a free loopback port, authoritative for one zone that takes
 * RFC 2136 dynamic updates signed with a TSIG key (made with `tsig-keygen`): the operator's DNS server
 * of a DNS-01 setup. Every name in the zone answers 127.0.0.1, so pebble can use it as its only DNS.
 * @module
 */

import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { freePorts } from "./pebble.ts";
import { runToExit, spawnRole } from "./processes.ts";
import { configFolder } from "./server-config.ts";

/** Whether bind9's `named`, `tsig-keygen` and `nsupdate` are installed (`apt-get install bind9 dnsutils`). */
export const BIND9_INSTALLED =
  Bun.which("named") !== null || Bun.which("/usr/sbin/named") !== null
    ? Bun.which("tsig-keygen") !== null && Bun.which("nsupdate") !== null
    : false;

/** A running named. */
export interface Bind9 {
  /** `127.0.0.1:PORT`. */
  address: string;
  port: number;
  /** The TSIG key file (BIND's format), for `--acme-dns-key`. */
  keyFile: string;
}

/** Starts named for `zone` (records: NS, A 127.0.0.1 for the apex and `*`); resolves once it serves. */
export async function startBind9(zone: string): Promise<Bind9> {
  const dir = configFolder();
  const [port] = freePorts(1) as [number];
  const keygen = await runToExit(["tsig-keygen", "-a", "hmac-sha256", "acme-key"]);
  if (keygen.code !== 0) throw new Error(`tsig-keygen failed: ${keygen.stderr}`);
  const keyFile = join(dir, "acme-key.conf");
  writeFileSync(keyFile, keygen.stdout);
  writeFileSync(
    join(dir, `${zone}.zone`),
    [
      "$TTL 60",
      `@ IN SOA ns.${zone}. admin.${zone}. 1 60 60 600 60`,
      `@ IN NS ns.${zone}.`,
      "ns IN A 127.0.0.1",
      "@ IN A 127.0.0.1",
      "* IN A 127.0.0.1",
      "",
    ].join("\n"),
  );
  const config = join(dir, "named.conf");
  writeFileSync(
    config,
    `options {
  directory "${dir}";
  pid-file "${dir}/named.pid";
  session-keyfile "${dir}/session.key";
  managed-keys-directory "${dir}";
  listen-on port ${port} { 127.0.0.1; };
  listen-on-v6 { none; };
  recursion no;
  dnssec-validation no;
  allow-query { any; };
};
controls { };
include "${keyFile}";
zone "${zone}" {
  type primary;
  file "${dir}/${zone}.zone";
  allow-update { key "acme-key"; };
};
`,
  );
  const named = Bun.which("named") ?? "/usr/sbin/named";
  const role = spawnRole([named, "-g", "-c", config, "-n", "1"]);
  await Promise.race([
    role.waitFor(/running/, 15_000),
    role.proc.exited.then((code) => {
      throw new Error(`named exited (${code}): ${role.stderr()}`);
    }),
  ]);
  return { address: `127.0.0.1:${port}`, port, keyFile };
}
