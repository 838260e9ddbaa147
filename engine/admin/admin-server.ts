/**
 * The admin listener (config `admin.listen`): Prometheus metrics, liveness and readiness for monitoring,
 * and the running server's status as JSON for `postern status`. Plain HTTP on an address the
 * administrator chooses (loopback by default); it answers GETs only and never changes anything.
 */
import { rmSync } from 'node:fs';
import { setTimeout as delay } from 'node:timers/promises';
import { metrics, registry } from '../metrics/metrics.ts';
import { shareConnectionRoom } from '../connection-limits/connection-room.ts';
import { countedAddress } from '../connection-limits/counted-address.ts';
import { listenOwnerOnly, shortSocketPath } from './unix-socket-path.ts';
import { hostAllowed, hostName } from './host-header.ts';
import type { Logger } from '../logging/logger.ts';
import { privilegedPortHint } from '../config/privileged-ports.ts';

// Not `import … from 'node:http'`: an ESM import of node:http reads every export, and one of them loads Node's fetch
// (undici): ~20 ms of CPU at every process start (test/app/startup-modules.test.ts). Nor taken at import: a worker
// and the queue process of `postern serve` import this file and serve no HTTP (their supervisor does), and node:http's
// modules cost each ~25 ms of CPU at start; the first admin server takes it.
const http = (): typeof import('node:http') => process.getBuiltinModule('node:http');

export interface ReadinessCheck { ok: boolean; detail?: string }

export interface AdminTarget {
  /** The metrics text; default: this process's registry (a supervisor aggregates its children's). */
  metrics?(): Promise<{ contentType: string; text: string }>;
  /** Each check that must pass for /readyz: listeners bound, spool writable, last reload state. */
  /**
   * `listener`: only what that SMTP listener needs (`/readyz?listener=NAME`, for a load balancer's backend of
   * that port); null when the server has no such listener.
   */
  readiness(listener?: string): Promise<Record<string, ReadinessCheck> | null>;
  /** What `postern status` shows. */
  status(): Promise<object>;
}

export interface AdminLimits {
  /** Connections one client address may hold open (admin.maxConnectionsPerIp); a unix socket has no address to count. */
  maxConnectionsPerIp: number;
  /** An IPv6 client is counted by its network of this many bits (admin.ipv6PrefixLength; 128: by address). */
  ipv6PrefixLength: number;
  /** An address went over it with nothing of its own to close for the new connection (once until it is back under). */
  refused?(client: string, limit: number): void;
  /** An address went over it and its connection that made no progress for longest was closed for the new one (once per episode). */
  madeRoom?(client: string, limit: number): void;
  /**
   * Names a request's Host header may give, besides IP addresses and `localhost` (lowercase). A browser
   * sends the name of the page's own origin: a name rebound to this address by its owner's DNS is not one.
   */
  hosts?: () => readonly string[];
  /** RESPONSE_DEADLINE_MS unless given (a test of the deadline itself gives a short one). */
  responseDeadlineMs?: number;
}

/**
 * The configured limits of `admin`, an address over its cap logged on `logger`; `hostname`: the server's, as the
 * configuration in force names it (a reload changes it; admin.hosts is taken at start): taken once, the new name
 * was refused 421 after a reload and the old one still served.
 */
export function adminLimits(admin: { maxConnectionsPerIp: number; ipv6PrefixLength: number; hosts: readonly string[] }, logger: Logger, hostname: () => string): AdminLimits {
  const configured = admin.hosts.map(hostName);
  return {
    maxConnectionsPerIp: admin.maxConnectionsPerIp,
    ipv6PrefixLength: admin.ipv6PrefixLength,
    hosts: () => [hostName(hostname()), ...configured],
    refused: (client, limit) => logger.warn({ client, limit }, 'admin listener: too many connections from this address, new ones closed at once'),
    madeRoom: (client, limit) => logger.warn({ client, limit }, 'admin listener: too many connections from this address, the one idle longest closed for each new one'),
  };
}

/** Each answer's deadline to leave (connection-room.ts, which applies it). */
export { RESPONSE_DEADLINE_MS } from '../connection-limits/connection-room.ts';

/**
 * A gathering of /metrics, /status or /readyz starts no sooner than this long after the previous one ended (ms);
 * requests that come meanwhile wait for it and share it. A client asking again as soon as each answer came
 * made hundreds a second, each a round trip to every worker (~0.8 ms of its CPU serializing its registry).
 */
export const GATHER_GAP_MS = 100;

/**
 * Sent with every answer, errors and refusals included. The bodies are text and JSON a browser on the
 * management network may be pointed at: never sniffed into HTML or script, never framed, loading nothing,
 * and never kept by a cache or proxy (/status and /metrics name accounts, devices and reload errors).
 */
export const ANSWER_HEADERS: Readonly<Record<string, string>> = {
  'cache-control': 'no-store',
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'content-security-policy': "default-src 'none'; frame-ancestors 'none'",
  'referrer-policy': 'no-referrer',
};

/** Connections the admin listener holds open at once. */
export const MAX_CONNECTIONS = 64;

export interface AdminServer {
  readonly address: { address: string; port: number };
  close(): Promise<void>;
}

/**
 * `listen` is `address:port`, or `unix:PATH` for a socket file (the status socket in the data directory,
 * which `postern status` asks; a file left by a dead server is replaced: the data directory's lock says
 * nobody else serves it). The socket is mode 0600: only the server's user and root may ask it.
 */
export async function startAdminServer(listen: string, given: AdminTarget, limits?: AdminLimits): Promise<AdminServer> {
  // /metrics and /status gather every process's registry (under `postern serve` a round trip to each worker;
  // /status counts the spool too): one at a time, shared by the requests that come meanwhile, so a crowd of
  // concurrent scrapes costs the workers what one scraper does (60 looping: 0.84 ms of a worker's CPU each, now 0.03).
  const metricsText = given.metrics ?? (async () => ({ contentType: registry.contentType, text: await registry.metrics() }));
  const target: AdminTarget = {
    // With /readyz's checks as a gauge: an alert sees what the load balancer sees (a spool below its floor, read-only,
    // no worker taking connections), which no other series shows before clients are refused.
    metrics: oneAtATime(async () => {
      // A check that throws must not cost the scrape: the series are then absent (an alert on absent() sees it).
      const checks = await given.readiness().catch(() => null) ?? {};
      metrics.readinessCheck.reset();
      for (const [name, c] of Object.entries(checks)) metrics.readinessCheck.set({ check: name }, c.ok ? 1 : 0);
      return metricsText();
    }),
    // /readyz too (per listener asked): each check is a spool write probe, statfs, readdir and a file read, on the
    // thread pool the spool's writes wait in; a client pipelining /readyz put thousands a second in front of them.
    readiness: oneAtATimePer((listener?: string) => given.readiness(listener)),
    status: oneAtATime(() => given.status()),
  };
  // Timeouts are checked every second (Node's default: every 30 s).
  const server = http().createServer({ connectionsCheckingInterval: 1000 }, (req, res) => {
    for (const [name, value] of Object.entries(ANSWER_HEADERS)) res.setHeader(name, value);
    const hosts = limits?.hosts?.();
    if (hosts && !hostAllowed(req.headers.host, (name) => hosts.includes(name))) {
      res.writeHead(421, { 'content-type': 'text/plain' });
      res.end('unknown host name: add it to admin.hosts, or use the address\n');
      return;
    }
    const [path, query = ''] = (req.url ?? '/').split('?');
    void answer(req.method ?? 'GET', path!, new URLSearchParams(query), target).then(({ status, type, body, headers }) => {
      res.writeHead(status, { ...headers, 'content-type': type });
      res.end(body);
    }, (err: Error) => {
      res.writeHead(500, { 'content-type': 'text/plain' });
      res.end(`error: ${err.message}\n`);
    });
  });
  server.keepAliveTimeout = 5000;
  // A request (GET only, no body) must arrive whole within 10 s, and at most 64 connections are open at once:
  // a crowd of slow connections cannot take the file descriptors the SMTP listeners of this process need;
  // nor can one address take all 64 (admin.maxConnectionsPerIp). Over either, a connection that asks nothing
  // makes room for a new one (engine/connection-limits/connection-room.ts): idle ones cannot keep the scraper out.
  server.headersTimeout = 10_000;
  server.requestTimeout = 10_000;
  shareConnectionRoom(server, {
    maxConnections: MAX_CONNECTIONS,
    responseDeadlineMs: limits?.responseDeadlineMs,
    perAddress: limits && {
      limit: () => limits.maxConnectionsPerIp,
      countedAs: (address) => countedAddress(address, limits.ipv6PrefixLength),
      refused: (client, limit) => limits.refused?.(client, limit),
      madeRoom: (client, limit) => limits.madeRoom?.(client, limit),
    },
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) => reject(new Error(`admin listener: cannot listen on ${listen}: ${err.message}${privilegedPortHint(listen, err)}`)));
    if (listen.startsWith('unix:')) {
      rmSync(listen.slice(5), { force: true });
      const socket = shortSocketPath(listen.slice(5));
      server.once('listening', socket.release).once('error', socket.release);
      listenOwnerOnly(server, socket.path, () => resolve()); // status for the server's user (and root) only
      return;
    }
    const sep = listen.lastIndexOf(':');
    server.listen(Number(listen.slice(sep + 1)), listen.slice(0, sep).replace(/^\[|\]$/g, ''), () => resolve());
  });
  const address = server.address();
  const bound = typeof address === 'string' || address === null ? { address: listen, port: 0 } : address;
  return {
    address: { address: bound.address, port: bound.port },
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    }),
  };
}

async function answer(method: string, path: string, query: URLSearchParams, target: AdminTarget): Promise<{ status: number; type: string; body: string; headers?: Record<string, string> }> {
  if (method !== 'GET' && method !== 'HEAD') return { status: 405, type: 'text/plain', body: 'GET only\n', headers: { allow: 'GET, HEAD' } };
  switch (path) {
    case '/metrics': {
      const m = await target.metrics!();
      return { status: 200, type: m.contentType, body: m.text };
    }
    case '/healthz':
      return { status: 200, type: 'text/plain', body: 'ok\n' };
    case '/readyz': {
      const listener = query.get('listener') ?? undefined;
      const checks = await target.readiness(listener);
      if (!checks) return { status: 404, type: 'text/plain', body: `no listener ${JSON.stringify(listener)}\n` };
      const ready = Object.values(checks).every((c) => c.ok);
      return { status: ready ? 200 : 503, type: 'application/json', body: JSON.stringify({ ready, checks }) + '\n' };
    }
    case '/status':
      return { status: 200, type: 'application/json', body: JSON.stringify(await target.status(), null, 2) + '\n' };
    default:
      return { status: 404, type: 'text/plain', body: 'not found: try /metrics, /healthz, /readyz, /status\n' };
  }
}

/** Keys oneAtATimePer keeps at most: real listener names are a few; a crowd of unknown ones in flight fills no more. */
const MAX_SHARED_KEYS = 64;

/**
 * As oneAtATime, for each argument apart. A key is a listener name a client chose: one whose answer is null
 * (no such listener: an unknown name, or one a reload removed) is dropped as soon as it is answered, so only
 * real listeners' names stay. The map was
 * emptied once it held 64 names: 64 requests for unknown names dropped the check a real listener's requests
 * were sharing, and the next ones ran their own beside it.
 */
function oneAtATimePer<K, T>(work: (key: K) => Promise<T | null>): (key: K) => Promise<T | null> {
  const each = new Map<K, () => Promise<T | null>>();
  return (key) => {
    let one = each.get(key);
    if (!one) {
      // Full only while that many unknown names are in flight (each leaves at its answer): this one unshared.
      if (each.size >= MAX_SHARED_KEYS) return work(key);
      one = oneAtATime(() => work(key));
      each.set(key, one);
    }
    const shared = one;
    return shared().then((answer) => {
      if (answer === null && each.get(key) === shared) each.delete(key);
      return answer;
    });
  };
}

/**
 * `work`, run once for all the calls made while it runs or waits to run: they share its result. It starts
 * GATHER_GAP_MS after the previous run ended at the soonest, so however fast a client asks again, it runs at
 * most about 1000 / GATHER_GAP_MS times a second; every call is answered by a run that started after it came,
 * or that was running when it came.
 */
function oneAtATime<T>(work: () => Promise<T>): () => Promise<T> {
  let running: Promise<T> | null = null;
  let endedAt = -Infinity;
  const run = async (): Promise<T> => {
    const wait = endedAt + GATHER_GAP_MS - performance.now();
    if (wait > 0) await delay(wait);
    try {
      return await work();
    } finally {
      endedAt = performance.now();
    }
  };
  return () => (running ??= run().finally(() => { running = null; }));
}
