/**
 * IP addresses and CIDR ranges as numbers, for both roles: the server's allow and deny lists
 * (shared/server/access-list.ts) check every visitor against them, the client validates its
 * `--allow`/`--deny` flags with the same parser and writes PROXY protocol headers
 * (shared/wire/proxy-protocol.ts) from them.
 *
 * An address is parsed into four 32-bit words (IPv6, big-endian order) or one (IPv4, in word 0),
 * written into a buffer the caller owns: checking a visitor allocates nothing. An IPv4-mapped IPv6
 * address (`::ffff:192.0.2.1`, what a dual-stack socket reports for an IPv4 peer) parses as the IPv4
 * address it maps, so one IPv4 rule covers a visitor whichever way the socket was bound.
 * @module
 */

/** An address family: 4 or 6. */
export type IpFamily = 4 | 6;

/** A parsed address: `words[0]` for IPv4, `words[0..3]` for IPv6 (big-endian, unsigned). */
export interface IpAddress {
  family: IpFamily;
  words: Uint32Array;
}

/** A CIDR range: the network (host bits cleared) and its prefix length. */
export interface Cidr {
  family: IpFamily;
  /** Leading bits that must match (0–32 for IPv4, 0–128 for IPv6). */
  prefix: number;
  /** The network's words (as {@link IpAddress.words}), host bits cleared. */
  network: Uint32Array;
  /** The mask of each word. */
  mask: Uint32Array;
  /** Canonical text: `10.0.0.0/8`, `2001:db8::/32`, `192.0.2.7/32` for a single address. */
  text: string;
}

/** Scratch for the groups of an IPv6 address while it is parsed (one at a time: JS is single-threaded). */
const groups = new Uint16Array(8);

const COLON = 58;
const DOT = 46;

/** The value of a hex digit, or -1. */
function hexDigit(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  if (c >= 97 && c <= 102) return c - 87;
  if (c >= 65 && c <= 70) return c - 55;
  return -1;
}

/**
 * Parses dotted-quad IPv4 between `start` and `end`: four decimal parts of 0–255, no leading zeros
 * (`010` is octal to some parsers, decimal to others: refused). -1 when malformed, else the address.
 */
function parseV4(text: string, start: number, end: number): number {
  let value = 0;
  let parts = 0;
  let i = start;
  while (parts < 4) {
    let part = 0;
    const first = i;
    while (i < end) {
      const c = text.charCodeAt(i);
      if (c < 48 || c > 57) break;
      part = part * 10 + (c - 48);
      i++;
    }
    const digits = i - first;
    if (digits === 0 || digits > 3 || part > 255 || (digits > 1 && text.charCodeAt(first) === 48)) return -1;
    value = value * 256 + part;
    parts++;
    if (parts < 4) {
      if (i >= end || text.charCodeAt(i) !== DOT) return -1;
      i++;
    }
  }
  return i === end ? value : -1;
}

/** Parses IPv6 text between `start` and `end` into {@link groups}; false when malformed. */
function parseV6(text: string, start: number, end: number): boolean {
  let count = 0;
  let gap = -1;
  let i = start;
  if (end - start < 2) return false;
  if (text.charCodeAt(i) === COLON) {
    if (text.charCodeAt(i + 1) !== COLON) return false;
    gap = 0;
    i += 2;
  }
  while (i < end) {
    const groupStart = i;
    let value = 0;
    let digits = 0;
    while (i < end && digits <= 4) {
      const d = hexDigit(text.charCodeAt(i));
      if (d < 0) break;
      value = value * 16 + d;
      digits++;
      i++;
    }
    if (i < end && text.charCodeAt(i) === DOT) {
      // An embedded IPv4 address ends the text and stands for the last two groups.
      if (count > 6) return false;
      const v4 = parseV4(text, groupStart, end);
      if (v4 < 0) return false;
      groups[count++] = v4 >>> 16;
      groups[count++] = v4 & 0xffff;
      i = end;
      break;
    }
    if (digits === 0 || digits > 4 || count === 8) return false;
    groups[count++] = value;
    if (i === end) break;
    if (text.charCodeAt(i) !== COLON) return false;
    i++;
    if (i < end && text.charCodeAt(i) === COLON) {
      if (gap >= 0) return false;
      gap = count;
      i++;
    } else if (i === end) return false; // a single trailing colon
  }
  if (gap < 0) return count === 8;
  if (count > 7) return false; // `::` stands for at least one group
  const missing = 8 - count;
  for (let k = count - 1; k >= gap; k--) groups[k + missing] = groups[k] as number;
  for (let k = gap; k < gap + missing; k++) groups[k] = 0;
  return true;
}

/**
 * Parses an IPv4 or IPv6 address into `out` (at least 4 words) without allocating. An IPv4-mapped
 * IPv6 address comes out as IPv4; a zone (`fe80::1%eth0`) is ignored. Returns the family, or 0 when
 * `text` is no address.
 */
export function parseIpInto(text: string, out: Uint32Array): IpFamily | 0 {
  let end = text.indexOf("%");
  if (end < 0) end = text.length;
  let colon = false;
  for (let i = 0; i < end; i++)
    if (text.charCodeAt(i) === COLON) {
      colon = true;
      break;
    }
  if (!colon) {
    const v4 = parseV4(text, 0, end);
    if (v4 < 0) return 0;
    out[0] = v4;
    return 4;
  }
  if (!parseV6(text, 0, end)) return 0;
  for (let k = 0; k < 4; k++)
    out[k] = (((groups[2 * k] as number) << 16) | (groups[2 * k + 1] as number)) >>> 0;
  if (out[0] === 0 && out[1] === 0 && out[2] === 0xffff) {
    out[0] = out[3] as number;
    return 4;
  }
  return 6;
}

/** Parses an address (see {@link parseIpInto}); undefined when `text` is none. */
export function parseIp(text: string): IpAddress | undefined {
  const words = new Uint32Array(4);
  const family = parseIpInto(text, words);
  return family === 0 ? undefined : { family, words };
}

/** Dotted-quad text of an IPv4 address. */
export function formatIpv4(address: number): string {
  return `${address >>> 24}.${(address >>> 16) & 255}.${(address >>> 8) & 255}.${address & 255}`;
}

/** IPv6 text in RFC 5952's canonical form: lower case, the first longest run of 2+ zero groups as `::`. */
export function formatIpv6(words: ArrayLike<number>): string {
  const parts: number[] = [];
  for (let k = 0; k < 4; k++) parts.push((words[k] as number) >>> 16, (words[k] as number) & 0xffff);
  let bestAt = -1;
  let bestLength = 1;
  for (let k = 0; k < 8; ) {
    if (parts[k] !== 0) {
      k++;
      continue;
    }
    let run = k;
    while (run < 8 && parts[run] === 0) run++;
    if (run - k > bestLength) [bestAt, bestLength] = [k, run - k];
    k = run;
  }
  const hex = (list: number[]) => list.map((part) => part.toString(16)).join(":");
  if (bestAt < 0) return hex(parts);
  return `${hex(parts.slice(0, bestAt))}::${hex(parts.slice(bestAt + bestLength))}`;
}

/** Canonical text of a parsed address. */
export function formatIp(address: IpAddress): string {
  return address.family === 4 ? formatIpv4(address.words[0] as number) : formatIpv6(address.words);
}

/** The mask of each of a range's words for `prefix` leading bits. */
function masksFor(family: IpFamily, prefix: number): Uint32Array {
  const mask = new Uint32Array(4);
  const words = family === 4 ? 1 : 4;
  for (let k = 0; k < words; k++) {
    const bits = Math.max(0, Math.min(32, prefix - 32 * k));
    mask[k] = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
  }
  return mask;
}

/** An example of each form, for error lines. */
const CIDR_EXAMPLES = "e.g. 203.0.113.0/24, 198.51.100.7, 2001:db8::/32, ::1";

/**
 * Parses a CIDR range or a single address (a /32 or /128). Host bits are cleared
 * (`192.0.2.7/24` is `192.0.2.0/24`); an IPv4-mapped IPv6 range of /96 or longer becomes the IPv4
 * range it maps (`::ffff:10.0.0.0/104` is `10.0.0.0/8`).
 * @throws {Error} with one line saying what is wrong (not an address, a prefix too long for its family).
 */
export function parseCidr(text: string): Cidr {
  const slash = text.indexOf("/");
  const addressText = slash < 0 ? text : text.slice(0, slash);
  const words = new Uint32Array(4);
  let family = addressText.includes("%") ? 0 : parseIpInto(addressText, words);
  if (family === 0) throw new Error(`'${text}' is not an IP address or CIDR range (${CIDR_EXAMPLES})`);
  const mapped = family === 4 && addressText.includes(":");
  const bits = family === 4 && !mapped ? 32 : 128;
  let prefix = bits;
  if (slash >= 0) {
    const prefixText = text.slice(slash + 1);
    if (!/^\d{1,3}$/.test(prefixText) || (prefixText.length > 1 && prefixText.startsWith("0")))
      throw new Error(`'${text}' has no prefix length after '/' (${CIDR_EXAMPLES})`);
    prefix = Number(prefixText);
    if (prefix > bits)
      throw new Error(
        `'${text}': /${prefix} is longer than an ${bits === 32 ? "IPv4" : "IPv6"} address (at most /${bits})`,
      );
  }
  if (mapped) {
    if (prefix >= 96) prefix -= 96;
    else {
      // A range wider than the mapped block stays IPv6 (it also covers IPv4 visitors: see access-list.ts).
      family = 6;
      words[3] = words[0] as number;
      words[0] = 0;
      words[1] = 0;
      words[2] = 0xffff;
    }
  }
  const mask = masksFor(family, prefix);
  for (let k = 0; k < 4; k++) words[k] = ((words[k] as number) & (mask[k] as number)) >>> 0;
  const address = formatIp({ family, words });
  return { family, prefix, network: words, mask, text: `${address}/${prefix}` };
}

/** Whether a parsed address (`family`, `words` as {@link parseIpInto} wrote them) lies in `range`. */
export function cidrContains(range: Cidr, family: IpFamily, words: Uint32Array): boolean {
  if (range.family !== family) return false;
  const { network, mask } = range;
  if (((words[0] as number) & (mask[0] as number)) >>> 0 !== network[0]) return false;
  if (family === 4) return true;
  return (
    ((words[1] as number) & (mask[1] as number)) >>> 0 === network[1] &&
    ((words[2] as number) & (mask[2] as number)) >>> 0 === network[2] &&
    ((words[3] as number) & (mask[3] as number)) >>> 0 === network[3]
  );
}

/** Splits `ip:port` or `[ipv6]:port` (as OPEN's `remote` and `local` carry them); undefined when malformed. */
export function splitAddress(text: string): { ip: string; port: number } | undefined {
  const colon = text.lastIndexOf(":");
  if (colon < 0) return undefined;
  const portText = text.slice(colon + 1);
  const port = /^\d{1,5}$/.test(portText) ? Number(portText) : -1;
  if (port < 0 || port > 65535) return undefined;
  let ip = text.slice(0, colon);
  if (ip.startsWith("[") && ip.endsWith("]")) ip = ip.slice(1, -1);
  return { ip, port };
}

/**
 * `ip:port` as OPEN's `remote` and `local` carry a socket's address: IPv6 in brackets, an IPv4-mapped
 * address as IPv4 (`::ffff:192.0.2.1` → `192.0.2.1:80`). The inverse of {@link splitAddress}.
 */
export function joinAddress(ip: string, port: number): string {
  const unmapped = ip.replace(/^::ffff:(?=\d{1,3}(\.\d{1,3}){3}$)/i, "");
  return unmapped.includes(":") ? `[${unmapped}]:${port}` : `${unmapped}:${port}`;
}
