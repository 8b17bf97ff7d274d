/**
 * A larger kernel receive buffer (SO_RCVBUF) for a public UDP socket. Bun.udpSocket has no option for
 * it (node:dgram's `recvBufferSize` is not reachable from it), so on Linux the option is set with
 * libc's setsockopt through bun:ffi on the socket's descriptor. The default buffer (208 KiB on Debian)
 * holds about 90 datagrams of 1,400 bytes, 2 ms at 500 Mbit/s: one slow turn of the event loop (a
 * collection, a large send) and the kernel drops the rest. The kernel caps the size at
 * `net.core.rmem_max` (an operator raises it with sysctl). Anything that fails (no libc found, another
 * platform) leaves the socket as it was: a larger buffer is an improvement, never a requirement.
 * @module
 */

/** What the server asks for its public UDP sockets: about 80 ms at 500 Mbit/s (if rmem_max allows). */
export const UDP_RECEIVE_BUFFER = 4 * 1024 * 1024;

/** Linux's SOL_SOCKET and SO_RCVBUF (the same on x86-64 and arm64). */
const SOL_SOCKET = 1;
const SO_RCVBUF = 8;

type SetSockOpt = (fd: number, level: number, name: number, value: Int32Array, length: number) => number;
type GetSockOpt = (fd: number, level: number, name: number, value: Int32Array, length: Int32Array) => number;

let libc: { set: SetSockOpt; get: GetSockOpt } | null | undefined;

/** libc's setsockopt and getsockopt, loaded once (null where there is none to load). */
async function loadLibc(): Promise<{ set: SetSockOpt; get: GetSockOpt } | null> {
  if (libc !== undefined) return libc;
  libc = null;
  if (process.platform !== "linux") return libc;
  const { dlopen, FFIType, ptr } = await import("bun:ffi");
  const arch = process.arch === "arm64" ? "aarch64" : "x86_64";
  for (const name of ["libc.so.6", `libc.musl-${arch}.so.1`]) {
    try {
      const lib = dlopen(name, {
        setsockopt: {
          args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr, FFIType.u32],
          returns: FFIType.i32,
        },
        getsockopt: {
          args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr, FFIType.ptr],
          returns: FFIType.i32,
        },
      });
      const { setsockopt, getsockopt } = lib.symbols;
      libc = {
        set: (fd, level, option, value, length) => setsockopt(fd, level, option, ptr(value), length),
        get: (fd, level, option, value, length) => getsockopt(fd, level, option, ptr(value), ptr(length)),
      };
      return libc;
    } catch {
      // Not this libc: try the next name.
    }
  }
  return libc;
}

/**
 * Asks the kernel for a receive buffer of `bytes` on `socket` (a Bun UDP socket).
 * @returns the buffer the kernel reports now (twice what it granted, as Linux reports it), or
 *   undefined when it could not be asked.
 */
export async function growReceiveBuffer(
  socket: object,
  bytes = UDP_RECEIVE_BUFFER,
): Promise<number | undefined> {
  const fd = (socket as { fd?: unknown }).fd;
  if (typeof fd !== "number" || fd < 0) return undefined;
  try {
    const calls = await loadLibc();
    if (calls === null) return undefined;
    if (calls.set(fd, SOL_SOCKET, SO_RCVBUF, new Int32Array([bytes]), 4) !== 0) return undefined;
    const value = new Int32Array(1);
    const length = new Int32Array([4]);
    return calls.get(fd, SOL_SOCKET, SO_RCVBUF, value, length) === 0 ? value[0] : undefined;
  } catch {
    return undefined;
  }
}
