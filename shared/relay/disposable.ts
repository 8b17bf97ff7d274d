/**
 * Buffers the relay frees itself, as soon as it is done with them, instead of leaving them to the
 * garbage collector: a Bun socket read once all of it was acknowledged, a WebSocket message holding
 * one DATA frame once its payload was written into the socket.
 * @module
 */

/**
 * Buffers that nothing but the relay refers to: a Bun socket read, or a WebSocket message holding one
 * DATA frame. Freed ({@link dispose}) as soon as their last byte was relayed and acknowledged, instead
 * of at the next garbage collection: the allocator then hands the same warm pages to the next read,
 * where garbage piling up between collections made it purge and re-fault them (page faults were ~20%
 * of a relaying process's CPU).
 */
const disposable = new WeakSet<ArrayBufferLike>();

/**
 * The smallest buffer ever marked: a chunk ending before it cannot be the end of a marked buffer, so
 * {@link dispose} returns without reading `chunk.buffer` (which makes the engine give a socket read's
 * view an ArrayBuffer object of its own: ~0.4 µs per small chunk in a profile of the server under wrk).
 */
let smallestMarked = Number.POSITIVE_INFINITY;

/**
 * Smaller buffers are left to the collector: the allocator keeps their pages in use among other
 * small objects, so they cost no faults, and bookkeeping per message would cost latency.
 */
export const DISPOSE_MIN_BYTES = 16 * 1024;

/**
 * Marks `bytes` as freeable by the relay once relayed, if it is at least `minBytes` long. Only for a
 * view of a whole buffer that no one else keeps: the relay detaches the buffer, which empties every
 * view of it.
 */
export function markDisposable(bytes: Uint8Array, minBytes = DISPOSE_MIN_BYTES): void {
  if (
    bytes.byteLength >= minBytes &&
    bytes.byteOffset === 0 &&
    bytes.byteLength === bytes.buffer.byteLength
  ) {
    disposable.add(bytes.buffer);
    if (bytes.byteLength < smallestMarked) smallestMarked = bytes.byteLength;
  }
}

/** Frees the buffer under `chunk` when it was marked and `chunk` is its last part still in use. */
export function dispose(chunk: Uint8Array): void {
  if (chunk.byteOffset + chunk.byteLength < smallestMarked) return;
  const buffer = chunk.buffer;
  if (chunk.byteOffset + chunk.byteLength === buffer.byteLength && disposable.delete(buffer))
    (buffer as ArrayBuffer).transfer(0);
}

/** Unmarks the buffer under `bytes`: something else (a tap) may keep a view of it. */
export function forgetDisposable(bytes: Uint8Array): void {
  if (smallestMarked !== Number.POSITIVE_INFINITY) disposable.delete(bytes.buffer);
}
