/**
 * A next hop for delivery tests: a real smtp-server on 127.0.0.1 that records what it received (envelope,
 * bytes, the TLS session and the client certificate's fingerprint) and can refuse at MAIL, RCPT or DATA,
 * or limit the recipients per transaction (452 after N, like smtp-server's maxRecipients).
 */
import type { SMTPServer as SMTPServerClass, SMTPServerSession } from 'smtp-server';
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { X509Certificate } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import type { AddressInfo } from 'node:net';

// smtp-server's CommonJS build, as the server's (engine/smtp/postern-server.ts): its ES build loads nodemailer's ES
// modules and, through their import of node:http, Node's fetch (undici), ~40 ms of CPU in each test file with a sink,
// and a second copy of both beside the server's when the file runs one in its own process.
const { SMTPServer } = createRequire(import.meta.url)('smtp-server') as { SMTPServer: typeof SMTPServerClass };

export interface PeerFacts {
  tls: boolean;
  /** SHA-256 fingerprint of the client certificate (uppercase colon hex, as node prints it), if one was presented. */
  clientFingerprint: string | null;
  /** Whether that certificate verified against the sink's CA. */
  clientAuthorized: boolean;
  servername: string | null;
}

export interface Received extends PeerFacts {
  from: string;
  to: string[];
  data: Buffer;
  /** The SMTP session (connection) that carried it. */
  sessionId: string;
}

export interface Refusal { code: number; text: string }

export interface SinkOptions {
  tls?: 'none' | 'starttls' | 'implicit';
  /** Server certificate chain and key files (default: none, only for tls none). */
  cert?: string;
  key?: string;
  /** CA file for client certificates; with it the sink asks for a client certificate. */
  ca?: string;
  /** Refuse the handshake without a CA-verified client certificate (TLS-level refusal). */
  requireClientCertificate?: boolean;
  /** Decide per command; return a refusal or nothing. */
  decide?(stage: 'mail' | 'rcpt' | 'data', address: string, peer: PeerFacts): Refusal | null | undefined;
  banner?: string;
  /** Wait this long before answering the end of DATA (a slow next hop). */
  dataDelayMs?: number;
  /** Answer the end of DATA only once this has settled (a next hop slow until the test says so). */
  holdVerdict?: Promise<unknown>;
  /** Refuse every RCPT after this many in one transaction with `tooManyReply`. */
  maxRecipients?: number;
  /** Default: 452 4.5.3 Too many recipients. */
  tooManyReply?: Refusal;
  /** The SIZE it advertises and enforces (default 10 MiB). */
  size?: number;
}

export interface Sink {
  port: number;
  messages: Received[];
  /** Every MAIL FROM seen (accepted or not), with the peer facts at that time. */
  attempts: Array<{ from: string; peer: PeerFacts }>;
  connections: number;
  /** Connections that have ended. */
  closedConnections: number;
  /** Messages whose end (the final dot) arrived, counted before dataDelayMs and holdVerdict. */
  endsOfData: number;
  waitFor(count: number, timeoutMs?: number): Promise<Received[]>;
  /** Resolves once `count` connections have ended. */
  waitForClosed(count: number, timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

export async function startSink(opts: SinkOptions = {}): Promise<Sink> {
  const mode = opts.tls ?? 'none';
  const peers = new Map<string, PeerFacts>();
  const peer = (s: SMTPServerSession): PeerFacts => peers.get(s.id) ?? { tls: false, clientFingerprint: null, clientAuthorized: false, servername: null };
  const messages: Received[] = [];
  const attempts: Sink['attempts'] = [];
  const waiters = new Set<() => void>();
  let connections = 0;
  let closedConnections = 0;
  let endsOfData = 0;
  const closeWaiters = new Set<() => void>();
  const refuse = (r: Refusal): Error => Object.assign(new Error(r.text), { responseCode: r.code });
  const server = new SMTPServer({
    logger: false,
    authOptional: true,
    disabledCommands: mode === 'none' ? ['AUTH', 'STARTTLS'] : ['AUTH'],
    hideSTARTTLS: mode === 'none',
    secure: mode === 'implicit',
    ...(opts.cert ? { cert: readFileSync(opts.cert), key: readFileSync(opts.key!) } : {}),
    ...(opts.ca ? { ca: [readFileSync(opts.ca)], requestCert: true, rejectUnauthorized: !!opts.requireClientCertificate } : {}),
    banner: opts.banner ?? 'test sink',
    size: opts.size ?? 10 * 1024 * 1024,
    onConnect(_session, cb) { connections++; cb(); },
    onSecure(socket, session, cb) {
      const tls = socket as TLSSocket;
      const cert = tls.getPeerX509Certificate();
      peers.set(session.id, {
        tls: true,
        clientFingerprint: cert ? new X509Certificate(cert.raw).fingerprint256 : null,
        clientAuthorized: tls.authorized,
        servername: (tls as TLSSocket & { servername?: string | false }).servername || null,
      });
      cb();
    },
    onMailFrom(address, session, cb) {
      attempts.push({ from: address.address, peer: peer(session) });
      const r = opts.decide?.('mail', address.address, peer(session));
      cb(r ? refuse(r) : undefined);
    },
    onRcptTo(address, session, cb) {
      if (opts.maxRecipients !== undefined && session.envelope.rcptTo.length >= opts.maxRecipients) {
        return cb(refuse(opts.tooManyReply ?? { code: 452, text: '4.5.3 Too many recipients' }));
      }
      const r = opts.decide?.('rcpt', address.address, peer(session));
      cb(r ? refuse(r) : undefined);
    },
    onData(stream, session, cb) {
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', async () => {
        endsOfData++;
        if (opts.dataDelayMs) await new Promise((r) => setTimeout(r, opts.dataDelayMs));
        await opts.holdVerdict?.catch(() => undefined);
        const r = opts.decide?.('data', '', peer(session));
        if (r) return cb(refuse(r));
        messages.push({
          from: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
          to: session.envelope.rcptTo.map((x) => x.address),
          data: Buffer.concat(chunks),
          sessionId: session.id,
          ...peer(session),
        });
        for (const w of [...waiters]) w();
        cb();
      });
    },
    onClose(session) {
      peers.delete(session.id);
      closedConnections++;
      for (const w of [...closeWaiters]) w();
    },
  });
  server.on('error', () => undefined);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const port = (server.server.address() as AddressInfo).port;
  return {
    port, messages, attempts,
    get connections() { return connections; },
    get closedConnections() { return closedConnections; },
    get endsOfData() { return endsOfData; },
    waitForClosed(count, timeoutMs = 15_000) {
      if (closedConnections >= count) return Promise.resolve();
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => { closeWaiters.delete(check); reject(new Error(`sink: ${closedConnections} of ${count} connections closed after ${timeoutMs} ms`)); }, timeoutMs);
        const check = (): void => {
          if (closedConnections < count) return;
          clearTimeout(timer);
          closeWaiters.delete(check);
          resolve();
        };
        closeWaiters.add(check);
      });
    },
    waitFor(count, timeoutMs = 15_000) {
      if (messages.length >= count) return Promise.resolve(messages);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => { waiters.delete(check); reject(new Error(`sink: ${messages.length} of ${count} messages after ${timeoutMs} ms`)); }, timeoutMs);
        const check = (): void => {
          if (messages.length < count) return;
          clearTimeout(timer);
          waiters.delete(check);
          resolve(messages);
        };
        waiters.add(check);
      });
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
