#!/usr/bin/env node
// The `sockets-client` command of the npm package (see run-on-bun.mjs).
import { runOnBun } from "./run-on-bun.mjs";

await runOnBun("client");
