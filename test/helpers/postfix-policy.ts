/**
 * A Postern policy service behind a real Postfix: Postfix relays to an smtp-sink and asks Postern over its private
 * `postern` socket, as docs/postfix-policy.md sets it up. What the policy-service tests behind Postfix start.
 */
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
