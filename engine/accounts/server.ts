/**
 * The account page's HTTPS listener (config `accounts`): fastify over TLS with the SMTP listener's server
 * certificate, asking for client certificates as that listener does. Its TLS material follows the
 * listener's on every reload (a revoked certificate's next handshake here is checked against the new CRL).
 * Sessions, CSRF and the pages are in the neighbouring files; the routes in routes.ts.
 */
import { randomBytes, X509Certificate } from 'node:crypto';
import type { Server as HttpsServer } from 'node:https';
import fastify, { type FastifyInstance, type FastifyReply } from 'fastify';
import formbody from '@fastify/formbody';
import cookie from '@fastify/cookie';
import csrf from '@fastify/csrf-protection';
import type { Logger } from '../logging/logger.ts';
import type { PolicyGeneration } from '../policy/generation.ts';
import type { AuthFailureLimiter } from '../auth/failure-limiter.ts';
import type { Config, ListenerConfig } from '../config/schema.ts';
import { loadListenerTls, serverTlsOptions } from '../smtp/listener-options.ts';
import { TrustedIssuers } from '../certificates/index.ts';
import { ChangeBudget } from './change-budget.ts';
import { SessionBook } from './sessions.ts';
import { CompromisedSessions } from './compromised-sessions.ts';
import { RevokedHere, revokedHereFile } from './revoked-here.ts';
import { pkiPaths } from '../pki/layout.ts';
import { accountRoutes, SESSION_COOKIE, type AccountsState } from './routes.ts';
import { errorPage } from './pages.ts';
import { acceptMultipart } from './multipart.ts';
import { shareConnectionRoom } from '../connection-limits/connection-room.ts';
import { countedAddress } from '../connection-limits/counted-address.ts';
import { hostAllowed } from '../admin/host-header.ts';
import { clientText } from '../logging/logger.ts';
import { privilegedPortHint } from '../config/privileged-ports.ts';

/**
 * What one client may hold of the page (it faces the users' networks): a TLS handshake, and a whole request
 * (headers and body, at most 64 KB), must each complete within 10 s, or the connection is closed (without
 * it a body sent a byte every few seconds kept its connection forever); at most 256 connections at once, so
 * a crowd of them cannot take the process's file descriptors, which the SMTP listeners need too, and at most
 * `accounts.maxConnectionsPerIp` of them from one address, so one client cannot be that crowd.
 */
const PAGE_LIMITS = { handshakeTimeoutMs: 10_000, requestTimeoutMs: 10_000, checkEveryMs: 1000, maxConnections: 256 };

/** Every answer's: nothing cached, framed, sniffed, scripted or referred. */
const SECURITY_HEADERS = {
  'cache-control': 'no-store',
  'content-security-policy': "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
  'x-frame-options': 'DENY',
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'strict-transport-security': 'max-age=31536000',
};

export interface AccountsServerOptions {
  listen: string;
  /** The generation in force (its configuration names the listener, its tables hold the pins, its users the passwords). */
  generation(): PolicyGeneration;
  /** The server's auth-failure counts, shared with SMTP AUTH. */
  limiter: AuthFailureLimiter;
  logger: Logger;
}

export interface AccountsServer {
  readonly address: { address: string; port: number };
  /** A reload swapped the generation: take the listener's certificate, CA and CRLs again. */
  reloaded(): Promise<void>;
  close(): Promise<void>;
}

type AccountsConfig = NonNullable<Config['accounts']>;

async function tlsOptions(l: ListenerConfig, pkiDir: string | undefined): Promise<{ context: object; trust: TrustedIssuers; certificate: X509Certificate }> {
  // pki.dir's CRL in place of an older published copy of it, as on the SMTP listener (loadTrustMaterial).
  const tls = await loadListenerTls(l, pkiDir ? pkiPaths(pkiDir).crl : undefined);
  const asking = l.tls.clientCertificates !== 'none';
  return {
    context: {
      key: tls.key, cert: tls.cert, minVersion: l.tls.minVersion,
      // No tickets where certificates are asked for (a resumed session would skip the CRL check); no
      // client-initiated renegotiation (listener-options.ts).
      secureOptions: serverTlsOptions(asking),
      // An explicit CA list: never the public roots.
      ...(asking ? { ca: tls.ca ?? [], crl: tls.crl } : {}),
    },
    trust: new TrustedIssuers(tls.ca ?? [], tls.crl ?? []),
    // Its first certificate: the server's own, whose names the page answers to.
    certificate: new X509Certificate(tls.cert!),
  };
}

export async function startAccountsServer(opts: AccountsServerOptions): Promise<AccountsServer> {
  const log = opts.logger.child({ component: 'accounts' });
  // A reload that drops the section leaves the page running as it started until the restart it asks for.
  const started = opts.generation().config.accounts!;
  const settings = (): AccountsConfig => opts.generation().config.accounts ?? started;
  const first = opts.generation().listener(started.listener);
  const tls = await tlsOptions(first, opts.generation().config.pki.dir);
  let certificate = tls.certificate;
  const state: AccountsState = {
    generation: opts.generation, settings, limiter: opts.limiter, log, sessions: new SessionBook(), trust: tls.trust,
    compromised: new CompromisedSessions(opts.generation().revokedDevices),
    revokedHere: await RevokedHere.open(revokedHereFile(opts.generation().config.dataDir)),
    additions: new ChangeBudget(() => settings().deviceAdditionsPerHour),
    listener: () => opts.generation().listener(settings().listener),
  };
  const app: FastifyInstance = fastify({
    // Whether client certificates are asked for is a server option (not the context's): fixed at start.
    https: {
      ...tls.context, requestCert: first.tls.clientCertificates !== 'none', rejectUnauthorized: false,
      handshakeTimeout: PAGE_LIMITS.handshakeTimeoutMs, headersTimeout: PAGE_LIMITS.requestTimeoutMs,
      connectionsCheckingInterval: PAGE_LIMITS.checkEveryMs,
    } as never,
    logger: false,
    bodyLimit: 64 * 1024,
    requestTimeout: PAGE_LIMITS.requestTimeoutMs,
    trustProxy: false,
    // A URL the router cannot decode (`/%zz`) or a parameter too long: fastify's own JSON answer, sent
    // before any hook, would echo the URL without the headers below; the page's error page instead.
    frameworkErrors: (err, _req, reply) => {
      const status = (err as { statusCode?: number }).statusCode ?? 400;
      void (reply as FastifyReply).code(status).headers(SECURITY_HEADERS).type('text/html; charset=utf-8')
        .send(errorPage(status, 'Not an address of this page.'));
    },
  });
  // Over either cap a new connection takes the place of one that asks nothing (connection-room.ts): silent
  // connections from 16 addresses, opened again as the timeouts cut them, kept every user off the page.
  shareConnectionRoom(app.server as HttpsServer, {
    maxConnections: PAGE_LIMITS.maxConnections,
    perAddress: {
      limit: () => settings().maxConnectionsPerIp,
      refused: (client, limit) => log.warn({ client, limit }, 'account page: too many connections from this address, new ones closed at once'),
      madeRoom: (client, limit) => log.warn({ client, limit }, 'account page: too many connections from this address, the one idle longest closed for each new one'),
      // An IPv6 client by its network, as its listener counts its SMTP connections and failed sign-ins.
      countedAs: (address) => countedAddress(address, state.listener().limits.ipv6PrefixLength),
    },
  });
  // Only what the page's forms send: fastify's own JSON and text/plain parsers let a script post the same
  // fields in bodies no form makes (415 now), and parse input (JSON) no route needs.
  app.removeAllContentTypeParsers();
  await app.register(formbody);
  acceptMultipart(app);
  await app.register(cookie);
  await app.register(csrf, {
    cookieKey: '__Host-postern-csrf',
    cookieOpts: { path: '/', sameSite: 'strict', httpOnly: true, secure: true },
    // Tokens are bound to the session (or to "signed out"): one cannot be carried into another session.
    getUserInfo: (req) => req.cookies[SESSION_COOKIE] ?? 'signed-out',
    csrfOpts: { hmacKey: randomBytes(32) },
  });
  app.addHook('onSend', async (_req, reply) => {
    reply.headers(SECURITY_HEADERS);
  });
  // DNS rebinding (host-header.ts): a browser that went on past the certificate warning for attacker.example
  // would offer its client certificate there, and the attacker's script sign in with it. The page answers
  // only to the names of its certificate, the server's hostname, addresses and localhost.
  app.addHook('onRequest', async (req, reply) => {
    if (hostAllowed(req.headers.host, (name) => name === opts.generation().config.hostname.toLowerCase() || certificate.checkHost(name) !== undefined)) return;
    log.warn({ client: req.ip, host: clientText(String(req.headers.host)) }, 'account page: refused a request for a host name not of its certificate');
    return reply.code(421).type('text/html; charset=utf-8').send(errorPage(421, 'This page does not answer to that name: open it by the name on its certificate.'));
  });
  app.setErrorHandler((err: Error & { statusCode?: number; code?: string }, req, reply) => {
    const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500;
    if (status === 500) log.error({ err, url: req.url }, 'account page error');
    else log.warn({ client: req.ip, url: req.url, code: err.code, status }, `account page: ${err.message}`);
    const text = err.code?.startsWith('FST_CSRF') ? 'The form was stale or did not come from this page: reload it and try again.'
      : status === 500 ? 'Something went wrong on the server; it is logged.' : err.message;
    return reply.code(status).type('text/html; charset=utf-8').send(errorPage(status, text));
  });
  app.setNotFoundHandler((_req, reply) => reply.code(404).type('text/html; charset=utf-8').send(errorPage(404, 'No such page.')));
  await app.register(accountRoutes(state));

  const sep = opts.listen.lastIndexOf(':');
  try {
    await app.listen({ port: Number(opts.listen.slice(sep + 1)), host: opts.listen.slice(0, sep).replace(/^\[|\]$/g, '') });
  } catch (err) {
    await app.close();
    throw new Error(`accounts: cannot listen on ${opts.listen}: ${(err as Error).message}${privilegedPortHint(opts.listen, err)}`);
  }
  const bound = app.server.address() as { address: string; port: number };
  log.info({ address: `${bound.address}:${bound.port}`, listener: first.name }, 'account page listening (HTTPS)');
  return {
    address: { address: bound.address, port: bound.port },
    async reloaded() {
      try {
        const next = await tlsOptions(state.listener(), opts.generation().config.pki.dir);
        (app.server as HttpsServer).setSecureContext(next.context);
        state.trust = next.trust;
        certificate = next.certificate;
      } catch (err) {
        // The reload that got here read the same files: only a change since then fails; keep what runs.
        log.warn({ err: { message: (err as Error).message } }, 'account page keeps its previous TLS material');
      }
    },
    async close() {
      app.server.closeAllConnections?.();
      await app.close();
    },
  };
}
