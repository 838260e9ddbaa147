/**
 * One script cannot change how another decides, nor read what another call saw, over real SMTP sockets:
 * every script of a folder shares one context per isolate, so a hostile `helo` script that could patch a
 * builtin (`Array.prototype.includes = () => true`) or pollute Object.prototype would turn the `rcptto`
 * script's relay refusal into an accept for every other client — an open relay.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient, openTransaction } from '../helpers/smtp-client.ts';

// One isolate: the hostile call and the others share one context.
const CONFIG = `
localDomains: [example.com]
sandbox: { timeoutMs: 300, isolates: 1 }
listeners:
  - name: mx
    listen: 127.0.0.1:0
    limits: { greetingDelayMs: 0 }
`;

/** Each patch a hostile script tries; it reports how many took (none should). */
const PATCHES = [
  'Array.prototype.includes = () => true',
  'Array.prototype.some = () => true',
  'Array.prototype.indexOf = () => 0',
  'Array.prototype[0] = "elsewhere.example"',
  'Array.prototype[Symbol.iterator] = function* () { yield "elsewhere.example"; }',
  'Object.setPrototypeOf(Array.prototype, { includes: () => true })',
  'Array.prototype.constructor = { [Symbol.species]: function () { return { length: 1 }; } }',
  'Object.defineProperty(Array, Symbol.species, { get: () => function () { return { length: 1 }; } })',
  'String.prototype.endsWith = () => true',
  'String.prototype.toLowerCase = () => "example.com"',
  'String.prototype[Symbol.iterator] = function* () {}',
  'RegExp.prototype.exec = () => ["bob@example.com", "bob"]',
  'RegExp.prototype.test = () => true',
  'Object.defineProperty(RegExp.prototype, "flags", { get: () => "" })',
  'Set.prototype.has = () => true',
  'Map.prototype.get = () => "ok"',
  'Object.prototype.allowed = true',
  'Object.defineProperty(Object.prototype, "allowed", { get: () => true, configurable: true })',
  'Object.prototype[Symbol.toPrimitive] = () => "example.com"',
  'Object.keys = () => []',
  'Object.hasOwn = () => true',
  'Array.isArray = () => true',
  'Function.prototype.call = function () { return true; }',
  'Math.max = () => 0',
  'globalThis.Math = { max: () => 0 }',
  'globalThis.Set = class { has() { return true; } }',
  'globalThis.JSON = { stringify: () => "{}", parse: () => ({}) }',
  'delete globalThis.Set',
  'Error.prototype.toString = () => "accept"',
  'Object.defineProperty(Error.prototype, "name", { get: () => "" })',
  'Iterator.prototype.map = () => []',
  'Object.getPrototypeOf(function* () {}).prototype.next = () => ({ done: true })',
  'Object.getPrototypeOf(async function () {}).constructor = null',
  'Object.getPrototypeOf([][Symbol.iterator]()).next = () => ({ done: true })',
  'Object.getPrototypeOf(Uint8Array).prototype.includes = () => true',
  'lookup.call = () => "ok"',
  'globalThis.URL = class { constructor() { this.hostname = "example.com"; } }',
  'Object.defineProperty(accept, "x", { value: 1 })',
];

const SCRIPTS = {
  'helo.ts': `export default function (ctx) {
    if (ctx.helo.name === 'patch.example') {
      let took = 0;
      for (const patch of ${JSON.stringify(PATCHES)}) {
        // Strict, as a module is: a refused assignment throws rather than doing nothing.
        try { (0, eval)('"use strict"; ' + patch); took++; log('took: ' + patch); } catch {}
      }
      return took ? reject('patches that took: ' + took) : undefined;
    }
    // What the last regular expression of any call in this isolate matched (RegExp's legacy statics).
    if (ctx.helo.name === 'leak.example') {
      const seen = [RegExp.input, RegExp.lastMatch, RegExp['$_'], RegExp.$1, RegExp.leftContext, RegExp.rightContext];
      return reject('seen: ' + seen.map((s) => s === undefined ? '-' : JSON.stringify(s)).join(' '));
    }
  }`,
  // An ordinary script: its own relay and user checks, with builtins, a Set, and a regular expression
  // over the recipient (the last expression it runs: what RegExp.input would have kept).
  'rcptto.ts': `const LOCAL = ['example.com'];
  const USERS = new Set(['bob', 'carol']);
  class Refusal extends Error { constructor(message) { super(message); this.name = 'Refusal'; } }
  export default function (ctx) {
    const domain = ctx.address.domain;
    const options = {};
    if (options.allowed) return accept();
    // A global the sandbox lacks, feature-detected: no other script may supply a fake.
    if (typeof URL === 'function' && new URL('smtp://' + domain).hostname === 'example.com' && domain !== 'example.com') return accept();
    // Frozen builtins still let a script shadow their properties on its own objects.
    const own = { toString: null };
    own.toString = () => 'own';
    if (new Refusal('x').name !== 'Refusal' || String(own) !== 'own') throw new Error('shadowing broke');
    if (!LOCAL.includes(domain) || LOCAL.filter((d) => d === domain).length === 0 || LOCAL.some((d) => d !== 'example.com') || !domain.endsWith('.com') || Object.keys(ctx.address).length === 0) {
      return reject('relay denied', { code: 554, enhanced: '5.7.1' });
    }
    const m = /^([a-z]+)@example\\.com$/.exec(ctx.address.address);
    if (!m || !USERS.has(m[1])) return reject('no such user', { code: 550, enhanced: '5.1.1' });
  }`,
};

let server: TestServer;
before(async () => { server = await startTestServer({ config: CONFIG, scripts: SCRIPTS }); });
after(async () => { await server.stop(); });

const session = (): Promise<SmtpTestClient> => openTransaction(server.port('mx'));

/** An ordinary client's verdicts: a user accepted, a relay refused, an unknown user refused. */
async function ordinary(): Promise<string[]> {
  const c = await session();
  try {
    return [
      (await c.command('RCPT TO:<bob@example.com>')).text.slice(0, 3),
      (await c.command('RCPT TO:<x@elsewhere.example>')).text,
      (await c.command('RCPT TO:<mallory@example.com>')).text,
    ];
  } finally {
    await c.quit();
  }
}
const ORDINARY = ['250', '554 5.7.1 relay denied', '550 5.1.1 no such user'];

test('a script that patches builtins, pollutes Object.prototype or replaces globals changes no other script\'s verdicts (no open relay)', async () => {
  assert.deepEqual(await ordinary(), ORDINARY, 'before');
  const hostile = await SmtpTestClient.connect(server.port('mx'));
  await hostile.read();
  const reply = await hostile.command('EHLO patch.example');
  assert.deepEqual(await ordinary(), ORDINARY, 'after, another client');
  const took = server.logs.filter((l) => /^took: /.test(String(l.msg))).map((l) => l.msg);
  assert.deepEqual(took, [], 'every patch is refused');
  assert.match(reply.text, /^250[ -]/);
  // Nor for the hostile client itself.
  assert.match((await hostile.command('MAIL FROM:<a@sender.example>')).text, /^250 /);
  assert.equal((await hostile.command('RCPT TO:<x@elsewhere.example>')).text, '554 5.7.1 relay denied');
  await hostile.quit();
});

test('a script cannot read what the last regular expression of another client\'s call matched', async () => {
  const victim = await session();
  assert.match((await victim.command('RCPT TO:<carol@example.com>')).text, /^250 /);
  const hostile = await SmtpTestClient.connect(server.port('mx'));
  await hostile.read();
  const reply = await hostile.command('EHLO leak.example');
  assert.doesNotMatch(reply.text, /carol|example\.com/, reply.text);
  assert.match(reply.text, /^5\d\d .*seen: - - - - - -$/);
  await hostile.quit();
  await victim.quit();
});
