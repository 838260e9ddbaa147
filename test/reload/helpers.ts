/** What the reload tests share: a script whose verdict names its version, and the reply it gives. */
import { SmtpTestClient } from '../helpers/smtp-client.ts';

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
