// A script can withhold the default outbound client certificate for one destination (`clientCertificate: null`).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { makeTestPki } from '../helpers/pki.ts';
import { startSink } from '../helpers/sink.ts';
import { startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, testListener } from '../helpers/config.ts';

test('clientCertificate: null presents no certificate where the configuration names a default', async () => {
  const pki = await makeTestPki();
  const sink = await startSink({ tls: 'starttls', cert: pki.server.cert, key: pki.server.key, ca: pki.ca.cert });
  const s = await startDeliveryServer({
    files: { 'laptop.crt': await readFile(pki.clients.alice.cert, 'utf8'), 'laptop.key': await readFile(pki.clients.alice.key, 'utf8') },
    config: configYaml({
      listeners: [testListener('in')],
      delivery: {
        route: { smarthost: { host: '127.0.0.1', port: sink.port } },
        tls: { mode: 'encrypt', clientCertificate: 'laptop' },
        clientCertificates: { laptop: { cert: './laptop.crt', key: './laptop.key' } },
      },
    }),
    scripts: {
      'rcptto.ts': 'export default () => accept();',
      'predelivery.ts': `export default (ctx) => ctx.destination.domain === 'anonymous.example' ? deliver({ tls: { clientCertificate: null } }) : undefined;`,
    },
  });
  try {
    await s.send('me@example.net', ['a@anonymous.example']);
    await s.send('me@example.net', ['b@known.example']);
    await sink.waitFor(2);
    const by = (rcpt: string) => sink.messages.find((m) => m.to[0] === rcpt)!;
    assert.equal(by('a@anonymous.example').clientFingerprint, null);
    assert.equal(by('a@anonymous.example').tls, true);
    assert.equal(by('b@known.example').clientFingerprint, pki.clients.alice.fingerprintSha256Colon);
  } finally {
    await s.stop();
    await sink.close();
  }
});
