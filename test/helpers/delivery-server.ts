/**
 * Postern for delivery tests: test/helpers/postern.ts (temp folder, scripts, files, log capture, optional
 * DNS stand-in) plus helpers to wait for queue attempts and to send a message in.
 */
import type { TestServer, TestServerOptions } from './postern.ts';
import type { DeliveryResolver, MxRecord } from '../../engine/delivery/dns.ts';
import { DeliveryFailure } from '../../engine/delivery/outcome.ts';
import { HostNotFound } from '../../engine/delivery/dns.ts';
import type { AttemptEvent, QueueRunner } from '../../engine/queue/runner.ts';
import { recordAttempts } from './attempts.ts';
import { submitMessage } from './smtp-client.ts';
import { until } from './wait.ts';

export interface DeliveryServer extends Omit<TestServer, 'port'> {
  port(listener?: string): number;
  /** Every attempt so far, in order. */
  attempts: AttemptEvent[];
  /** Resolves with the next attempt event matching `pred` (including ones already seen, if `past`). */
  nextAttempt(pred: (e: AttemptEvent) => boolean, opts?: { timeoutMs?: number; past?: boolean }): Promise<AttemptEvent>;
  /** Send one message through the first listener (plain SMTP); returns the queue id. */
  send(from: string, to: string[], body?: string): Promise<string>;
  /** Resolves once the queue runner has completed `count` scans of the spool that began after this call. */
  scans(count: number, timeoutMs?: number): Promise<void>;
}

export type DeliveryServerOptions = TestServerOptions & {
  /** send() logs in as this user first (AUTH PLAIN: the listener needs it, and an auth script such as LOGIN_ANYONE). */
  login?: string;
};

export async function startDeliveryServer(opts: DeliveryServerOptions): Promise<DeliveryServer> {
  // Loaded here, not at the top: files that import this one for parseDsn() or fakeResolver() start no server in-process.
  const { startTestServer } = await import('./postern.ts');
  const running = await startTestServer(opts);
  const { attempts, next } = recordAttempts(running.queue!);
  const firstListener = [...running.addresses.keys()][0]!;
  const server: DeliveryServer = Object.assign(running, {
    attempts,
    port: (name?: string) => running.addresses.get(name ?? firstListener)!.port,
    nextAttempt: next,
    send: (from: string, to: string[], body?: string) => submitMessage(server.port(), from, to, body, undefined, opts.login),
    scans: countScans(running.queue!),
  });
  return server;
}

/**
 * Counts the runner's scans, its periodic ones included (they call scan() on the instance, which this
 * shadows). Calls made while a scan runs share it: a new promise is a new scan.
 */
function countScans(queue: QueueRunner): DeliveryServer['scans'] {
  const scan = queue.scan.bind(queue);
  let begun = 0;
  let completed = 0;
  let current: Promise<void> | null = null;
  queue.scan = () => {
    const p = scan();
    if (p !== current) {
      current = p;
      begun++;
      void p.finally(() => { completed++; });
    }
    return p;
  };
  return (count, timeoutMs) => {
    const target = begun + count;
    return until(`${count} queue runner scan(s) begun after the call`, () => completed >= target, { timeoutMs });
  };
}

/** A DNS stand-in: MX records and addresses from tables; unknown names are NXDOMAIN. */
export function fakeResolver(mx: Record<string, MxRecord[] | 'nxdomain' | 'servfail'>, hosts: Record<string, string[]>): DeliveryResolver {
  return {
    async mx(domain) {
      const r = mx[domain];
      if (r === 'servfail') throw new DeliveryFailure(`Name service error for name=${domain} type=MX: ESERVFAIL`, { permanent: false, enhanced: '4.4.3' });
      if (r === undefined || r === 'nxdomain') {
        if (hosts[domain]) return [];
        throw new DeliveryFailure(`Host or domain name not found. Name service error for name=${domain} type=MX: Host not found`, { permanent: true, enhanced: '5.1.2' });
      }
      return r;
    },
    async addresses(host) {
      if (/^[\d.]+$|:/.test(host)) return [host];
      const a = hosts[host];
      if (!a) throw new HostNotFound(host);
      return a;
    },
  };
}

/** Split a multipart/report DSN into its notification text, delivery-status fields and returned header. */
export function parseDsn(raw: Buffer | string): {
  headers: Record<string, string>;
  text: string;
  perMessage: Record<string, string>;
  recipients: Array<Record<string, string>>;
  returnedHeader: string;
} {
  const s = raw.toString();
  const [head, ...rest] = s.split('\r\n\r\n');
  const headers = fields(head!);
  const boundary = /boundary="([^"]+)"/.exec(headers['content-type'] ?? '')?.[1];
  if (!boundary || !/^multipart\/report;/i.test(headers['content-type'] ?? '') || !/report-type=delivery-status/i.test(headers['content-type'] ?? '')) {
    throw new Error(`not a multipart/report DSN:\n${s.slice(0, 500)}`);
  }
  const body = rest.join('\r\n\r\n');
  const parts = body.split(`--${boundary}`).slice(1, -1).map((p) => {
    const t = p.replace(/^\r\n/, '');
    const i = t.indexOf('\r\n\r\n');
    return { headers: fields(t.slice(0, i)), body: t.slice(i + 4).replace(/\r\n$/, '') }; // that CRLF belongs to the delimiter
  });
  const text = parts.find((p) => /^text\/plain/i.test(p.headers['content-type'] ?? ''))!.body;
  const status = parts.find((p) => /^message\/delivery-status/i.test(p.headers['content-type'] ?? ''))!.body;
  const groups = status.trim().split(/\r\n\r\n/).map(fields);
  const returned = parts.find((p) => /^text\/rfc822-headers/i.test(p.headers['content-type'] ?? ''))?.body ?? '';
  return { headers, text, perMessage: groups[0]!, recipients: groups.slice(1), returnedHeader: returned };
}

function fields(block: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of block.replace(/\r\n[ \t]+/g, ' ').split('\r\n')) {
    const i = line.indexOf(':');
    if (i > 0) out[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
  }
  return out;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
