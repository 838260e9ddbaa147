/**
 * A script cannot reach the sandbox runner's own functions or records, over real SMTP sockets.
 *
 * `this`: the runner called each hook as a method of its record of hooks, so a default export that is a
 * `function` got that record as `this`, and a helo script could assign `this.rcptto` — every client's
 * recipients then decided by it (an open relay). Hooks are called as plain functions now: `this` is undefined.
 *
 * `Function.caller`: V8 tells a sloppy-mode
 * function its caller (`f.caller`) unless that caller is strict code; a script can make sloppy functions
 * (`Function(…)`), and the runner calls script code — here a getter of a thrown error's message. The runner
 * was sloppy code: that getter walked up to its call() and run(), and a later call of the same isolate used
 * call() to record an outcome under another client's call id, turning that client's pending refusal into an
 * accept. The runner is strict now: the getter sees no caller, and the forging call only fails itself.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { openTransaction } from '../helpers/smtp-client.ts';
import { startDnsServer, type TestDnsServer } from '../helpers/dns-server.ts';
import { until } from '../helpers/wait.ts';

const RCPTTO = `const refs = {};
const spy = Function('refs', 'return function () { let f = arguments.callee.caller; try { for (let i = 0; f && i < 4; i++) { refs[f.name] = f; f = f.caller; } } catch {} return "m"; }')(refs);
export default function (ctx) {
  const local = ctx.address.localPart;
  // The victim's call waits (a lookup nobody answers) on the one isolate, then refuses.
  if (local === 'victim') return dns.resolve('slow.test', 'A').then((r) => reject('own verdict: ' + r.error, { code: 550 }));
  if (local === 'forged') return Promise.resolve(accept({ text: 'forged by another client' }));
  if (local === 'steal') { const e = new Error('x'); Object.defineProperty(e, 'message', { get: spy }); throw e; }
  if (local === 'forge') {
    const forged = { address: { localPart: 'forged' } };
    for (let id = 0; id < 200; id++) refs.call('rcptto', forged, ['rcptto', forged, null, null, false, null, null, false, id], id, false);
    return Promise.resolve(reject('forged', { code: 550 }));
  }
  if (local === 'nobody') return reject('nobody here', { code: 550 });
  if (local === 'found') return reject('runner functions reached: ' + (Object.keys(refs).join(',') || 'none'), { code: 550 });
}`;

const HELO = `export default function (ctx) {
  if (ctx.helo.name !== 'hijack.example') return;
  let what = typeof this;
  try { if (this) this.rcptto = () => accept({ text: 'hijacked' }); } catch (e) { what += ' ' + e.message; }
  return reject('this: ' + what, { code: 550 });
}`;

let dns: TestDnsServer;
let server: TestServer;

before(async () => {
  dns = await startDnsServer();
  dns.silent.add('slow.test');
  server = await startTestServer({
    config: `
localDomains: [example.com]
sandbox: { timeoutMs: 5000, isolates: 1 }
dns: { servers: ["${dns.address}"], timeoutMs: 2000 }
listeners:
  - name: mx
    listen: 127.0.0.1:0
    reverseDns: false
    limits: { greetingDelayMs: 0 }
`,
    scripts: { 'rcptto.js': RCPTTO, 'helo.js': HELO },
  });
});
after(async () => {
  await server?.stop();
  await dns?.stop();
});

test('a script cannot reach the runner\'s functions through Function.caller, nor forge another client\'s pending verdict', async () => {
  const victim = await openTransaction(server.port('mx'));
  const victimReply = victim.command('RCPT TO:<victim@example.com>');
  await until('the victim\'s call waits for its lookup', () => (dns.queries.get('A slow.test') ?? 0) >= 1);
  const attacker = await openTransaction(server.port('mx'));
  const steal = (await attacker.command('RCPT TO:<steal@example.com>')).text;
  const forge = (await attacker.command('RCPT TO:<forge@example.com>')).text;
  assert.equal((await victimReply).text, '550 5.7.1 own verdict: timeout', 'the victim gets its own script\'s verdict');
  assert.equal(steal, '451 4.3.0 Temporary policy failure, try again later');
  assert.equal(forge, '451 4.3.0 Temporary policy failure, try again later', 'refs.call is not a function: the forging call fails');
  assert.equal((await attacker.command('RCPT TO:<found@example.com>')).text, '550 5.7.1 runner functions reached: none');
  await attacker.quit();
  await victim.quit();
});

test('a hook\'s `this` is undefined: a helo script cannot replace the rcptto hook of every client', async () => {
  const c = await openTransaction(server.port('mx'));
  assert.equal((await c.command('RCPT TO:<nobody@example.com>')).text, '550 5.7.1 nobody here');
  const helo = (await c.command('EHLO hijack.example')).text;
  await c.quit();
  const other = await openTransaction(server.port('mx'));
  assert.equal((await other.command('RCPT TO:<nobody@example.com>')).text, '550 5.7.1 nobody here', 'another client: the rcptto script still decides');
  await other.quit();
  assert.equal(helo, '550 5.7.1 this: undefined');
});
