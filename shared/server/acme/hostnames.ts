/**
 * Custom domains: full host names (`api.example.com`) a client may hold for an HTTP or TLS tunnel,
 * allowed by patterns (per user in the config's `hostnames`, or `--custom-domains` without users).
 * A pattern is a host name whose first label may be `*`, standing for one label
 * (`*.example.com` allows `api.example.com`, not `example.com` nor `a.b.example.com`).
 * @module
 */

import { HOSTNAME } from "../../wire/protocol.ts";

/** Whether `host` is a full host name a tunnel could hold. */
export function validHostname(host: string): boolean {
  return HOSTNAME.test(host);
}

/** Whether `pattern` is a usable host pattern (a host name, or `*.` and a host name). */
export function validHostPattern(pattern: string): boolean {
  return validHostname(pattern.startsWith("*.") ? pattern.slice(2) : pattern);
}

/** Whether `host` matches one of `patterns`. */
export function hostnameAllowed(host: string, patterns: readonly string[]): boolean {
  return patterns.some((pattern) => {
    if (!pattern.startsWith("*.")) return pattern === host;
    const dot = host.indexOf(".");
    return dot > 0 && host.slice(dot + 1) === pattern.slice(2);
  });
}

/** Parses a comma-separated list of host patterns (`--custom-domains`); throws naming the bad one. */
export function parseHostPatterns(text: string, flag: string): string[] {
  const patterns = text
    .split(",")
    .map((p) => p.trim().toLowerCase())
    .filter((p) => p !== "");
  for (const pattern of patterns)
    if (!validHostPattern(pattern))
      throw new Error(`${flag}: '${pattern}' is not a host pattern (e.g. api.example.com or *.example.com)`);
  return patterns;
}

/** Told when a tunnel starts or stops holding a host name (see acme/manager.ts). */
export interface NameHooks {
  claimed(host: string, owner: string): void;
  released(host: string, owner: string): void;
}

/** The host name behind a route key: `NAME.DOMAIN` for a tunnel name, the key itself for a custom domain. */
export function hostOfKey(key: string, domain: string): string {
  return key.includes(".") ? key : `${key}.${domain}`;
}

/** A refusal of an expose request, as session.ts sends it. */
export interface HostnameRefusal {
  code: string;
  message: string;
}

/**
 * The route key for an expose's `hostname`: undefined without one; the label for a name under
 * `domain` (as if `--subdomain` had been asked, and checked as that); the host itself where the
 * user's `hostnames` (or, without users, `--custom-domains`) allow it; else the refusal, named.
 */
export function customHost(
  hostname: string | undefined,
  domain: string,
  account: { name: string; limits: { hostnames?: string[] } } | undefined,
  serverPatterns: readonly string[] | undefined,
): string | HostnameRefusal | undefined {
  if (hostname === undefined) return undefined;
  const host = hostname.toLowerCase().replace(/\.$/, "");
  if (!validHostname(host))
    return {
      code: "bad_hostname",
      message: `host name '${hostname}' is not a DNS name (labels a-z, 0-9, inner '-')`,
    };
  const suffix = `.${domain.toLowerCase()}`;
  if (host.endsWith(suffix) && !host.slice(0, -suffix.length).includes("."))
    return {
      code: "bad_hostname",
      message: `host name '${host}' is under ${domain}: ask for it with --subdomain ${host.slice(0, -suffix.length)}`,
    };
  const patterns = account !== undefined ? account.limits.hostnames : serverPatterns;
  const who = account !== undefined ? `user ${account.name}` : "this server";
  if (patterns === undefined || patterns.length === 0)
    return {
      code: "not_allowed",
      message: `custom domain '${host}' is not allowed for ${who} (${account !== undefined ? "no hostnames in its [[users]] entry" : "no --custom-domains"})`,
    };
  if (!hostnameAllowed(host, patterns))
    return {
      code: "not_allowed",
      message: `custom domain '${host}' is not allowed for ${who} (allowed: ${patterns.join(", ")})`,
    };
  return host;
}
