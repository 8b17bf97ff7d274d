/**
 * PROXY protocol headers (HAProxy's spec, versions 1 and 2): what the client writes into a connection
 * to its local service before the first byte, when a tunnel has `--proxy-protocol v1|v2`, so that the
 * service (nginx, HAProxy, Postfix, …) sees the visitor's own address and port instead of the client's.
 *
 * ```text
 * v1  PROXY TCP4 203.0.113.9 198.51.100.1 51234 443\r\n       (text; TCP6 for IPv6; at most 107 bytes)
 *     PROXY UNKNOWN\r\n                                        (addresses unknown)
 * v2  \r\n\r\n\0\r\nQUIT\n | 0x21 | 0x11 TCP4 / 0x21 TCP6 | length u16 | src, dst, src port, dst port
 *     … | 0x20 LOCAL | 0x00 | 0                                 (addresses unknown)
 * ```
 *
 * An IPv4-mapped IPv6 address counts as IPv4. When an address is missing, malformed, or the two are of
 * different families, v1 says UNKNOWN and v2 LOCAL: the receiver then uses the connection's own
 * addresses, as the spec asks. {@link parseProxyHeader} reads both versions back (tests, and a service
 * written in TypeScript).
 * @module
 */

import { formatIpv4, formatIpv6, type IpFamily, parseIpInto, splitAddress } from "../ip.ts";

/** A PROXY protocol version, as `--proxy-protocol` names it. */
export type ProxyVersion = "v1" | "v2";

/** The versions `--proxy-protocol` accepts. */
export const PROXY_VERSIONS: readonly ProxyVersion[] = ["v1", "v2"];

/** The connection a header describes: who connected (source) to which address (destination). */
export interface ProxyAddresses {
  sourceIp: string;
  sourcePort: number;
  destinationIp: string;
  destinationPort: number;
}

/** The 12 bytes every v2 header starts with. */
export const V2_SIGNATURE = Uint8Array.of(
  0x0d,
  0x0a,
  0x0d,
  0x0a,
  0x00,
  0x0d,
  0x0a,
  0x51,
  0x55,
  0x49,
  0x54,
  0x0a,
);

/** Longest v1 header, CRLF included (the spec's bound). */
export const V1_MAX_LENGTH = 107;

const encoder = new TextEncoder();
const source = new Uint32Array(4);
const destination = new Uint32Array(4);

/** Both addresses parsed into the scratch words, or 0 when they are unknown or of different families. */
function familyOf(addresses: ProxyAddresses | undefined): IpFamily | 0 {
  if (addresses === undefined) return 0;
  const { sourcePort, destinationPort } = addresses;
  const ports = [sourcePort, destinationPort];
  if (!ports.every((port) => Number.isInteger(port) && port >= 0 && port <= 65535)) return 0;
  const family = parseIpInto(addresses.sourceIp, source);
  return family !== 0 && parseIpInto(addresses.destinationIp, destination) === family ? family : 0;
}

/** A v1 (text) header; `PROXY UNKNOWN` when the addresses are unknown or of different families. */
export function encodeProxyV1(addresses: ProxyAddresses | undefined): Uint8Array {
  const family = familyOf(addresses);
  if (family === 0 || addresses === undefined) return encoder.encode("PROXY UNKNOWN\r\n");
  const [from, to] =
    family === 4
      ? [formatIpv4(source[0] as number), formatIpv4(destination[0] as number)]
      : [formatIpv6(source), formatIpv6(destination)];
  const { sourcePort, destinationPort } = addresses;
  return encoder.encode(`PROXY TCP${family} ${from} ${to} ${sourcePort} ${destinationPort}\r\n`);
}

/** A v2 (binary) header; the LOCAL command when the addresses are unknown or of different families. */
export function encodeProxyV2(addresses: ProxyAddresses | undefined): Uint8Array {
  const family = familyOf(addresses);
  const addressBytes = family === 4 ? 12 : family === 6 ? 36 : 0;
  const header = new Uint8Array(16 + addressBytes);
  header.set(V2_SIGNATURE);
  const view = new DataView(header.buffer);
  if (family === 0 || addresses === undefined) {
    header[12] = 0x20; // version 2, LOCAL
    header[13] = 0x00; // UNSPEC
    return header;
  }
  header[12] = 0x21; // version 2, PROXY
  header[13] = family === 4 ? 0x11 : 0x21; // TCP over IPv4 / IPv6
  view.setUint16(14, addressBytes);
  const words = family === 4 ? 1 : 4;
  for (let k = 0; k < words; k++) {
    view.setUint32(16 + 4 * k, source[k] as number);
    view.setUint32(16 + 4 * words + 4 * k, destination[k] as number);
  }
  view.setUint16(16 + 8 * words, addresses.sourcePort);
  view.setUint16(18 + 8 * words, addresses.destinationPort);
  return header;
}

/** A header of the given version (see {@link encodeProxyV1} and {@link encodeProxyV2}). */
export function encodeProxyHeader(version: ProxyVersion, addresses: ProxyAddresses | undefined): Uint8Array {
  return version === "v1" ? encodeProxyV1(addresses) : encodeProxyV2(addresses);
}

/** A header read back. */
export interface ProxyHeader {
  version: 1 | 2;
  /** `proxy`: the addresses are the visitor's; `local` (v2) or `unknown` (v1): use the connection's. */
  command: "proxy" | "local" | "unknown";
  /** The addresses, canonical text (IPv4 dotted, IPv6 RFC 5952), for the `proxy` command. */
  addresses?: ProxyAddresses;
  family?: IpFamily;
  /** Bytes the header took: the service's own bytes start here. */
  length: number;
}

/**
 * Reads a v1 or v2 header at the start of `bytes`. Undefined when more bytes are needed; throws when
 * they cannot start a valid header.
 * @throws {Error} for a malformed header (one line).
 */
export function parseProxyHeader(bytes: Uint8Array): ProxyHeader | undefined {
  const signature = V2_SIGNATURE.length;
  let isV2 = bytes.length > 0;
  for (let i = 0; i < Math.min(signature, bytes.length); i++) if (bytes[i] !== V2_SIGNATURE[i]) isV2 = false;
  if (isV2) return parseV2(bytes);
  return parseV1(bytes);
}

function parseV1(bytes: Uint8Array): ProxyHeader | undefined {
  const prefix = "PROXY ";
  for (let i = 0; i < Math.min(prefix.length, bytes.length); i++)
    if (bytes[i] !== prefix.charCodeAt(i)) throw new Error("not a PROXY protocol header");
  let end = -1;
  for (let i = 0; i + 1 < Math.min(bytes.length, V1_MAX_LENGTH); i++)
    if (bytes[i] === 0x0d && bytes[i + 1] === 0x0a) {
      end = i;
      break;
    }
  if (end < 0) {
    if (bytes.length >= V1_MAX_LENGTH) throw new Error("PROXY v1 header longer than 107 bytes");
    return undefined;
  }
  const line = new TextDecoder().decode(bytes.subarray(0, end));
  const length = end + 2;
  if (line === "PROXY UNKNOWN" || line.startsWith("PROXY UNKNOWN "))
    return { version: 1, command: "unknown", length };
  const match = /^PROXY TCP([46]) (\S+) (\S+) (\d{1,5}) (\d{1,5})$/.exec(line);
  if (match === null) throw new Error(`malformed PROXY v1 header: ${JSON.stringify(line)}`);
  const family = Number(match[1]) as IpFamily;
  const [from, to] = [match[2] as string, match[3] as string];
  const [sourcePort, destinationPort] = [Number(match[4]), Number(match[5])];
  const words = new Uint32Array(4);
  for (const ip of [from, to])
    if (parseIpInto(ip, words) !== family || (family === 4) === ip.includes(":"))
      throw new Error(`PROXY v1 header: '${ip}' is not an IPv${family} address`);
  if (sourcePort > 65535 || destinationPort > 65535) throw new Error("PROXY v1 header: port above 65535");
  return {
    version: 1,
    command: "proxy",
    family,
    addresses: { sourceIp: from, sourcePort, destinationIp: to, destinationPort },
    length,
  };
}

function parseV2(bytes: Uint8Array): ProxyHeader | undefined {
  if (bytes.length < 16) return undefined;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const versionCommand = bytes[12] as number;
  if (versionCommand >> 4 !== 2) throw new Error(`PROXY v2 header of version ${versionCommand >> 4}`);
  const length = 16 + view.getUint16(14);
  if (bytes.length < length) return undefined;
  const command = versionCommand & 0x0f;
  if (command === 0) return { version: 2, command: "local", length };
  if (command !== 1) throw new Error(`PROXY v2 header with command ${command}`);
  const familyByte = bytes[13] as number;
  const family: IpFamily | 0 = familyByte === 0x11 ? 4 : familyByte === 0x21 ? 6 : 0;
  if (family === 0) throw new Error(`PROXY v2 header of family/transport 0x${familyByte.toString(16)}`);
  const words = family === 4 ? 1 : 4;
  if (length < 16 + 8 * words + 4) throw new Error("PROXY v2 header shorter than its addresses");
  const read = (at: number) => {
    const out = new Uint32Array(4);
    for (let k = 0; k < words; k++) out[k] = view.getUint32(at + 4 * k);
    return family === 4 ? formatIpv4(out[0] as number) : formatIpv6(out);
  };
  return {
    version: 2,
    command: "proxy",
    family,
    addresses: {
      sourceIp: read(16),
      destinationIp: read(16 + 4 * words),
      sourcePort: view.getUint16(16 + 8 * words),
      destinationPort: view.getUint16(18 + 8 * words),
    },
    length,
  };
}

/**
 * The addresses a client's header names for one visitor: OPEN's `remote` as source and `local` (the
 * public address the visitor connected to) as destination. A server older than `local` sends none:
 * the destination is then the tunnel's public host and port as the server announced them when the host
 * is an address of the visitor's family, else the unspecified address of that family (`0.0.0.0` or
 * `::`) with the public port, so that the visitor's own address still gets through. Undefined when
 * `remote` is not `ip:port` (the header then says UNKNOWN / LOCAL).
 */
export function visitorAddresses(
  remote: string,
  local: string | undefined,
  announced: { host: string; port: number },
): ProxyAddresses | undefined {
  const from = splitAddress(remote);
  const family = from === undefined ? 0 : parseIpInto(from.ip, source);
  if (from === undefined || family === 0) return undefined;
  const to = local === undefined ? undefined : splitAddress(local);
  if (to !== undefined)
    return { sourceIp: from.ip, sourcePort: from.port, destinationIp: to.ip, destinationPort: to.port };
  const host = announced.host.replace(/^\[|\]$/g, "");
  const sameFamily = parseIpInto(host, destination) === family;
  return {
    sourceIp: from.ip,
    sourcePort: from.port,
    destinationIp: sameFamily ? host : family === 4 ? "0.0.0.0" : "::",
    destinationPort: announced.port,
  };
}
