/**
 * DNS-01 through RFC 2136: the TXT record `_acme-challenge.NAME` is added to and removed from the
 * operator's DNS server with dynamic updates signed by a TSIG key (`--acme-dns`, `--acme-dns-key`).
 *
 * The updates are sent by `nsupdate` (ISC's reference client, Debian's dnsutils) rather than by a DNS
 * message encoder and TSIG signer of our own: it reads the key file `tsig-keygen` writes, and its
 * failures (refused, bad key, unreachable) come back as one line.
 * @module
 */

/** Where and how updates are sent. */
export interface DnsUpdateTarget {
  host: string;
  port: number;
  /** TSIG key file in BIND's format (`key "name" { algorithm …; secret "…"; };`). */
  keyFile: string;
}

/** Most time one update may take (nsupdate retries UDP, then TCP). */
const UPDATE_TIMEOUT_MS = 15_000;

/** Whether `nsupdate` can be run here. */
export function nsupdateAvailable(): boolean {
  return Bun.which("nsupdate") !== null;
}

/** Adds (`add`) or removes (`delete`) one TXT value of `_acme-challenge.NAME`; throws with nsupdate's one line. */
export async function updateChallengeRecord(
  target: DnsUpdateTarget,
  action: "add" | "delete",
  name: string,
  value: string,
): Promise<void> {
  const record = `_acme-challenge.${name.replace(/^\*\./, "")}.`;
  const line =
    action === "add" ? `update add ${record} 60 TXT "${value}"` : `update delete ${record} TXT "${value}"`;
  const script = `server ${target.host} ${target.port}\n${line}\nsend\n`;
  const child = Bun.spawn(["nsupdate", "-k", target.keyFile, "-t", "10"], {
    stdin: new Blob([script]),
    stdout: "ignore",
    stderr: "pipe",
  });
  const timer = setTimeout(() => child.kill("SIGKILL"), UPDATE_TIMEOUT_MS);
  try {
    const [code, stderr] = await Promise.all([child.exited, new Response(child.stderr).text()]);
    if (code !== 0) {
      const why = stderr.trim().split("\n").pop() || `exit ${code}`;
      throw new Error(`DNS update of ${record} at ${target.host}:${target.port} failed: ${why}`);
    }
  } finally {
    clearTimeout(timer);
  }
}
