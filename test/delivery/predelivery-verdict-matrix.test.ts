// Every kind of predelivery verdict the API allows, and hostile ones, through the real queue runner to a real next
// hop: what happens to the recipients is what docs/scripts.md (§ predelivery) says, or a temporary failure (fail
// closed); nothing is delivered that the script did not ask to deliver. One script, the case named by the recipient
// domain; one message per case, its first attempt only (no retry falls in the test).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { makeTestPki } from '../helpers/pki.ts';
import { startSink, type Sink } from '../helpers/sink.ts';
import { startDeliveryServer, type DeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, smarthostDelivery, testListener } from '../helpers/config.ts';

/** [case (the recipient domain's first label), the script's return, status, what the recipient's reply says]. */
const CASES: Array<[string, string, 'delivered' | 'temporary' | 'permanent', RegExp]> = [
  ['plain', 'deliver()', 'delivered', /^250 /],
  ['declared', 'deliver({ tls: { clientCertificate: "laptop", ca: "corp" } })', 'delivered', /^250 /],
  ['cert-unknown', 'deliver({ tls: { clientCertificate: "nope" } })', 'temporary', /no client certificate named "nope"/],
  // The docs: a name that is not declared fails the delivery temporarily, whatever the mode would use of it.
  ['cert-unknown-plain', 'deliver({ tls: { mode: "none", clientCertificate: "nope" } })', 'temporary', /no client certificate named "nope"/],
  ['ca-unknown', 'deliver({ tls: { ca: "nope" } })', 'temporary', /no CA named "nope"/],
  ['cert-keypath', 'deliver({ tls: { clientCertificate: KEY_PATH } })', 'temporary', /no client certificate named/],
  ['cert-proto', 'deliver({ tls: { clientCertificate: "__proto__" } })', 'temporary', /no client certificate named "__proto__"/],
  ['dkim-unknown', 'deliver({ dkim: "nope" })', 'temporary', /DKIM/],
  ['reject', 'reject("no\\r\\n250 2.0.0 fine\\u0000", { code: 554 })', 'permanent', /^554 5\.7\.1 no 250 2\.0\.0 fine $/],
  ['defer', 'defer("later", { code: 452, enhanced: "4.2.2" })', 'temporary', /^452 4\.2\.2 later$/],
  ['reject-2xx', '({ verdict: "reject", code: 250 })', 'temporary', /^451 4\.3\.0 Temporary policy failure/],
  ['reject-text-250', '({ verdict: "reject", text: "250 OK" })', 'permanent', /^550 5\.7\.1 250 OK$/],
  ['defer-5xx', '({ verdict: "defer", code: 550 })', 'temporary', /^451 4\.3\.0 Temporary policy failure/],
  ['code-float', '({ verdict: "reject", code: 550.5 })', 'temporary', /^451 4\.3\.0 Temporary policy failure/],
  ['code-string', '({ verdict: "reject", code: "550" })', 'temporary', /^451 4\.3\.0 Temporary policy failure/],
  ['accept', '({ verdict: "accept" })', 'temporary', /^451 4\.3\.0 Temporary policy failure/],
  ['hold', '({ verdict: "accept", hold: "look" })', 'temporary', /^451 4\.3\.0 Temporary policy failure/],
  ['tls-string', '({ verdict: "deliver", tls: "verify" })', 'temporary', /^451 4\.3\.0 Temporary policy failure/],
  ['headers', '({ verdict: "deliver", headers: [] })', 'temporary', /^451 4\.3\.0 Temporary policy failure/],
  ['huge-text', 'defer("x".repeat(10 * 1024 * 1024))', 'temporary', /^451 4\.3\.0 /],
  ['rejects-verdict', 'Promise.reject(deliver())', 'temporary', /^451 4\.3\.0 Temporary policy failure/],
  ['rejects-null', 'Promise.reject(null)', 'temporary', /^451 4\.3\.0 Temporary policy failure/],
];

let sink: Sink;
let s: DeliveryServer;
let keyPath: string;

before(async () => {
  const pki = await makeTestPki();
  keyPath = pki.clients.alice.key;
  sink = await startSink();
  s = await startDeliveryServer({
    files: { 'laptop.crt': await readFile(pki.clients.alice.cert, 'utf8'), 'laptop.key': await readFile(pki.clients.alice.key, 'utf8'), 'corp.pem': await readFile(pki.ca.cert, 'utf8') },
    config: configYaml({
      listeners: [testListener('in')],
      localDomains: CASES.map(([name]) => `${name}.example`), // accepted from the test's plain client
      delivery: smarthostDelivery(sink.port, {
        tls: { mode: 'may' }, retrySchedule: [3600],
        clientCertificates: { laptop: { cert: './laptop.crt', key: './laptop.key' } },
        caFiles: { corp: './corp.pem' },
      }),
    }),
    scripts: {
      'predelivery.js': `
const KEY_PATH = ${JSON.stringify(keyPath)};
export default function (ctx) {
  const c = ctx.destination.domain.split('.')[0];
${CASES.map(([name, verdict]) => `  if (c === ${JSON.stringify(name)}) return ${verdict};`).join('\n')}
}`,
    },
  });
});
after(async () => {
  await s?.stop();
  await sink?.close();
});

test('each predelivery verdict does what the docs say, or fails the delivery temporarily', async () => {
  const ids = new Map<string, string>();
  for (const [name] of CASES) ids.set(name, await s.send('sender@example.com', [`user@${name}.example`]));
  const wrong: string[] = [];
  for (const [name, , status, reply] of CASES) {
    const e = await s.nextAttempt((a) => a.id === ids.get(name), { past: true });
    const o = e.outcomes[0]!;
    if (o.status !== status || !reply.test(o.reply)) wrong.push(`${name}: ${o.status} ${JSON.stringify(o.reply.slice(0, 160))}`);
  }
  // The bounce of the reject case (to the sender, at example.com) may be delivered too: not counted.
  const delivered = new Set(sink.messages.filter((m) => m.from !== '').map((m) => m.to[0]!.split('@')[1]!.split('.')[0]!));
  const expected = CASES.filter(([, , status]) => status === 'delivered').map(([name]) => name);
  assert.deepEqual(wrong, []);
  assert.deepEqual([...delivered].sort(), expected.sort(), 'the next hop got only what the script delivered');
  // An undeclared name is logged with the script that gave it, as a script's failure is.
  for (const name of ['no client certificate named "nope"', 'no CA named "nope"']) {
    assert.ok(s.logs.some((l) => l.level === 50 && String(l.msg).includes(`predelivery.js: ${name}`)), `logged: ${name}`);
  }
});
