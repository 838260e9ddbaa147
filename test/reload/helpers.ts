/** What the reload tests share: a script whose verdict names its version, and the reply it gives. */
import assert from 'node:assert/strict';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { greeted, type ClusterProcess } from '../helpers/cluster.ts';

/** Listener `mx` (plain, no greeting pause) and one table, `senders` (the file ./senders): what most reload tests run. */
export const MX_WITH_TABLE_CONFIG = `
localDomains: [example.com]
tables:
  senders: ./senders
listeners:
  - name: mx
    listen: 127.0.0.1:0
    limits: { greetingDelayMs: 0 }
`;

/** A mailfrom script refusing with `text` (550 5.7.1 <text>); `slow` makes its load take a while (a reload being built). */
export function verdictScript(text: string, slow = false): string {
  const busy = slow ? 'let spin = 0;\nfor (let i = 0; i < 3_000_000; i++) spin += i % 7;\n' : '';
  return `${busy}export default (ctx) => reject(${JSON.stringify(text)}, { code: 550 });\n`;
}

/** The reply to MAIL FROM on a fresh session: on `to`'s listener `mx`, or on port `to`. */
export async function mailFromReply(to: number | { port(name: string): number }, from = 'x@y.example'): Promise<string> {
  const c = await SmtpTestClient.connect(typeof to === 'number' ? to : to.port('mx'));
  await c.hello();
  const r = await c.command(`MAIL FROM:<${from}>`);
  await c.quit();
  return r.text;
}

/**
 * The RCPT TO answers (their text after `550 5.7.1 `) of two connections open at once to a `postern serve` with
 * two workers in round robin: one on each worker, so a set of one answer means both run the same generation.
 */
export async function answersOfBothWorkers(c: ClusterProcess): Promise<Set<string>> {
  const clients = [await greeted(c), await greeted(c)];
  const texts = await Promise.all(clients.map(async (client) => {
    assert.equal((await client.command('MAIL FROM:<a@example.test>', 30_000)).code, 250);
    return (await client.command('RCPT TO:<b@example.test>', 30_000)).text.replace(/^550 5\.7\.1 /, '');
  }));
  for (const client of clients) client.destroy();
  return new Set(texts);
}
