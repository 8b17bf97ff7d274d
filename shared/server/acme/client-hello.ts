/**
 * Reads a TLS ClientHello without terminating TLS: the server name (SNI) and the ALPN protocols a
 * visitor asks for, from the first handshake message, reassembled across records and packets up to
 * {@link MAX_CLIENT_HELLO} bytes. The HTTPS front routes on it (passthrough, terminate, TLS-ALPN-01)
 * and then hands on every byte it read, untouched.
 * @module
 */

/** Most bytes (records and their headers) a ClientHello may take before the visitor is refused. */
export const MAX_CLIENT_HELLO = 16 * 1024 + 5 * 4;

/** What a ClientHello asks for. */
export interface ClientHello {
  /** The host name of the SNI extension (lower case), or undefined without one. */
  serverName?: string;
  /** ALPN protocol names offered, in the client's order (empty without the extension). */
  alpn: string[];
}

/** The result of reading what arrived so far. */
export type HelloRead =
  | { status: "more" }
  | { status: "done"; hello: ClientHello }
  | { status: "bad"; reason: string };

const MORE: HelloRead = { status: "more" };
const bad = (reason: string): HelloRead => ({ status: "bad", reason });

/** TLS alert descriptions the front sends (RFC 8446 §6). */
export const Alert = {
  HandshakeFailure: 40,
  InternalError: 80,
  UnrecognizedName: 112,
} as const;

/** A fatal TLS alert record (sent in place of a ServerHello: the visitor's client names the reason). */
export function alertRecord(description: number): Uint8Array {
  return Uint8Array.of(0x15, 0x03, 0x03, 0x00, 0x02, 0x02, description);
}

/**
 * Reads the ClientHello from the bytes a connection sent so far (everything since it opened):
 * "more" while it is incomplete, "bad" when the bytes are not a TLS ClientHello (or one larger than
 * {@link MAX_CLIENT_HELLO}).
 */
export function readClientHello(bytes: Uint8Array): HelloRead {
  // Reassemble the handshake layer from the records that arrived so far.
  let offset = 0;
  const fragments: Uint8Array[] = [];
  let handshakeBytes = 0;
  let needed = -1; // the whole ClientHello message, with its 4-byte header, once known
  while (offset + 5 <= bytes.length) {
    if (bytes[offset] !== 0x16) return bad("not a TLS handshake");
    if (bytes[offset + 1] !== 0x03) return bad("not a TLS record version");
    const length = ((bytes[offset + 3] as number) << 8) | (bytes[offset + 4] as number);
    if (length === 0 || length > 16 * 1024 + 256) return bad("bad TLS record length");
    if (offset + 5 + length > bytes.length) break;
    fragments.push(bytes.subarray(offset + 5, offset + 5 + length));
    handshakeBytes += length;
    offset += 5 + length;
    if (needed < 0 && handshakeBytes >= 4) {
      const head = joined(fragments, 4);
      if (head[0] !== 0x01) return bad("first handshake message is not a ClientHello");
      needed = 4 + (((head[1] as number) << 16) | ((head[2] as number) << 8) | (head[3] as number));
      if (needed > MAX_CLIENT_HELLO) return bad("ClientHello too large");
    }
    if (needed >= 0 && handshakeBytes >= needed) return parseHello(joined(fragments, needed).subarray(4));
  }
  if (bytes.length > 0 && bytes[0] !== 0x16) return bad("not a TLS handshake");
  if (bytes.length >= MAX_CLIENT_HELLO) return bad("ClientHello too large");
  return MORE;
}

/** The first `n` bytes of the fragments, as one array (a view when one fragment holds them). */
function joined(fragments: Uint8Array[], n: number): Uint8Array {
  const first = fragments[0] as Uint8Array;
  if (first.length >= n) return first.subarray(0, n);
  const out = new Uint8Array(n);
  let at = 0;
  for (const fragment of fragments) {
    const take = Math.min(fragment.length, n - at);
    out.set(fragment.subarray(0, take), at);
    at += take;
    if (at === n) break;
  }
  return out;
}

/** Parses a ClientHello body (after its handshake header). */
function parseHello(body: Uint8Array): HelloRead {
  const view = new Reader(body);
  // legacy_version, random, session id, cipher suites, compression methods
  if (!view.skip(2 + 32) || !view.skipVector(1) || !view.skipVector(2) || !view.skipVector(1))
    return bad("truncated ClientHello");
  const hello: ClientHello = { alpn: [] };
  if (view.remaining === 0) return { status: "done", hello };
  const extensionsLength = view.u16();
  if (extensionsLength === undefined || extensionsLength > view.remaining) return bad("truncated extensions");
  const end = view.at + extensionsLength;
  while (view.at + 4 <= end) {
    const type = view.u16() as number;
    const length = view.u16() as number;
    if (view.at + length > end) return bad("truncated extension");
    const data = body.subarray(view.at, view.at + length);
    view.skip(length);
    if (type === 0x0000) {
      const name = serverNameOf(data);
      if (name === null) return bad("malformed server_name extension");
      hello.serverName = name;
    } else if (type === 0x0010) {
      const protocols = alpnOf(data);
      if (protocols === null) return bad("malformed ALPN extension");
      hello.alpn = protocols;
    }
  }
  return { status: "done", hello };
}

/** The host_name of a server_name extension; undefined without one; null when malformed. */
function serverNameOf(data: Uint8Array): string | undefined | null {
  const view = new Reader(data);
  const listLength = view.u16();
  if (listLength === undefined || listLength > view.remaining) return null;
  while (view.remaining >= 3) {
    const type = view.u8() as number;
    const length = view.u16() as number;
    if (length > view.remaining) return null;
    if (type === 0) {
      const name = new TextDecoder().decode(data.subarray(view.at, view.at + length)).toLowerCase();
      // A host name is printable ASCII; anything else is not a name we route.
      return /^[a-z0-9.*_-]{1,253}$/.test(name) ? name.replace(/\.$/, "") : null;
    }
    view.skip(length);
  }
  return undefined;
}

/** The protocol names of an ALPN extension; null when malformed. */
function alpnOf(data: Uint8Array): string[] | null {
  const view = new Reader(data);
  const listLength = view.u16();
  if (listLength === undefined || listLength > view.remaining) return null;
  const names: string[] = [];
  while (view.remaining > 0) {
    const length = view.u8() as number;
    if (length === 0 || length > view.remaining) return null;
    names.push(new TextDecoder().decode(data.subarray(view.at, view.at + length)));
    view.skip(length);
  }
  return names;
}

/** Bounds-checked reads over a byte array. */
class Reader {
  at = 0;
  constructor(private readonly bytes: Uint8Array) {}
  get remaining(): number {
    return this.bytes.length - this.at;
  }
  u8(): number | undefined {
    if (this.remaining < 1) return undefined;
    return this.bytes[this.at++];
  }
  u16(): number | undefined {
    if (this.remaining < 2) return undefined;
    const value = ((this.bytes[this.at] as number) << 8) | (this.bytes[this.at + 1] as number);
    this.at += 2;
    return value;
  }
  skip(n: number): boolean {
    if (this.remaining < n) return false;
    this.at += n;
    return true;
  }
  /** Skips a vector whose length prefix takes `prefix` bytes. */
  skipVector(prefix: 1 | 2): boolean {
    const length = prefix === 1 ? this.u8() : this.u16();
    return length !== undefined && this.skip(length);
  }
}
