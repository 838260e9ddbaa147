/**
 * AUTH guesses sent at once over many connections (to several workers, or several servers): the limit
 * authFailuresPerIp must bound the guesses checked over all of them.
 */
import assert from 'node:assert/strict';
import { plain } from '../auth/helpers/submission.ts';
import { SmtpTestClient } from './smtp-client.ts';

/** A server with listener `sub` (AUTH PLAIN) and `users` holding alice (password `right`); `store`: its store section. */
export const guessesConfig = (opts: { workers: number; limit: number; store?: string }): string => `
workers: ${opts.workers}
workerChoice: roundRobin
users: ./users
sandbox: { timeoutMs: 3000 }
${opts.store ?? ''}
listeners:
  - name: sub
    listen: 127.0.0.1:{PORT:sub}
    reverseDns: false
    auth: { mechanisms: [PLAIN] }
    limits: { greetingDelayMs: 0, authFailuresPerIp: ${opts.limit}, authFailuresBeforeDelay: 10, authFailureWindowMs: 600000, maxConnectionsPerIp: 20 }
`;

/** A connection from `localAddress`, greeted and past EHLO. */
export async function greetedFrom(port: number, localAddress: string): Promise<SmtpTestClient> {
  const client = await SmtpTestClient.connect(port, { localAddress });
  assert.equal((await client.read(30_000)).code, 220);
  assert.equal((await client.command('EHLO guesser.test', 30_000)).code, 250);
  return client;
}

/**
 * AUTH PLAIN for alice from `localAddress` over connections to `ports` (one per entry), all written before any
 * reply is read, so they are decided in parallel: the replies, in order.
 */
export async function guessAtOnce(ports: number[], localAddress: string, password: (i: number) => string): Promise<string[]> {
  const open = await Promise.all(ports.map((port) => greetedFrom(port, localAddress)));
  try {
    for (const [i, c] of open.entries()) c.write(`${plain('alice', password(i))}\r\n`);
    return (await Promise.all(open.map((c) => c.read(60_000)))).map((r) => r.text);
  } finally {
    for (const c of open) c.destroy();
  }
}
