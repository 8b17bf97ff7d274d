/**
 * Test support: the `hello` a server sends, for unit tests that stand in for a server (connect.ts,
 * client-servers).
 * @module
 */

import { DEFAULTS, type Hello, PROTOCOL_VERSION } from "../../shared/wire/protocol.ts";

/** A server's hello with this build's defaults, small limits and session `s1`. */
export function testHello(resumed = false): Hello {
  return {
    type: "hello",
    protocol: PROTOCOL_VERSION,
    window: DEFAULTS.window,
    initialWindow: DEFAULTS.initialWindow,
    maxFramePayload: DEFAULTS.maxFramePayload,
    maxStreamsPerTunnel: 10,
    maxTunnelsPerClient: 5,
    session: "s1",
    secret: "secret",
    resumed,
  };
}
