/**
 * Reloading the client's config file on SIGHUP or with `--watch`: the running client's tunnels are
 * brought to what its `--config` file says now. Tunnels are compared by name ({@link diffTunnels}): added
 * ones are exposed, removed ones closed, changed ones (any field) closed and exposed again, and the
 * others are not touched, so their URL and their visitor connections carry on.
 *
 * The whole new file is read and validated before anything is touched: a file that fails is one log
 * line (FILE:LINE:COL) and the running set stays as it was. A tunnel the server refuses is logged and
 * left out; the others are applied (the next reload tries it again).
 * @module
 */

import { lookup } from "node:dns/promises";
import { readConfig, watchConfigFile } from "../config.ts";
import { describeError, type Logger } from "../log.ts";
import { clientSetup, restartOnlyChanges } from "./config.ts";
import type { ClientValues, NamedService } from "./options.ts";
import type { TunnelClient, TunnelInfo } from "./tunnel-client.ts";

/** What a reload needs of a client: its tunnels, and adding and closing one by name. */
export type TunnelSet = Pick<TunnelClient, "services" | "tunnels" | "add" | "unexpose">;

/** How the tunnels of a new configuration differ from the running ones, by name. */
export interface TunnelDiff {
  /** In the new set only: to expose. */
  added: NamedService[];
  /** In the running set only: to close. */
  removed: NamedService[];
  /** In both with some field changed (the new version): to close and expose again. */
  changed: NamedService[];
  /** In both, identical: left alone. */
  unchanged: NamedService[];
}

/** A service's fields in a fixed order, defaults spelled out: two services are the same when these are. */
function fingerprint(service: NamedService): string {
  const http = service.kind === "http";
  return JSON.stringify([
    service.kind ?? "tcp",
    service.host,
    service.port,
    service.publicPort ?? null,
    service.subdomain ?? null,
    http ? service.preserveHost === true : null,
    service.basicAuth ?? null,
    http ? (service.logRequests ?? null) : null,
    service.pool === true,
    service.allow ?? [],
    service.deny ?? [],
    service.proxyProtocol ?? null,
  ]);
}

/** True when two services publish the same thing the same way (name aside). */
export function sameService(a: NamedService, b: NamedService): boolean {
  return fingerprint(a) === fingerprint(b);
}

/** Compares the running services with the new ones by name (each list in its own order). */
export function diffTunnels(running: readonly NamedService[], next: readonly NamedService[]): TunnelDiff {
  const before = new Map(running.map((service) => [service.name, service]));
  const after = new Set(next.map((service) => service.name));
  const diff: TunnelDiff = { added: [], removed: [], changed: [], unchanged: [] };
  for (const service of next) {
    const old = before.get(service.name);
    if (old === undefined) diff.added.push(service);
    else if (sameService(old, service)) diff.unchanged.push(service);
    else diff.changed.push(service);
  }
  diff.removed = running.filter((service) => !after.has(service.name));
  return diff;
}

/** What applying a diff did. */
export interface ApplyResult extends TunnelDiff {
  /** Tunnels of the new set that are not up (refused by the server, unresolvable host, no connection), with why. */
  failed: { name: string; reason: string }[];
}

/**
 * Brings the client's tunnels to `next`: closes the removed and changed ones first (freeing their ports
 * and names), then exposes the changed (asking for their old port or name when they name none) and the
 * added ones. The unchanged ones are not touched. A tunnel that fails is logged and left out.
 */
export async function applyTunnels(
  client: TunnelSet,
  next: NamedService[],
  log: Logger,
): Promise<ApplyResult> {
  const diff = diffTunnels(client.services, next);
  const failed: ApplyResult["failed"] = [];
  const fail = (name: string, error: unknown) => {
    const reason = describeError(error);
    failed.push({ name, reason });
    log.error(`reload: tunnel '${name}': ${reason}`);
  };
  const before = new Map(client.tunnels.map((tunnel) => [tunnel.local.name, tunnel]));
  await Promise.all(
    [...diff.removed, ...diff.changed].map((service) =>
      client.unexpose(service.name).catch((error) => fail(service.name, error)),
    ),
  );
  const exposing = [
    ...diff.changed.map((service) => [service, before.get(service.name)] as const),
    ...diff.added.map((service) => [service, undefined] as const),
  ];
  await Promise.all(
    exposing.map(async ([service, previous]: readonly [NamedService, TunnelInfo | undefined]) => {
      try {
        await lookup(service.host);
      } catch {
        return fail(service.name, new Error(`cannot resolve host '${service.host}'`));
      }
      // A changed tunnel whose close failed is still up: exposing it again would take a second one.
      if (client.services.some((held) => held.name === service.name)) return;
      await client
        .add(service, previous?.local.kind === service.kind ? previous : undefined)
        .catch((error) => fail(service.name, error));
    }),
  );
  return { ...diff, failed };
}

/** What a {@link ConfigReloader} needs. */
export interface ReloaderSettings {
  /** The `--config` file. */
  file: string;
  /** The command line's own values (they keep winning over the file's). */
  commandLine: ClientValues;
  /** The client whose tunnels follow the file. */
  client: TunnelSet;
  log: Logger;
}

/**
 * Reloads the config file on request (SIGHUP, a change seen by {@link ConfigReloader.watch}): one
 * reload at a time; requests that arrive meanwhile fold into one more.
 */
export class ConfigReloader {
  private running: Promise<void> | null = null;
  private again = false;
  private values: ClientValues;
  private watcher: { stop(): void } | null = null;

  /** `values`: the top-level options the client runs with (a reload says which ones need a restart). */
  constructor(
    private readonly settings: ReloaderSettings,
    values: ClientValues,
  ) {
    this.values = values;
  }

  /** Reloads now, or once more after the reload under way; resolves when the file was applied. */
  reload(why: string): Promise<void> {
    if (this.running !== null) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      let cause = why;
      // Bounded: each turn consumes every request that arrived before it started.
      do {
        this.again = false;
        await this.once(cause);
        cause = "changed again";
      } while (this.again);
    })().finally(() => {
      this.running = null;
    });
    return this.running;
  }

  /**
   * Reloads whenever the file changes (fs.watch on its folder, so that editors that replace the file
   * are seen too), 200 ms after the last change. Stopped by {@link ConfigReloader.stop}.
   */
  watch(): void {
    const { file, log } = this.settings;
    this.watcher ??= watchConfigFile(file, () => void this.reload(`${file} changed`), log);
    log.info(`watching ${file}: each change is applied (a bad one is reported and skipped)`);
  }

  /** Stops watching. */
  stop(): void {
    this.watcher?.stop();
    this.watcher = null;
  }

  /** One reload: read and validate all of it, then apply the tunnels' diff. */
  private async once(why: string): Promise<void> {
    const { file, commandLine, client, log } = this.settings;
    let setup: ReturnType<typeof clientSetup>;
    try {
      setup = clientSetup(commandLine, readConfig(file));
    } catch (error) {
      log.error(`reload (${why}): ${describeError(error)}; nothing changed, the running configuration stays`);
      return;
    }
    const restart = restartOnlyChanges(this.values, setup.values);
    if (restart.length > 0)
      log.warn(`reload: ${restart.join(", ")} changed in ${file}; that takes a restart of the client`);
    this.values = setup.values;
    const result = await applyTunnels(client, setup.services, log);
    const { added, removed, changed, unchanged, failed } = result;
    log.info(
      `reload (${why}): ${added.length} added, ${removed.length} removed, ${changed.length} changed, ${unchanged.length} unchanged${failed.length > 0 ? `, ${failed.length} failed` : ""}`,
    );
  }
}
