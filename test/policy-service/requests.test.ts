// The Postfix policy service's protocol: addresses and their spellings, answer lines, certificate identity, header
// edits and the message body, reloads, idle and crowded clients, read-ahead and the verdicts' matrix. One file for
// what were several (one test process and one load of the engine instead of one each), each its own describe with
// its own servers, as before.
import { test, after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { once } from 'node:events';
import net from 'node:net';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { until } from '../helpers/wait.ts';
import { PolicyClient, rcptRequest, type Attributes, requestText } from './helpers/policy-client.ts';
import { parseConfig } from '../../engine/config/load-config.ts';
import { registry } from '../../engine/metrics/metrics.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { startPostern } from '../../engine/app/postern.ts';
import { createLogger } from '../../engine/logging/logger.ts';

describe('address-spellings', () => {
  // Postfix names a client as `192.0.2.66` or `2001:db8::66`; any other client of the service (or a Postfix
  // passing on what a proxy header claimed) may write the same address as `::ffff:192.0.2.66`, `::FFFF:c000:242`
  // or `2001:DB8:0:0::66`. Each is one client: scripts see one ctx.connection.remoteAddress (the key of their
  // rate() calls and table lookups), a table entry finds it, and the log names it one way. Over a real socket.
  let s: TestServer;

  before(async () => {
    s = await startTestServer({
      config: `
tables: { deny: ./deny }
listeners: [{ name: smtp, listen: 127.0.0.1:0 }]
policyServices:
  - { name: p, listen: 127.0.0.1:0 }
`,
      files: { deny: '192.0.2.66 REJECT\n2001:db8::66 REJECT\n' },
      scripts: { 'rcptto.ts': `export default (ctx) => reject([ctx.connection.remoteAddress, ctx.connection.localAddress, lookup('deny', ctx.connection.remoteAddress)].join(' '));` },
    });
  });
  after(() => s?.stop());

  async function seen(attrs: Record<string, string>): Promise<string> {
    const c = await PolicyClient.connect({ port: Number(s.policyAddresses.get('p')!.split(':').pop()) });
    try {
      return (await c.ask(rcptRequest(attrs))).replace(/^action=\S+ (\S+ )?/, '');
    } finally {
      c.close();
    }
  }

  test('an IPv4 client written as an IPv4-mapped IPv6 address is the IPv4 client', async () => {
    for (const spelling of ['192.0.2.66', '::ffff:192.0.2.66', '::FFFF:c000:242', '0:0:0:0:0:ffff:192.0.2.66']) {
      assert.equal(await seen({ client_address: spelling, server_address: '::ffff:198.51.100.1' }), '192.0.2.66 198.51.100.1 REJECT', spelling);
    }
    await until('logged as the IPv4 client', () => s.logs.filter((l) => l.service === 'p' && l.client === '192.0.2.66').length >= 4);
    assert.ok(!s.logs.some((l) => l.service === 'p' && /ffff/i.test(String(l.client))), 'no mapped spelling in the log');
  });

  test('an IPv6 client in any case and compression is one client', async () => {
    for (const spelling of ['2001:db8::66', '2001:DB8:0:0::66', '2001:0db8:0000:0000:0000:0000:0000:0066']) {
      assert.equal(await seen({ client_address: spelling, server_address: '2001:DB8::1' }), '2001:db8::66 2001:db8::1 REJECT', spelling);
    }
  });
});

describe('answer-line-controls', () => {
  // The `policy answer` line carries what Postfix passed on from its client (an SMTPUTF8 sender may hold C1
  // controls or bidi overrides) or what any local client of the service sent: such characters are written as
  // \u{…} (JSON escapes C0 controls only; U+009B is a terminal's CSI) and a value of any length is cut.
  const UNSHOWABLE = /[\u0080-\u009f\u202a-\u202e\u2066-\u2069\u2028\u2029]/;

  test('a refused request with C1 controls and bidi overrides in its attributes: none reach the log line', async () => {
    const s = await startTestServer({
      config: 'policyServices:\n  - name: main\n    listen: 127.0.0.1:0\n',
      scripts: { 'rcptto.ts': 'export default () => reject();' },
    });
    try {
      const c = await PolicyClient.connect({ port: Number(s.policyAddresses.get('main')!.split(':').pop()) });
      const answer = await c.ask(rcptRequest({
        sender: 'a\u009b2J\u202eevil@example.org', recipient: `b\u0085${'r'.repeat(5000)}@elsewhere.example`,
        client_name: 'host\u2066.example.org', queue_id: 'Q\u009b1', protocol_state: 'RCPT',
      }));
      assert.match(answer, /^action=5/);
      c.close();
      await until('the policy answer line', () => s.logs.some((l) => l.msg === 'policy answer' && l.decision === 'reject'));
      const line = s.logs.find((l) => l.msg === 'policy answer' && l.decision === 'reject')!;
      assert.doesNotMatch(JSON.stringify(line), UNSHOWABLE, JSON.stringify(line));
      assert.equal(line.sender, 'a\\u{9b}2J\\u{202e}evil@example.org');
      assert.ok(String(line.recipient).length < 300, 'a 5000-character recipient is cut');
    } finally { await s.stop(); }
  });
});

describe('certificate-identity', () => {
  // A policy service's certificate identity follows a listener's rules: a verified CN (Postfix sends ccert_subject
  // only for a certificate it verified) names the account unless it cannot name one (control characters, a
  // KELVIN SIGN that lowercases to "k"), and it wins over a pin that names another account (anyone may pin a
  // public key); a pin names the account of an unverified certificate. Over a real socket, Postfix's attributes.
  const PIN = 'AB:'.repeat(31) + 'AB';
  const CERT_FP = '5B:57:FE:31:CA:69:3D:FB:9E:99:22:9D:2B:8B:89:73:5B:57:FE:31:CA:69:3D:FB:9E:99:22:9D:2B:8B:89:73';

  let s: TestServer;

  before(async () => {
    s = await startTestServer({
      config: `
tables: { pins: ./pins }
listeners: [{ name: smtp, listen: 127.0.0.1:0 }]
policyServices:
  - { name: p, listen: 127.0.0.1:0, certificateIdentity: { field: CN, pins: pins } }
`,
      files: { pins: `${PIN} bob@example.org\n` },
      scripts: { 'rcptto.ts': `export default (ctx) => reject(String(ctx.connection.certificateIdentity));` },
    });
  });
  after(() => s?.stop());

  async function identity(attrs: Record<string, string>): Promise<string> {
    const c = await PolicyClient.connect({ port: Number(s.policyAddresses.get('p')!.split(':').pop()) });
    try {
      return (await c.ask(rcptRequest({ ccert_fingerprint: CERT_FP, ...attrs }))).replace(/^action=\S+ (\S+ )?/, '');
    } finally {
      c.close();
    }
  }

  test('a pinned key: the pin names an unverified certificate; a verified CN naming another account wins over it', async () => {
    assert.equal(await identity({ ccert_pubkey_fingerprint: PIN }), 'bob@example.org');
    assert.equal(await identity({ ccert_pubkey_fingerprint: PIN, ccert_subject: 'alice@example.org', ccert_issuer: 'Example CA' }), 'alice@example.org');
    assert.equal(await identity({ ccert_subject: 'alice@example.org', ccert_issuer: 'Example CA' }), 'alice@example.org');
  });

  test("a verified CN that cannot name an account: none, or the pin's account", async () => {
    assert.equal(await identity({ ccert_subject: '\u212Aate@example.org', ccert_issuer: 'Example CA' }), 'null');
    assert.equal(await identity({ ccert_subject: 'alice\u202e@example.org', ccert_issuer: 'Example CA' }), 'null');
    assert.equal(await identity({ ccert_pubkey_fingerprint: PIN, ccert_subject: '\u212Aate@example.org', ccert_issuer: 'Example CA' }), 'bob@example.org');
  });
});

describe('config', () => {
  // What the configuration refuses about policy services, with the key it is about.
  const problems = (yaml: string): string => {
    try {
      parseConfig(yaml, 'postern.yaml', '/tmp');
      return '';
    } catch (err) {
      return (err as Error).message;
    }
  };

  test('policy services alone make a configuration; neither listeners nor services is refused', () => {
    const loaded = parseConfig('policyServices: [{ name: postfix, listen: "unix:./policy.sock" }]\n', 'postern.yaml', '/srv/postern');
    assert.equal(loaded.config.listeners.length, 0);
    assert.equal(loaded.config.policyServices[0]!.listen, 'unix:/srv/postern/policy.sock', 'relative to the configuration file');
    assert.equal(loaded.config.policyServices[0]!.failureAction, 'DEFER_IF_PERMIT Service temporarily unavailable');
    assert.match(problems('scripts: ./s\n'), /listeners.*needs at least one listener \(or a policy service\)/);
  });

  test('tables, pins and names are checked', () => {
    assert.match(problems('policyServices: [{ name: p, listen: "127.0.0.1:1", relayClientCertificatesTable: nope }]\n'), /relayClientCertificatesTable.*no table named "nope"/);
    assert.match(problems('tables: { pins: ./pins }\npolicyServices: [{ name: p, listen: "127.0.0.1:1", fingerprintDigest: md5, certificateIdentity: { pins: pins } }]\n'),
      /pins are SPKI SHA-256: needs fingerprintDigest sha256/);
    assert.match(problems('listeners: [{ name: p, listen: "127.0.0.1:2" }]\npolicyServices: [{ name: p, listen: "127.0.0.1:1" }]\n'), /policyServices.*name already used/);
    assert.match(problems('policyServices: [{ name: p, listen: "localhost" }]\n'), /expected address:port or unix:\/path/);
    assert.match(problems('policyServices: [{ name: p, listen: "127.0.0.1:1", failureAction: "OK\\nDUNNO" }]\n'), /failureAction.*one line/);
  });

  test('a failed script can only defer: failureAction refuses every action that lets the mail through or bounces it', () => {
    const withAction = (action: string): string => problems(`policyServices: [{ name: p, listen: "127.0.0.1:1", failureAction: ${JSON.stringify(action)} }]\n`);
    for (const letsThrough of ['OK', 'ok', 'DUNNO', 'PERMIT', 'PREPEND X-Checked: no', 'HOLD', 'DISCARD', 'FILTER smtp:[127.0.0.1]:10025', 'REDIRECT a@b.example',
      'DEFER_IF_REJECT later', 'REJECT', '554 5.7.1 No', '250 OK', '4.3.5 no code', 'DEFERRED', '451x']) {
      assert.match(withAction(letsThrough), /failureAction.*a failed script must defer the mail/, letsThrough);
    }
    for (const defers of ['DEFER_IF_PERMIT Service temporarily unavailable', 'defer_if_permit', 'DEFER try later', 'DEFER', '451 4.3.5 Server configuration problem', '421 bye']) {
      assert.equal(withAction(defers), '', defers);
    }
  });
});

describe('crosstalk-load', () => {
  // Postfix keeps a policy connection open across the SMTP sessions of many clients, and several smtpd processes
  // ask at once: the requests of different clients follow each other on one policy connection and share the
  // sandbox's batched entries. Each answer must describe its own request's client (address, port, HELO name,
  // login, certificate and identity), never the previous request's on that connection or another connection's.
  // A Postfix certificate is only what a request's ccert_* attributes say, so one fingerprint may come with or without
  // ccert_pubkey_fingerprint (a Postfix before 2.9 sends none) or another subject: the certificate the sandbox keeps in
  // an isolate must follow each request.
  const hex = (byte: number): string => Array.from({ length: 32 }, () => byte.toString(16).padStart(2, '0').toUpperCase()).join(':');

  let s: TestServer;

  before(async () => {
    s = await startTestServer({
      config: `
sandbox: { isolates: 2, timeoutMs: 30000 }
listeners: [{ name: smtp, listen: 127.0.0.1:0 }]
policyServices:
  - { name: p, listen: 127.0.0.1:0, certificateIdentity: { field: CN } }
`,
      scripts: {
        // Async: the answer waits for the store, so requests of several connections are pending at once.
        'rcptto.ts': `export default async (ctx) => { await counter("n").add(1, 60); const c = ctx.connection; const k = c.clientCertificate;
        return reject([c.remoteAddress, c.remotePort, c.helo, c.auth ? c.auth.username : "-", k ? k.subject.CN ?? "-" : "-",
          k ? k.publicKeyFingerprint ?? "-" : "-", c.certificateIdentity ?? "-", ctx.address.address].join("|")); }`,
      },
    });
  });
  after(() => s?.stop());

  /** Client `i`'s attributes: its own address, port, HELO, login and certificate (every third has none). */
  function client(i: number): { attrs: Attributes; expected: string } {
    const address = `192.0.2.${1 + (i % 200)}`;
    const port = 40000 + i;
    const helo = `c${i}.example`;
    const user = i % 4 === 0 ? `user${i}` : '';
    const cert = i % 3 === 0 ? null : { cn: `dev${i}@example.org`, fp: hex(i % 7), pin: i % 2 ? hex(100 + (i % 5)) : '' };
    const attrs: Attributes = {
      client_address: address, client_port: port, helo_name: helo, sasl_username: user, sasl_method: user ? 'PLAIN' : '',
      ccert_subject: cert?.cn ?? '', ccert_issuer: cert ? 'Example CA' : '', ccert_fingerprint: cert?.fp ?? '', ccert_pubkey_fingerprint: cert?.pin ?? '',
    };
    const expected = [address, port, helo, user || '-', cert?.cn ?? '-', cert?.pin || '-', cert?.cn ?? '-'].join('|');
    return { attrs, expected };
  }

  test('one fingerprint described three ways, one request after another: each request sees its own description', async () => {
    const port = Number(s.policyAddresses.get('p')!.split(':').pop());
    const ask = async (subject: string, pin: string): Promise<string> => {
      const c = await PolicyClient.connect({ port });
      try {
        const attrs = { client_port: 1, ccert_fingerprint: hex(1), ccert_subject: subject, ccert_issuer: 'Example CA', ccert_pubkey_fingerprint: pin };
        return (await c.ask(rcptRequest({ ...attrs, recipient: 'r@example.com' }))).replace(/^action=\S+ (\S+ )?/, '');
      } finally {
        c.close();
      }
    };
    const seen = (subject: string, pin: string): string => ['192.0.2.10', 1, 'laptop.example.org', '-', subject, pin || '-', subject, 'r@example.com'].join('|');
    assert.equal(await ask('alice@example.org', hex(9)), seen('alice@example.org', hex(9)));
    assert.equal(await ask('alice@example.org', ''), seen('alice@example.org', ''));
    assert.equal(await ask('mallory@example.org', ''), seen('mallory@example.org', ''));
  });

  test('requests of many clients, interleaved on and across policy connections: each answer names its own client', { timeout: 300_000 }, async () => {
    const port = Number(s.policyAddresses.get('p')!.split(':').pop());
    const problems: string[] = [];
    await Promise.all(Array.from({ length: 20 }, async (_, conn) => {
      const c = await PolicyClient.connect({ port });
      try {
        for (let r = 0; r < 40; r++) {
          // The same few fingerprints come with different subjects and pins: the kept certificate must follow each request.
          const i = (conn * 7 + r * 13) % 300;
          const { attrs, expected } = client(i);
          const rcpt = `r${conn}-${r}@example.com`;
          const answer = (await c.ask(rcptRequest({ ...attrs, recipient: rcpt }))).replace(/^action=\S+ (\S+ )?/, '');
          if (answer !== `${expected}|${rcpt}`) problems.push(`connection ${conn} request ${r} (client ${i}): ${answer}, expected ${expected}|${rcpt}`);
        }
      } finally {
        c.close();
      }
    }));
    assert.deepEqual(problems.slice(0, 10), [], `${problems.length} problems`);
  });
});

describe('header-edits', () => {
  // A data hook's header edits over the policy protocol (real sockets): exactly one `add` at the DATA state
  // is Postfix's `PREPEND name: value`; what access(5) cannot say — set, remove, several edits, a header at
  // END-OF-MESSAGE — fails closed with the failure action and an error naming the script. The edits are
  // checked as on a listener (no CR/LF can reach the answer line).
  let s: TestServer;
  const tcp = (name: string) => ({ port: Number(s.policyAddresses.get(name)!.split(':').pop()) });
  const data = (sender: string, state = 'DATA') => rcptRequest({ protocol_state: state, sender, size: 1234 });
  const FAILURE = 'action=DEFER_IF_PERMIT Service temporarily unavailable';

  before(async () => {
    s = await startTestServer({
      config: `
policyServices:
  - name: main
    listen: 127.0.0.1:0
  - name: authoritative
    listen: 127.0.0.1:0
    authoritative: true
    failureAction: 451 4.3.5 Server configuration problem
`,
      scripts: {
        'data.ts': `
const edits = {
  one: [{ op: 'add', name: 'X-Postern-Client', value: 'cert=' + 'laptop' }],
  empty: [],
  two: [{ op: 'add', name: 'X-A', value: '1' }, { op: 'add', name: 'X-B', value: '2' }],
  set: [{ op: 'set', name: 'Subject', value: 'replaced' }],
  remove: [{ op: 'remove', name: 'X-Spam' }],
  crlf: [{ op: 'add', name: 'X-A', value: 'a\\r\\nX-Injected: yes' }],
  colon: [{ op: 'add', name: 'X-A: b', value: 'c' }],
};
export default function (ctx) {
  const key = ctx.transaction.sender.localPart;
  if (key === 'state') return accept({ headers: [{ op: 'add', name: 'X-State', value: ctx.postfix.protocolState }] });
  if (key === 'size') return accept({ headers: [{ op: 'add', name: 'X-Size', value: String(ctx.data.size) }] });
  return edits[key] ? accept({ headers: edits[key] }) : accept();
}`,
        'rcptto.ts': `export default () => accept({ headers: [{ op: 'add', name: 'X-A', value: '1' }] });`,
      },
    });
  });
  after(() => s?.stop());

  const logged = (pattern: RegExp) => s.logs.some((l) => l.level === 50 && pattern.test(String(l.msg)));

  test('one add at DATA: PREPEND name: value (the accept itself stays DUNNO, PREPEND goes on to the next restriction)', async () => {
    const c = await PolicyClient.connect(tcp('main'));
    assert.equal(await c.ask(data('one@example.org')), 'action=PREPEND X-Postern-Client: cert=laptop');
    assert.equal(await c.ask(data('size@example.org')), 'action=PREPEND X-Size: 1234');
    assert.equal(await c.ask(data('state@example.org', 'data')), 'action=PREPEND X-State: DATA', 'protocol_state is matched whatever its case');
    assert.equal(await c.ask(data('empty@example.org')), 'action=DUNNO', 'no edits: a plain accept');
    assert.equal(await c.ask(data('plain@example.org')), 'action=DUNNO');
    c.close();
    // An authoritative service cannot say OK and PREPEND in one answer: the header wins, the next restriction decides.
    const a = await PolicyClient.connect(tcp('authoritative'));
    assert.equal(await a.ask(data('one@example.org')), 'action=PREPEND X-Postern-Client: cert=laptop');
    assert.equal(await a.ask(data('plain@example.org')), 'action=OK');
    a.close();
    assert.match(await registry.getSingleMetricAsString('postern_policy_requests_total'), /service="main",state="DATA",action="prepend"\} [1-9]/);
  });

  test('what access(5) cannot say fails closed, with an error naming the script', async () => {
    const c = await PolicyClient.connect(tcp('main'));
    const script = join(s.dir, 'scripts', 'data.ts');
    for (const [sender, why] of [
      ['two', /2 header edits: a Postfix policy answer holds one action/],
      ['set', /header edit "set" Subject: .*not replace one/],
      ['remove', /header edit "remove" X-Spam: .*not remove one/],
    ] as const) {
      assert.equal(await c.ask(data(`${sender}@example.org`)), FAILURE, sender);
      assert.ok(s.logs.some((l) => l.level === 50 && l.script === script && why.test(String(l.msg)) && String(l.msg).includes(script)), `${sender}: logged with ${script}`);
    }
    // Postfix ignores PREPEND in smtpd_end_of_data_restrictions: the header would be lost, so it is a failure too.
    assert.equal(await c.ask(data('one@example.org', 'END-OF-MESSAGE')), FAILURE);
    assert.ok(logged(/header edits at END-OF-MESSAGE: Postfix applies PREPEND only before the message content/));
    c.close();
    const a = await PolicyClient.connect(tcp('authoritative'));
    assert.equal(await a.ask(data('two@example.org')), 'action=451 4.3.5 Server configuration problem', 'the service\'s own failure action');
    a.close();
  });

  test('an edit that could split the answer or the header is a malformed verdict: the failure action, nothing injected', async () => {
    const c = await PolicyClient.connect(tcp('main'));
    assert.equal(await c.ask(data('crlf@example.org')), FAILURE);
    assert.ok(logged(/policy script data failed: .*line break/));
    assert.equal(await c.ask(data('colon@example.org')), FAILURE);
    assert.ok(logged(/policy script data failed: .*name must be 1 to 76 printable/));
    // The connection is still in step: the next answer is the next request's.
    assert.equal(await c.ask(data('one@example.org')), 'action=PREPEND X-Postern-Client: cert=laptop');
    c.close();
  });

  test('header edits stay a data-hook option: from rcptto they are a script failure, as on a listener', async () => {
    const c = await PolicyClient.connect(tcp('main'));
    assert.equal(await c.ask(rcptRequest()), FAILURE);
    assert.ok(logged(/policy script rcptto failed: .*only a data hook can edit the message/));
    c.close();
  });
});

describe('held-event-loop-idle', () => {
  /**
   * A policy client (Postfix's check_policy_service) whose request came within idleTimeoutMs is answered, however late
   * the server's event loop gets to it. The client runs on its own thread, so it sends while the test holds the
   * server's event loop (as a loaded machine that descheduled the server holds it): the request then waits in the
   * socket while the idle time passes. An event loop that gets the CPU back runs its timers before it reads its
   * sockets, and the idle timeout, judged in its timer, closed the connection with the request unread: Postfix then
   * logs "problem talking to server" and defers the mail it was asking about.
   */
  const IDLE_MS = 2000;

  const asleep = new Int32Array(new SharedArrayBuffer(4));
  /** Hold this thread's event loop for `ms`. */
  function holdEventLoop(ms: number): void {
    // Blocked, not spinning: the thread is held all the same (no timer runs, no socket is read), without a core's CPU.
    Atomics.wait(asleep, 0, 0, ms);
  }

  test('a request sent within idleTimeoutMs while the event loop was held past it: answered, the connection kept', async () => {
    const s = await startTestServer({ config: `
localDomains: [example.org]
listeners:
  - { name: smtp, listen: 127.0.0.1:0 }
policyServices:
  - { name: main, listen: 127.0.0.1:0, limits: { idleTimeoutMs: ${IDLE_MS} } }
` });
    const flags = new Int32Array(new SharedArrayBuffer(8));
    // A client on its own thread: connects, tells the test ('ready'), sends its request once told to (flags[0] = 1),
    // sets flags[1] when it is written, and posts what it reads.
    const client = new Worker(`
    const net = require('node:net');
    const { parentPort, workerData: { port, request, flags } } = require('node:worker_threads');
    const s = net.connect(port, '127.0.0.1', () => {
      parentPort.postMessage('ready');
      Atomics.wait(flags, 0, 0);
      s.write(request, () => Atomics.store(flags, 1, 1));
    });
    let seen = '';
    s.on('data', (b) => { seen += b; if (seen.endsWith('\\n\\n')) parentPort.postMessage(seen); });
    s.on('error', (e) => parentPort.postMessage('closed: ' + e.code));`,
    { eval: true, workerData: { port: Number(s.policyAddresses.get('main')!.split(':').pop()), request: requestText(rcptRequest({ recipient: 'bob@example.org' })), flags } });
    try {
      await once(client, 'message'); // 'ready': connected, so the idle time runs
      const answer = once(client, 'message');
      // From here the event loop is held: the client sends at once; the hold lasts past the idle time.
      Atomics.store(flags, 0, 1);
      Atomics.notify(flags, 0);
      while (Atomics.load(flags, 1) === 0) holdEventLoop(1);
      holdEventLoop(IDLE_MS + 200);
      assert.match(String((await answer)[0]), /^action=/);
    } finally {
      await client.terminate();
      await s.stop();
    }
  });
});

describe('idle-crowd', () => {
  // Connections that ask nothing cannot keep Postfix out of the policy service. At limits.maxConnections a new
  // connection was closed at once while idle connections (or ones dripping a request) held every slot for
  // idleTimeoutMs (330 s), opened again as each was cut: the protocol has no authentication, and on loopback
  // any local user did this, so Postfix's new smtpd processes met a closed connection and applied their
  // default_action (451 4.3.5) to all mail. Now a new connection over the limit closes this process's
  // connection that has gone longest without progress, silent ones first (closing-order.ts) (accepted, a request read, an answer written; Postfix
  // reconnects and sends its request again when it finds its idle connection closed), and one being answered
  // never; with none to close, the new one is closed as before.
  let s: TestServer;

  before(async () => {
    s = await startTestServer({
      config: `
localDomains: [example.org]
policyServices:
  - { name: postfix, listen: '127.0.0.1:0', limits: { maxConnections: 4 } }
`,
    });
  });
  after(() => s?.stop());

  const port = (): number => Number(s.policyAddresses.get('postfix')!.split(':').pop());

  async function silent(): Promise<net.Socket> {
    const socket = net.connect(port(), '127.0.0.1');
    socket.on('error', () => undefined);
    await once(socket, 'connect');
    return socket;
  }

  test('the service full of idle and half-sent connections: Postfix\'s new connection is answered; the oldest idle one is closed for it', async () => {
    const held: net.Socket[] = [];
    for (let i = 0; i < 4; i++) {
      const c = await silent();
      if (i % 2 === 1) c.write('request=smtpd_access_policy\nprotocol_state=RCPT\n'); // a request begun, never ended
      held.push(c);
    }
    const closedOnes: number[] = [];
    held.forEach((h, i) => h.once('close', () => closedOnes.push(i)));
    try {
      // The service has them all (each counted) before the next comes.
      await until('4 connections open', () => s.policyServers.get('postfix')!.connections === 4);
      const postfix = await PolicyClient.connect({ port: port() });
      postfix.send(requestText(rcptRequest({ recipient: 'x@example.org' })));
      assert.equal(await Promise.race([postfix.closed.then(() => 'closed unanswered'), postfix.next()]), 'action=DUNNO');
      await until('the oldest held closed for it', () => closedOnes.length > 0);
      assert.deepEqual(closedOnes, [0], 'the oldest alone, not by a timeout');
      assert.equal(s.logs.filter((l) => l.msg === 'policy service: too many connections, the one idle longest closed for each new one').length, 1);
      postfix.close();
    } finally {
      for (const h of held) h.destroy();
    }
    await until('the service empty', () => s.policyServers.get('postfix')!.connections === 0);
  });

  test('silent connections opened after Postfix\'s idle ones are closed first: a flood of them does not cut Postfix off', async () => {
    // Two Postfix connections that asked and got their answers (idle now), then two that never send a byte.
    const postfix = [await PolicyClient.connect({ port: port() }), await PolicyClient.connect({ port: port() })];
    for (const p of postfix) {
      p.send(requestText(rcptRequest({ recipient: 'x@example.org' })));
      assert.equal(await p.next(), 'action=DUNNO');
    }
    const held = [await silent(), await silent()];
    await until('4 connections open', () => s.policyServers.get('postfix')!.connections === 4);
    // Each new silent connection closes a silent one, never a Postfix connection that has made progress.
    const flood: net.Socket[] = [];
    try {
      for (let i = 0; i < 3; i++) {
        flood.push(await silent());
        await until('back at 4', () => s.policyServers.get('postfix')!.connections === 4);
      }
      for (const p of postfix) {
        p.send(requestText(rcptRequest({ recipient: 'y@example.org' })));
        assert.equal(await Promise.race([p.closed.then(() => 'closed'), p.next()]), 'action=DUNNO');
      }
    } finally {
      for (const h of [...held, ...flood]) h.destroy();
      for (const p of postfix) p.close();
    }
    await until('the service empty', () => s.policyServers.get('postfix')!.connections === 0);
  });
});

describe('local-recipients-spellings', () => {
  // localRecipients through a policy service: Postfix asks with the recipient as its client wrote it, and delivers it so.
  // The table folded the local part to NFC before its ASCII-safe lowercasing, and NFC alone maps U+212A KELVIN SIGN
  // to `K`: `\u212Aate@example.com` was kate's, answered DUNNO, and Postfix accepted it for a mailbox server that
  // has no such user (Dovecot folds ASCII case only), to bounce it later to a sender a spammer forged. A listener
  // unchanged: it writes the recipient in NFC (RFC 6532) before the table sees it, so what it accepts is kate's.
  let server: TestServer;
  before(async () => {
    server = await startTestServer({
      files: { recipients: 'kate@example.com\n', 'no-scripts/README': 'no scripts\n' },
      config: `
localDomains: [example.com]
localRecipients: ./recipients
listeners:
  - name: mx
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: none }
    limits: { greetingDelayMs: 0 }
policyServices:
  - { name: postfix, listen: 127.0.0.1:0, relayRule: true, scripts: ./no-scripts }
`,
    });
  });
  after(() => server.stop());

  async function ask(recipient: string): Promise<string> {
    const c = await PolicyClient.connect({ port: Number(server.policyAddresses.get('postfix')!.split(':').pop()) });
    try {
      return await c.ask(rcptRequest({ recipient }));
    } finally {
      c.socket.destroy();
    }
  }

  test('policy service: a local part that NFC alone turns into a listed ASCII one is not that address', async () => {
    assert.equal(await ask('\u212Aate@example.com'), 'action=550 5.1.1 <\u212Aate@example.com>: Recipient address rejected: User unknown in local recipient table');
    assert.equal(await ask('\u212AATE@example.com'), 'action=550 5.1.1 <\u212AATE@example.com>: Recipient address rejected: User unknown in local recipient table');
    assert.match(await ask('KATE@example.com'), /^action=(DUNNO|OK)$/);
  });

  test('listener: the recipient is written in NFC before the table sees it, so the Kelvin sign arrives as kate\'s', async () => {
    const c = await SmtpTestClient.connect(server.port('mx'));
    await c.hello();
    await c.command('MAIL FROM:<sender@elsewhere.example> SMTPUTF8');
    assert.equal((await c.command('RCPT TO:<\u212Aate@example.com>')).code, 250);
    assert.equal((await c.command('RCPT TO:<nobody@example.com>')).code, 550);
    await c.quit();
  });
});

describe('message-body', () => {
  // A data script asked by Postfix (real sockets, the policy protocol) has ctx.message as on a listener, as the
  // declared DataContext says; Postfix sends no body, so text() fails closed with an error saying so — not the
  // script's own TypeError on a ctx.message that was not there.
  test('message.text() behind Postfix: a clear error, the failure action, and a script that checks first still decides', async () => {
    const s = await startTestServer({
      config: 'policyServices:\n  - name: main\n    listen: 127.0.0.1:0\n',
      scripts: {
        'data.ts': `
export default async function (ctx) {
  if (ctx.transaction.sender.localPart === 'careful' && ctx.connection.source === 'postfix-policy') return reject('no body to read: ' + typeof ctx.message.text);
  const body = await ctx.message.text(4096);
  if (body.includes('confidential')) return reject('confidential');
}`,
      },
    });
    try {
      const client = await PolicyClient.connect({ port: Number(s.policyAddresses.get('main')!.split(':').pop()) });
      const ask = (sender: string) => client.ask(rcptRequest({ protocol_state: 'END-OF-MESSAGE', sender, size: 1234 }));
      assert.equal(await ask('careful@example.org'), 'action=550 5.7.1 no body to read: function');
      assert.equal(await ask('reader@example.org'), 'action=DEFER_IF_PERMIT Service temporarily unavailable');
      client.close();
      const failure = s.logs.find((l) => String(l.msg).startsWith('policy script data failed'));
      assert.equal(failure?.err, 'Error: message.text(): a Postfix policy request carries no message body (ctx.connection.source is "postfix-policy")');
      assert.equal(failure?.line, 4);
    } finally { await s.stop(); }
  });
});

describe('read-ahead', () => {
  // What one connection may make the service hold: requests read ahead of their answers are bounded by their
  // bytes, not only by their count (a request may be maxAttributes × maxLineBytes, 1.6 MB by default), and a
  // chunk of many tiny requests is not parsed past that bound.
  let s: TestServer;

  before(async () => {
    s = await startTestServer({
      // A long time limit: while the first request's script spins, the service reads what follows it.
      config: `
localDomains: [example.org]
sandbox: { timeoutMs: 4000, fastPathMs: 0 }
policyServices:
  - { name: local, listen: 'unix:./policy.sock' }
`,
      scripts: { 'rcptto.ts': `export default (ctx) => { if (ctx.address.address.startsWith('spin@')) for (;;) {} }` },
    });
  });
  after(() => s?.stop());

  /**
   * Sends the text in pieces of 64 KB, each after the last one reached the kernel, and returns how many bytes
   * the service has taken (read, or in the socket buffers between) once that stands still: it stopped reading.
   */
  async function takenWhenStill(c: PolicyClient, text: string): Promise<number> {
    let flushed = 0;
    void (async () => {
      for (let i = 0; i < text.length && !c.socket.destroyed; i += 65536) {
        const piece = text.slice(i, i + 65536);
        await new Promise((resolve) => c.socket.write(piece, resolve));
        flushed += piece.length;
      }
    })();
    let last = -1;
    for (let still = 0; still < 5;) {
      await new Promise((r) => setTimeout(r, 100));
      still = flushed === last ? still + 1 : 0;
      last = flushed;
    }
    return last;
  }

  test('large requests sent behind a slow one: the service reads ahead a bounded number of bytes', async () => {
    const c = await PolicyClient.connect({ path: s.policyAddresses.get('local')!.slice('unix:'.length) });
    const big = requestText(rcptRequest(Object.fromEntries(Array.from({ length: 150 }, (_, i) => [`x_${i}`, 'v'.repeat(8000)]))));
    const text = requestText(rcptRequest({ recipient: 'spin@x.example' })) + big.repeat(40); // 48 MB
    const taken = await takenWhenStill(c, text);
    // One request being decided, one read ahead, and the kernel's socket buffers: a few MB; it was 32 requests, 38 MB.
    assert.ok(taken < 8_000_000, `the service took ${taken} bytes of ${text.length} while one request was decided`);
    c.socket.destroy();
  });

  test('chunks of tiny requests behind slow ones: the service does not parse them all (heap)', async () => {
    // A 5-byte request is an object of a few hundred bytes: parsed whole, a 64 KB chunk made 13,000 of them.
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const path = s.policyAddresses.get('local')!.slice('unix:'.length);
    const clients = await Promise.all(Array.from({ length: 40 }, () => PolicyClient.connect({ path })));
    gc();
    const before = process.memoryUsage().heapUsed;
    const text = requestText(rcptRequest({ recipient: 'spin@x.example' })) + 'a=b\n\n'.repeat(13_000);
    const taken = await Promise.all(clients.map((c) => takenWhenStill(c, text)));
    assert.ok(taken.every((t) => t === text.length), 'each chunk is read');
    gc();
    const grown = process.memoryUsage().heapUsed - before;
    assert.ok(grown < 30_000_000, `${grown} bytes of heap for ${clients.length} connections of ${text.length} bytes`);
    for (const c of clients) c.socket.destroy();
  });
});

describe('reload', () => {
  // A policy service with its own scripts folder: that folder is watched like a listener's, so an edit there
  // changes the next answer on an open connection.
  test('an edit in a service\'s own scripts folder applies to the next request', async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'postern-policy-reload-'));
    await mkdir(join(dir, 'postfix-scripts'));
    await writeFile(join(dir, 'postfix-scripts', 'rcptto.ts'), `export default () => reject('version 1');`);
    await writeFile(join(dir, 'postern.yaml'), `
dataDir: ./data
policyServices: [{ name: postfix, listen: 127.0.0.1:0, scripts: ./postfix-scripts }]
`);
    const running = await startPostern({ configPath: join(dir, 'postern.yaml'), logger: createLogger('silent') });
    const c = await PolicyClient.connect({ port: Number(running.policyAddresses.get('postfix')!.split(':').pop()) });
    // One hook, in this order: t.after hooks run in the order they were added, and the folder removed while the server
    // still wrote into its data folder failed the test (ENOTEMPTY) once in a fresh-clone run.
    t.after(async () => {
      c.close();
      await running.close();
      await rm(dir, { recursive: true, force: true });
    });
    assert.equal(await c.ask(rcptRequest()), 'action=550 5.7.1 version 1');
    await writeFile(join(dir, 'postfix-scripts', 'rcptto.ts'), `export default () => reject('version 2');`);
    await until('the new script', async () => (await c.ask(rcptRequest())) === 'action=550 5.7.1 version 2');
  });
});

describe('verdict-matrix', () => {
  // Every hook Postfix can ask (each protocol_state) x every verdict and option the script API allows, and hostile
  // ones, over the policy protocol: each answer is the access(5) action docs/postfix-policy.md gives that verdict, or
  // the failure action (fail closed). No verdict becomes DUNNO or OK unless it is an accept without anything Postfix
  // cannot be told. One script per hook; the case is the request's policy_context.
  const FAILED = 'DEFER_IF_PERMIT Service temporarily unavailable';
  const STATES = { CONNECT: 'connect', EHLO: 'helo', MAIL: 'mailfrom', RCPT: 'rcptto', DATA: 'data', 'END-OF-MESSAGE': 'data' } as const;
  type State = keyof typeof STATES;
  const REFUSED: Record<string, string> = { connect: 'Connection', helo: 'HELO', mailfrom: 'Sender', rcptto: 'Recipient', data: 'Message' };
  const rejectCode = (state: State): string => (state === 'CONNECT' ? '554' : '550');

  /** [case, what the script returns, the answer at each state]. */
  const CASES: Array<[string, string, (state: State) => string]> = [
    ['none', 'undefined', () => 'DUNNO'],
    ['accept', 'accept()', () => 'DUNNO'],
    ['accept-text', 'accept({ text: "fine" })', () => 'DUNNO'],
    ['accept-username', '({ verdict: "accept", username: "root" })', () => 'DUNNO'],
    ['reject', 'reject("no\\r\\naction=OK\\n\\n", { code: 554, enhanced: "5.7.0" })', () => '554 5.7.0 no action=OK '],
    ['reject-default', 'reject()', (s) => `${rejectCode(s)} 5.7.1 ${REFUSED[STATES[s]]} refused by policy`],
    ['reject-text-250', '({ verdict: "reject", text: "250 OK" })', (s) => `${rejectCode(s)} 5.7.1 250 OK`],
    ['reject-nul', 'reject("a\\u0000b\\u0085c")', (s) => `${rejectCode(s)} 5.7.1 a b c`],
    ['reject-long', 'reject("x".repeat(100000))', (s) => `${rejectCode(s)} 5.7.1 ${'x'.repeat(400)}`],
    // Past 1 MiB a text is not cut but refused (docs/scripts.md, limits): a script failure.
    ['reject-huge', 'reject("x".repeat(10 * 1024 * 1024))', () => FAILED],
    ['reject-disconnect', 'reject("bye", { disconnect: true })', (s) => `${rejectCode(s)} 5.7.1 bye`],
    ['defer', 'defer("later", { code: 452, enhanced: "4.2.2" })', () => 'DEFER_IF_PERMIT later'],
    ['defer-disconnect', 'defer(undefined, { disconnect: true })', () => 'DEFER_IF_PERMIT Temporary policy failure, try again later'],
    ['hold', 'accept({ hold: "look" })', (s) => (STATES[s] === 'data' ? 'HOLD look' : FAILED)],
    ['header', 'accept({ headers: [{ op: "add", name: "X-A", value: "1" }] })', (s) => (s === 'DATA' ? 'PREPEND X-A: 1' : FAILED)],
    ['header-set', 'accept({ headers: [{ op: "set", name: "X-A", value: "1" }] })', () => FAILED],
    ['reject-2xx', '({ verdict: "reject", code: 250 })', () => FAILED],
    ['defer-5xx', '({ verdict: "defer", code: 550 })', () => FAILED],
    ['code-float', '({ verdict: "reject", code: 550.5 })', () => FAILED],
    ['code-string', '({ verdict: "reject", code: "550" })', () => FAILED],
    ['enhanced-class', '({ verdict: "defer", enhanced: "5.7.1" })', () => FAILED],
    ['text-number', '({ verdict: "reject", text: 42 })', () => FAILED],
    ['disconnect-string', '({ verdict: "reject", disconnect: "yes" })', () => FAILED],
    ['hold-number', '({ verdict: "accept", hold: 1 })', () => FAILED],
    ['hold-newline', '({ verdict: "accept", hold: "a\\nOK" })', () => FAILED],
    ['deliver', '({ verdict: "deliver" })', () => FAILED],
    ['unknown-verdict', '({ verdict: "discard" })', () => FAILED],
    ['string', '"OK"', () => FAILED],
    ['rejects-verdict', 'Promise.reject(accept())', () => FAILED],
    ['throws-undefined', '(() => { throw undefined; })()', () => FAILED],
    ['unhandled', '(Promise.reject(new Error("lost")), accept())', () => FAILED],
  ];

  // Each script decides its own states only: the connect, helo and mailfrom scripts also decide later states first
  // (earlier-stages.ts), and would answer there for the later hook.
  const script = (hook: string): string => `export default function (ctx) {
  if (!${JSON.stringify(Object.keys(STATES).filter((state) => STATES[state as State] === hook))}.includes(ctx.postfix.protocolState)) return;
  const c = ctx.postfix.attributes.policy_context;
${CASES.map(([name, verdict]) => `  if (c === ${JSON.stringify(name)}) return ${verdict};`).join('\n')}
  throw new Error('no case ' + c);
}`;

  test('each verdict in each Postfix state is answered as the docs say, or with the failure action', async () => {
    const s = await startTestServer({
      config: 'policyServices:\n  - name: main\n    listen: 127.0.0.1:0\n',
      scripts: Object.fromEntries(['connect', 'helo', 'mailfrom', 'rcptto', 'data'].map((h) => [`${h}.js`, script(h)])),
    });
    try {
      const c = await PolicyClient.connect({ port: Number(s.policyAddresses.get('main')!.split(':').pop()) });
      const wrong: string[] = [];
      // Each request its own SMTP session (client_port): an earlier stage's verdict is kept per session.
      let port = 1000;
      for (const state of Object.keys(STATES) as State[]) {
        for (const [name, , expected] of CASES) {
          const answer = await c.ask(rcptRequest({ protocol_state: state, policy_context: name, size: 100, client_port: port++ }));
          if (answer !== `action=${expected(state)}`) wrong.push(`${state} ${name}: ${JSON.stringify(answer.slice(0, 120))}`);
        }
      }
      // Postfix states without a hook decide nothing here.
      assert.equal(await c.ask(rcptRequest({ protocol_state: 'VRFY', policy_context: 'reject' })), 'action=DUNNO');
      c.close();
      assert.deepEqual(wrong, []);
    } finally {
      await s.stop();
    }
  });
});
