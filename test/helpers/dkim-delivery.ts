/**
 * DKIM delivery tests' common setup: a real next hop (test/helpers/sink.ts) behind a Postern that signs with
 * fresh keys (test/helpers/dkim.ts), the TXT records that publish them for dkimpy, and the copy the next hop
 * received of a message sent in by a logged-in client.
 */
import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startSink, type Sink } from './sink.ts';
import { startDeliveryServer, type DeliveryServer } from './delivery-server.ts';
import { dkimKeyPair } from './dkim.ts';
import { configYaml, smarthostDelivery, testListener } from './config.ts';
import { useScratchDir } from './scratch.ts';
import { LOGIN_ANYONE } from './smtp-client.ts';

/** The user the signing Postern's clients log in as (any password: its auth script lets anyone in). */
export const DKIM_LOGIN = 'alice@example.com';

export interface SigningKeySpec {
  type: 'rsa' | 'ed25519';
  domain: string;
  selector: string;
  senderDomains?: string[];
}

export interface SigningDelivery<S = Sink> {
  readonly sink: S;
  readonly server: DeliveryServer;
  /** TXT records by `<selector>._domainkey.<domain>.`, as verifyDkim takes them. */
  readonly records: Record<string, string>;
}

/**
 * Starts the next hop (a sink, or what `startNextHop` starts: a raw one) and a signing Postern in the test file's
 * `before`, stops them in its `after`.
 */
export function useSigningDelivery<S extends { port: number; close(): Promise<unknown> } = Sink>(keys: Record<string, SigningKeySpec>,
  scripts: Record<string, string> = { 'rcptto.ts': 'export default () => accept();' },
  startNextHop: () => Promise<S> = () => startSink() as unknown as Promise<S>): SigningDelivery<S> {
  const scratch = useScratchDir('postern-dkim-');
  const setup = { records: {} as Record<string, string> } as { sink: S; server: DeliveryServer; records: Record<string, string> };
  before(async () => {
    const dkim: Record<string, { domain: string; selector: string; privateKey: string; senderDomains: string[] }> = {};
    for (const [name, k] of Object.entries(keys)) {
      const pair = dkimKeyPair(k.type);
      setup.records[`${k.selector}._domainkey.${k.domain}.`] = pair.txt;
      dkim[name] = { domain: k.domain, selector: k.selector, privateKey: await scratch.file(`${name}.key`, pair.privateKey), senderDomains: k.senderDomains ?? [] };
    }
    setup.sink = await startNextHop();
    // Its clients log in (as DKIM_LOGIN): the sender domain's keys sign only what a logged-in client sent.
    setup.server = await startDeliveryServer({
      config: configYaml({
        hostname: 'postern.test',
        listeners: [testListener('in', { auth: { mechanisms: ['PLAIN'] } })],
        delivery: smarthostDelivery(setup.sink.port, { retrySchedule: [3600], dkim }),
      }),
      scripts: { 'auth.ts': LOGIN_ANYONE, ...scripts },
      login: DKIM_LOGIN,
    });
  });
  after(async () => {
    await setup.server?.stop();
    await setup.sink?.close();
  });
  return setup;
}

/** Sends `message` in, waits for its attempt, asserts it was delivered; → the bytes the next hop received. */
export async function deliveredCopy(server: DeliveryServer, sink: Sink, from: string, to: string[], message: string): Promise<Buffer> {
  const id = await server.send(from, to, message);
  const e = await server.nextAttempt((x) => x.id === id, { past: true });
  assert.equal(e.outcomes[0]!.status, 'delivered', e.outcomes[0]!.reply);
  return sink.messages.find((m) => m.data.toString().includes(` id ${id}`))!.data;
}
