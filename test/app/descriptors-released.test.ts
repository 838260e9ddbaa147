// Every failure path gives its file descriptors back. A descriptor kept per failed handshake, refused command,
// failed script or failed delivery attempt is invisible in any one test, and after days of scanners and broken
// peers the process reaches its limit (EMFILE: no connection accepted, no spool file opened). Each path below
// runs many times against one server in this process; afterwards the process's open descriptors
// (/proc/self/fd, clients and peers included) come back to what they were after one warm-up round of each.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import tls from 'node:tls';
import { readFile, readdir, readlink } from 'node:fs/promises';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { startDeliveryServer, type DeliveryServer, fakeResolver } from '../helpers/delivery-server.ts';
import { startScriptedPeer, type ScriptedPeer } from '../helpers/scripted-peer.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { until } from '../helpers/wait.ts';
import { freePort } from '../helpers/free-port.ts';

/** 10: a descriptor kept by even one round in three is past the 2 that backTo allows for timing (each round of the script path spins a call to its 200 ms limit). */
const ROUNDS = 10;
/** Each round is six messages, each attempted once. */
const OUTBOUND_ROUNDS = 8;

async function descriptors(): Promise<string[]> {
  const names = await readdir('/proc/self/fd');
  const targets = await Promise.all(names.map((n) => readlink(`/proc/self/fd/${n}`).catch(() => 'gone')));
  return targets.filter((t) => t !== 'gone');
}

/** Waits until the open descriptors are back to `baseline`'s count (a few for timing), else names the extra ones. */
async function backTo(baseline: string[], what: string): Promise<void> {
  try {
    await until(`${what}: descriptors back to ${baseline.length}`, async () => (await descriptors()).length <= baseline.length + 2, { timeoutMs: 60_000 });
  } catch (err) {
    const now = await descriptors();
    const count = (list: string[]): Map<string, number> => {
      const m = new Map<string, number>();
      for (const t of list) { const k = t.replace(/\d+/g, 'N'); m.set(k, (m.get(k) ?? 0) + 1); }
      return m;
    };
    const before = count(baseline);
    const extra = [...count(now)].filter(([k, n]) => n > (before.get(k) ?? 0)).map(([k, n]) => `${k} +${n - (before.get(k) ?? 0)}`);
    throw new Error(`${(err as Error).message}; now ${now.length}, extra: ${extra.join(', ')}`);
  }
}

let pki: TestPki;
let ca: string;
let stranger: { cert: string; key: string };
let alice: { cert: string; key: string };

// (node:test may start a file's before hooks together: each server's waits for this.)
const pkiReady = (async () => {
  pki = await makeTestPki();
  ca = await readFile(pki.ca.cert, 'utf8');
  stranger = { cert: await readFile(pki.clients.stranger.cert, 'utf8'), key: await readFile(pki.clients.stranger.key, 'utf8') };
  alice = { cert: await readFile(pki.clients.alice.cert, 'utf8'), key: await readFile(pki.clients.alice.key, 'utf8') };
})();

describeInbound();
describeOutbound();

function describeInbound(): void {
  let server: TestServer;
  before(async () => {
    await pkiReady;
    const tlsOf = (mode: string, cc: string): string => `{ mode: ${mode}, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: ${cc}, caFiles: [${pki.ca.cert}], crlFiles: [${pki.crl}] }`;
    server = await startTestServer({
      config: `
localDomains: [example.com]
sandbox: { timeoutMs: 200 }
listeners:
  - { name: sub, listen: "127.0.0.1:0", tls: ${tlsOf('starttls', 'request')}, auth: { mechanisms: [PLAIN] }, limits: { greetingDelayMs: 0, maxMessageSize: 2000, authFailuresPerIp: 1000, maxErrors: 1000 } }
  - { name: strict, listen: "127.0.0.1:0", tls: ${tlsOf('implicit', 'require')}, limits: { greetingDelayMs: 0 } }
`,
      scripts: {
        'rcptto.ts': `export default (ctx) => {
          if (ctx.address.localPart === 'throws') throw new Error('no');
          if (ctx.address.localPart === 'spins') for (;;) {}
          return accept();
        };`,
      },
    });
  });
  after(() => server?.stop());

  const paths: Array<[string, () => Promise<void>]> = [
    ['a required client certificate from an unknown CA (implicit TLS)', async () => {
      await SmtpTestClient.connect(server.port('strict'), { implicitTls: { ca, ...stranger } }).then(async (c) => { await c.read().catch(() => undefined); c.socket.destroy(); }, () => undefined);
    }],
    ['garbage instead of a ClientHello after STARTTLS', async () => {
      const c = await SmtpTestClient.connect(server.port('sub'));
      await c.read();
      await c.command('EHLO x');
      await c.command('STARTTLS');
      c.socket.write(Buffer.alloc(64, 0x41));
      await c.waitClosed(30_000);
    }],
    ['a TLS client that does not trust the server (handshake aborted by the client)', async () => {
      const raw = net.connect(server.port('strict'), '127.0.0.1');
      const s = tls.connect({ socket: raw, rejectUnauthorized: true, ca: stranger.cert, ...alice });
      await new Promise<void>((resolve) => { s.once('error', () => resolve()); s.once('secureConnect', () => resolve()); });
      s.destroy();
      raw.destroy();
    }],
    ['a script that throws, one that runs to its time limit, a message too large, a failed AUTH, then QUIT', async () => {
      const c = await SmtpTestClient.connect(server.port('sub'));
      await c.hello({ starttls: { ca, ...alice } });
      assert.equal((await c.command(`AUTH PLAIN ${Buffer.from('\0nobody\0wrong').toString('base64')}`)).code, 535);
      assert.equal((await c.command('MAIL FROM:<a@example.com>')).code, 250);
      assert.equal((await c.command('RCPT TO:<throws@example.com>')).code, 451);
      assert.equal((await c.command('RCPT TO:<spins@example.com>')).code, 451);
      assert.equal((await c.command('RCPT TO:<b@example.com>')).code, 250);
      assert.equal((await c.command('DATA')).code, 354);
      assert.equal((await c.command(`Subject: big\r\n\r\n${'x'.repeat(5000)}\r\n.`)).code, 552);
      await c.quit();
    }],
    ['a client that resets the connection in the middle of a message', async () => {
      const c = await SmtpTestClient.connect(server.port('sub'));
      await c.hello({ starttls: { ca } });
      await c.command('MAIL FROM:<a@example.com>');
      await c.command('RCPT TO:<b@example.com>');
      await c.command('DATA');
      c.socket.write('Subject: cut\r\n\r\nhalf a line');
      await new Promise((r) => setImmediate(r));
      (c.socket as tls.TLSSocket & { _parent?: net.Socket }).destroy();
    }],
  ];

  test('inbound: failed handshakes, refused commands, failed scripts and cut connections give their descriptors back', async () => {
    for (const [, run] of paths) await run(); // warm-up: isolates, journal segments, lazily opened files
    await until('warm-up connections gone', () => [...server.servers.values()].every((s) => s.connections.size === 0));
    const baseline = await descriptors();
    for (const [name, run] of paths) {
      for (let i = 0; i < ROUNDS; i++) await run();
      await until(`${name}: sessions gone`, () => [...server.servers.values()].every((s) => s.connections.size === 0));
      await backTo(baseline, `after ${ROUNDS} × ${name}`);
    }
  });
}

function describeOutbound(): void {
  let server: DeliveryServer;
  let peers: ScriptedPeer[] = [];
  before(async () => {
    await pkiReady;
    // One misbehaving next hop per domain, each on its own loopback address (the MX port is one setting).
    const port = await freePort();
    peers = [
      await startScriptedPeer({ ehlo: (s) => { s.end('421 4.3.2 going away\r\n'); return 'stop'; } }, '127.0.0.3', port),
      await startScriptedPeer({ endOfData: (s) => { s.destroy(); return 'stop'; } }, '127.0.0.4', port),
      await startScriptedPeer({ rcpt: (s) => { s.write('550 5.1.1 no such user\r\n'); return 'answered'; } }, '127.0.0.5', port),
      // Offers STARTTLS, says 220 to it, then sends what no TLS handshake can read (tls.mode may: a plain retry may follow).
      await startScriptedPeer({
        ehlo: (s) => {
          s.removeAllListeners('data');
          s.write('250-peer\r\n250 STARTTLS\r\n');
          s.once('data', () => { s.write('220 2.0.0 ready\r\n'); s.once('data', () => s.end(Buffer.alloc(100, 0x15))); });
          return 'stop';
        },
      }, '127.0.0.6', port),
    ];
    const mx = (name: string): Array<{ exchange: string; priority: number }> => [{ exchange: `mx.${name}`, priority: 10 }];
    server = await startDeliveryServer({
      config: configYaml({
        listeners: [testListener('in')],
        delivery: { enabled: true, route: { mx: true, port }, tls: { mode: 'may' }, retrySchedule: [3600], commandTimeoutMs: 1000 },
      }),
      scripts: { 'rcptto.ts': 'export default () => accept();' },
      resolver: fakeResolver({
        'greets-421.test': mx('greets-421.test'), 'drops-after-data.test': mx('drops-after-data.test'),
        'refuses-rcpt.test': mx('refuses-rcpt.test'), 'bad-starttls.test': mx('bad-starttls.test'),
        'nothing-listens.test': [{ exchange: 'mx.nothing-listens.test', priority: 10 }], 'no-mx.test': 'nxdomain',
      }, {
        'mx.greets-421.test': ['127.0.0.3'], 'mx.drops-after-data.test': ['127.0.0.4'], 'mx.refuses-rcpt.test': ['127.0.0.5'],
        'mx.bad-starttls.test': ['127.0.0.6'], 'mx.nothing-listens.test': ['127.0.0.7'],
      }),
    });
  });
  after(async () => {
    await server?.stop();
    for (const p of peers) p.close();
  });

  const DOMAINS = ['greets-421.test', 'drops-after-data.test', 'refuses-rcpt.test', 'bad-starttls.test', 'nothing-listens.test', 'no-mx.test'];

  async function oneOfEach(): Promise<void> {
    const ids = await Promise.all(DOMAINS.map((d) => server.send('sender@example.com', [`someone@${d}`], 'Subject: t\r\n\r\nbody\r\n')));
    const attempts = await Promise.all(ids.map((id) => server.nextAttempt((e) => e.id === id, { past: true, timeoutMs: 60_000 })));
    for (const [i, a] of attempts.entries()) {
      if (DOMAINS[i] !== 'bad-starttls.test') assert.notEqual(a.outcomes[0]!.status, 'delivered', `${DOMAINS[i]}: a failure path`);
    }
  }

  test('outbound: refused, cut, 4xx/5xx and failed-STARTTLS attempts and the bounces they make give their descriptors back', async () => {
    await oneOfEach(); // warm-up
    const baseline = await descriptors();
    for (let i = 0; i < OUTBOUND_ROUNDS; i++) await oneOfEach();
    await backTo(baseline, `after ${OUTBOUND_ROUNDS} rounds of failing deliveries`);
  });
}
