/**
 * A Postern policy service behind a real Postfix: Postfix relays to an smtp-sink and asks Postern over its private
 * `postern` socket, as docs/postfix-policy.md sets it up. What the policy-service tests behind Postfix start.
 */
import net from 'node:net';
import { join } from 'node:path';
import { startTestServer, type TestServer } from './postern.ts';
import { freePort, startPostfix, startSmtpSink, type PostfixInstance, type SmtpSink } from './postfix.ts';

/** The `policyServices` entry on the Postfix instance's private/postern socket, for Postfix's processes only. */
export function postfixPolicyConfig(pf: PostfixInstance): string {
  return `policyServices:\n  - name: postfix\n    listen: ${JSON.stringify(`unix:${join(pf.dir, 'spool', 'private', 'postern')}`)}\n    socket: { owner: postfix, mode: '0660' }\n`;
}

export interface PostfixPolicy {
  /** Postfix's smtpd port for the test's clients. */
  port: number;
  pf: PostfixInstance;
  sink: SmtpSink;
  /** The Postern server answering the policy requests. */
  s: TestServer;
  stop(): Promise<void>;
}

/**
 * Postfix `name` relaying to a new sink, with `main` on top of the relay settings (relayhost, no outbound TLS, relay
 * for mynetworks only), `master(port)` as its smtpd lines on a free port, and a Postern server running `scripts` as
 * its policy service. Whatever started is stopped again if a later step fails.
 */
export async function startPostfixPolicy(name: string, main: Record<string, string>, master: (port: number) => string[],
  scripts: Record<string, string>): Promise<PostfixPolicy> {
  const sink = await startSmtpSink();
  const port = await freePort();
  const pf = await startPostfix(name, {
    relayhost: `[127.0.0.1]:${sink.port}`, smtp_tls_security_level: 'none', smtpd_relay_restrictions: 'permit_mynetworks, reject',
    ...main,
  }, master(port)).catch(async (err: unknown) => { await sink.stop(); throw err; });
  const s = await startTestServer({ config: postfixPolicyConfig(pf), scripts })
    .catch(async (err: unknown) => { await pf.stop(); await sink.stop(); throw err; });
  return {
    port, pf, sink, s,
    async stop() {
      await s.stop();
      await pf.stop();
      await sink.stop();
    },
  };
}

/** One SMTP session on 127.0.0.1:`port` (commands written as UTF-8): the replies to its commands after EHLO (DATA's message sent when it is 354). */
export async function smtpSession(port: number, commands: string[]): Promise<string[]> {
  const socket = net.connect({ host: '127.0.0.1', port });
  let text = '';
  let wake = (): void => {};
  socket.on('data', (chunk: Buffer) => { text += chunk.toString('utf8'); wake(); });
  await new Promise<void>((resolve, reject) => { socket.once('connect', resolve); socket.once('error', reject); });
  const reply = async (): Promise<string> => {
    while (!/^\d{3} [^\n]*\n/m.test(text)) await new Promise<void>((resolve) => { wake = resolve; });
    const line = /^\d{3} [^\n]*\n/m.exec(text)!;
    text = text.slice(line.index + line[0].length);
    return line[0].trim();
  };
  await reply();
  const replies: string[] = [];
  for (const command of ['EHLO client.example', ...commands]) {
    socket.write(Buffer.from(`${command}\r\n`, 'utf8'));
    replies.push(await reply());
    if (command === 'DATA' && replies.at(-1)!.startsWith('354')) {
      socket.write('Subject: t\r\n\r\nhello\r\n.\r\n');
      replies.push(await reply());
    }
  }
  socket.write('QUIT\r\n');
  socket.end();
  return replies.slice(1);
}
