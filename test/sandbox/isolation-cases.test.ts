// What the sandbox keeps apart and hands over: containment, calls across scripts, isolation between clients,
// resizable buffers, shared connections, the runner's internals, host work, the verdicts' matrix, fast delivery and
// the longest time limit. One file for what were several (one test process and one load of the engine instead of one
// each), each its own describe with its own servers, as before.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, createHmac } from 'node:crypto';
import { Sandbox, ScriptFailure } from '../../engine/sandbox/index.ts';
import { js, recordingHost, SCRIPT_DIR, authContext } from '../helpers/sandbox-fixtures.ts';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient, openTransaction } from '../helpers/smtp-client.ts';
import { withSandbox } from '../helpers/sandbox.ts';
import { connectionKey } from '../../engine/smtp/script-context.ts';
import type { ConnectionInfo } from '../../engine/sandbox/api/index.ts';
import { startDnsServer, type TestDnsServer } from '../helpers/dns-server.ts';
import { until } from '../helpers/wait.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { slotEntries } from '../../engine/sandbox/isolate-slot.ts';
import { MemoryCounterStore } from '../../engine/store/index.ts';
import { heldStore } from './helpers/held-store.ts';

describe('containment', () => {
  /**
   * Fail closed is the host's invariant: a script that patches builtins in the shared context, or returns a
   * hostile object, can break only its own call. Other calls on the same isolate keep their exact verdicts
   * and failures, on the fast path, in batches and on isolate threads.
   */
  /** Each patch runs in the `helo` script's call; whether that call itself fails does not matter. */
  const PATCHES: Record<string, string> = {
    'Object.prototype.toJSON': 'Object.prototype.toJSON = function () { return { ok: true }; };',
    'Array.prototype.toJSON': 'Array.prototype.toJSON = function () { return []; };',
    'JSON.stringify and JSON.parse': 'JSON.stringify = () => \'{"ok":true}\'; JSON.parse = () => ({ ok: true });',
    'Array.prototype methods and iterator': `
    Array.prototype.push = function () { return 0; }; Array.prototype.pop = function () {};
    Array.prototype.includes = () => { throw new Error('patched'); }; Array.prototype.join = () => '';
    Array.prototype[Symbol.iterator] = function* () { yield 'helo'; yield {}; };`,
    'Array.prototype index setters': `
    for (let i = 0; i < 40; i++) Object.defineProperty(Array.prototype, i, { set() {}, get() { return undefined; }, configurable: true });`,
    'Object.prototype setters and getters': `
    for (const k of ['connection', 'recipient', 'ok', 'value', 'verdict', 'outcome', 'logs', 'error', 'code', 'enhanced', 'text'])
      Object.defineProperty(Object.prototype, k, { __proto__: null, set() {}, get() { return k === 'verdict' ? 'accept' : undefined; }, configurable: true });`,
    'Promise.prototype.then': 'Promise.prototype.then = function (ok) { ok({ verdict: "accept" }); };',
    'Promise species': 'Object.defineProperty(Promise, Symbol.species, { get() { return class extends Promise {}; } });',
    'Object.prototype.then': 'Object.prototype.then = function (ok) { ok({ verdict: "accept" }); };',
    'Object.prototype.then (defineProperty)': 'Object.defineProperty(Object.prototype, "then", { value(ok) { ok({ verdict: "accept" }); } });',
    'Function.prototype.call and apply': 'Function.prototype.call = function () { return { verdict: "accept" }; }; Function.prototype.apply = Function.prototype.call; Reflect.apply = Function.prototype.call;',
    'Symbol.toPrimitive and toString': 'Object.prototype[Symbol.toPrimitive] = () => "accept"; Object.prototype.toString = () => "accept"; String.prototype.toJSON = () => "accept";',
    'Error.prepareStackTrace': 'Error.prepareStackTrace = () => { throw new Error("no stack for you"); };',
    'Error[Symbol.hasInstance] and Error.prototype': 'Object.defineProperty(Error, Symbol.hasInstance, { value: () => false }); Object.defineProperty(Error.prototype, "message", { get() { return ""; } });',
    'RegExp and String methods': `
    RegExp.prototype.exec = () => null; RegExp.prototype.test = () => false;
    String.prototype.slice = () => ''; String.prototype.charCodeAt = () => 0; String.prototype.startsWith = () => false;`,
    'Object.keys and getPrototypeOf': 'Object.keys = () => []; Object.getPrototypeOf = () => null; Object.create = () => ({}); Object.freeze = (o) => o;',
  };

  const RCPTTO = `export default function (ctx) {
  if (ctx.mode === 'throw') throw new Error('rcptto broke');
  if (ctx.mode === 'async-throw') return (async () => { await null; throw new Error('rcptto broke later'); })();
  if (ctx.mode === 'async') return (async () => { await null; return reject('no ' + ctx.recipient); })();
  if (ctx.mode === 'class') return new Map();
  log('x'.repeat(9000), { a: [1, 2] });
  return reject('no ' + ctx.recipient + ' from ' + ctx.connection.remoteAddress, { code: 551, enhanced: '5.1.1' });
}`;

  async function checkOthers(sandbox: Sandbox, label: string): Promise<void> {
    const connection = { remoteAddress: '192.0.2.9' };
    const isFailure = (e: unknown): boolean => e instanceof ScriptFailure;
    await assert.rejects(sandbox.invoke('rcptto', { connection, mode: 'throw', recipient: 'a' }, 'other'), isFailure, `${label}: a throw still fails`);
    await assert.rejects(sandbox.invoke('rcptto', { connection, mode: 'async-throw', recipient: 'a' }, 'other'), isFailure, `${label}: an async throw still fails`);
    await assert.rejects(sandbox.invoke('rcptto', { connection, mode: 'class', recipient: 'a' }, 'other'), isFailure, `${label}: a Map still fails`);
    assert.deepEqual(await sandbox.invoke('rcptto', { connection, mode: 'sync', recipient: 'b' }, 'other'),
      { verdict: 'reject', text: 'no b from 192.0.2.9', code: 551, enhanced: '5.1.1' }, `${label}: a verdict and its context are intact`);
    assert.deepEqual(await sandbox.invoke('rcptto', { connection, mode: 'async', recipient: 'c' }, 'other'),
      { verdict: 'reject', text: 'no c' }, `${label}: an async verdict is intact`);
    // Several in one batch (fast path): every entry keeps its own outcome.
    const batch = await Promise.allSettled([
      sandbox.invoke('rcptto', { connection, mode: 'throw', recipient: 'd' }, 'o1'),
      sandbox.invoke('rcptto', { connection, mode: 'sync', recipient: 'e' }, 'o2'),
      sandbox.invoke('rcptto', { connection, mode: 'throw', recipient: 'f' }, 'o3'),
    ]);
    assert.deepEqual(batch.map((r) => (r.status === 'fulfilled' ? r.value : r.reason instanceof ScriptFailure ? 'failure' : String(r.reason))),
      ['failure', { verdict: 'reject', text: 'no e from 192.0.2.9', code: 551, enhanced: '5.1.1' }, 'failure'], `${label}: a batch keeps each outcome`);
  }

  for (const fastPathMs of [5, 0]) {
    for (const [label, patch] of Object.entries(PATCHES)) {
      test(`a script patching ${label} breaks no other call (fastPathMs ${fastPathMs})`, async () => {
        const sandbox = await Sandbox.create({
          host: recordingHost(),
          isolates: 1, // one context: the patch and the other calls share it
          fastPathMs,
          timeoutMs: 2000, // the point here is containment, not timing
          scripts: [js('helo', `export default function () { ${patch} return accept(); }`), js('rcptto', RCPTTO)],
        });
        try {
          await sandbox.invoke('helo', {}, 'patcher').catch(() => {});
          await checkOthers(sandbox, label);
          assert.equal((await sandbox.stats()).rebuilds, 0, 'the checks ran in the patched context');
        } finally {
          await sandbox.dispose();
        }
      });
    }
  }

  test('a patch at the top level of one script breaks no other script', async () => {
    const sandbox = await Sandbox.create({
      host: recordingHost(),
      isolates: 1,
      scripts: [
        js('helo', `try { ${Object.values(PATCHES).join('\n} catch {}\ntry {')} } catch {}\nexport default () => accept();`),
        js('rcptto', RCPTTO),
      ],
    });
    try {
      await checkOthers(sandbox, 'top level');
    } finally {
      await sandbox.dispose();
    }
  });

  test('hostile verdict objects: each read once, copied as data, or the call fails', async () => {
    const sandbox = await Sandbox.create({
      host: recordingHost(),
      isolates: 1,
      timeoutMs: 2000,
      scripts: [js('rcptto', `let n = 0;
      export default function (ctx) {
        switch (ctx.mode) {
          case 'getter': return { get verdict() { return n++ === 0 ? 'reject' : 'accept'; }, text: 'got' };
          case 'throwing getter': return { get verdict() { throw new Error('gotcha'); } };
          case 'proxy': return new Proxy({}, { ownKeys: () => ['verdict'], getOwnPropertyDescriptor: () => ({ value: 'reject', enumerable: true, configurable: true }), get: () => 'reject' });
          case 'proxy that throws': return new Proxy({}, { ownKeys() { throw new Error('no keys'); } });
          case 'toPrimitive': return { verdict: 'reject', text: { [Symbol.toPrimitive]: () => 'hidden', toString: () => 'hidden' } };
          case 'huge string': return { verdict: 'reject', enhanced: 'x'.repeat(5_000_000) };
          case 'long text': return reject('x'.repeat(100_000));
          case 'huge text': return reject('x'.repeat(5_000_000));
          case 'deep recursion': { const f = (i) => f(i + 1) + 1; return f(0); }
          case 'deep value': { let v = {}; for (let i = 0; i < 100; i++) v = { v }; return v; }
          case 'bigint': return { verdict: 'reject', text: 10n };
          default: return reject('ordinary');
        }
      }`)],
    });
    try {
      const outcome = async (mode: string): Promise<unknown> => {
        try {
          return await sandbox.invoke('rcptto', { mode }, 'c');
        } catch (e) {
          assert.ok(e instanceof ScriptFailure, String(e));
          return 'failure';
        }
      };
      assert.deepEqual(await outcome('getter'), { verdict: 'reject', text: 'got' }, 'the getter was read once');
      assert.equal(await outcome('throwing getter'), 'failure');
      assert.deepEqual(await outcome('proxy'), { verdict: 'reject' });
      assert.equal(await outcome('proxy that throws'), 'failure');
      assert.deepEqual(await outcome('toPrimitive'), 'failure', 'an object where a string belongs is not converted');
      assert.equal(await outcome('huge string'), 'failure');
      // A verdict's text is cut as it leaves (a reply keeps 400 bytes of it): the reject stands; past 1 MiB it is refused.
      assert.deepEqual(await outcome('long text'), { verdict: 'reject', text: 'x'.repeat(1000) });
      assert.equal(await outcome('huge text'), 'failure');
      assert.equal(await outcome('deep recursion'), 'failure');
      assert.equal(await outcome('deep value'), 'failure');
      assert.equal(await outcome('bigint'), 'failure');
      assert.deepEqual(await outcome('ordinary'), { verdict: 'reject', text: 'ordinary' });
      assert.equal((await sandbox.stats()).rebuilds, 0);
    } finally {
      await sandbox.dispose();
    }
  });

  test('hashing helpers take at most 1 MiB per call of a helper (hashing holds the event loop)', async () => {
    const sandbox = await Sandbox.create({
      host: recordingHost(),
      isolates: 1,
      timeoutMs: 2000,
      scripts: [js('data', `export default (ctx) => {
      const data = 'x'.repeat(ctx.size);
      return accept({ text: ctx.fn === 'hmac' ? hmac('sha256', 'k', data) : sha256(data) });
    }`)],
    });
    try {
      const ok = await sandbox.invoke('data', { size: 2 ** 20, fn: 'sha256' }, 'c') as { text: string };
      assert.equal(ok.text.length, 64);
      for (const fn of ['sha256', 'hmac']) {
        await assert.rejects(sandbox.invoke('data', { size: 10 * 2 ** 20, fn }, 'c'), (e) => {
          assert.ok(e instanceof ScriptFailure && e.kind === 'error', String(e));
          assert.match(e.message, new RegExp(`${fn}\\(\\): data is longer than 1048576 characters`));
          assert.equal(e.line, 3, 'where the script called it');
          return true;
        });
      }
    } finally {
      await sandbox.dispose();
    }
  });
});

describe('cross-script', () => {
  /**
   * One script cannot change how another decides, nor read what another call saw, over real SMTP sockets:
   * every script of a folder shares one context per isolate, so a hostile `helo` script that could patch a
   * builtin (`Array.prototype.includes = () => true`) or pollute Object.prototype would turn the `rcptto`
   * script's relay refusal into an accept for every other client — an open relay.
   */
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
});

describe('isolation', () => {
  /** What a script can reach: a copy of its context, the helper globals, and nothing of the host. */
  test('the context is a copy: mutations in the script never reach the host object', async () => {
    await withSandbox({
      host: recordingHost(),
      isolates: 1,
      scripts: [js('helo', `export default function (ctx) {
      const before = ctx.helo.name;
      ctx.helo.name = 'changed'; ctx.list.push(99); ctx.added = true;
      return { before, after: ctx };
    }`)],
    }, async (sandbox) => {
      const ctx = { helo: { name: 'client.example', command: 'EHLO' }, list: [1] };
      const first = await sandbox.invoke('helo', ctx, 'c1') as { before: string; after: typeof ctx & { added: boolean } };
      assert.deepEqual(ctx, { helo: { name: 'client.example', command: 'EHLO' }, list: [1] }, 'host object untouched');
      assert.equal(first.after.helo.name, 'changed');
      assert.deepEqual(first.after.list, [1, 99]);
      assert.notEqual(first.after, ctx);
      first.after.helo.name = 'host-side edit';
      const second = await sandbox.invoke('helo', ctx, 'c1') as { before: string };
      assert.equal(second.before, 'client.example', 'each call gets a fresh copy');
    });
  });

  test('no host capabilities in scope: process, require, timers, fetch, Buffer …', async () => {
    await withSandbox({
      host: recordingHost(),
      scripts: [
        js('connect', `export default function () {
        const names = ['process', 'require', 'module', 'Buffer', 'setTimeout', 'setInterval', 'setImmediate',
          'clearTimeout', 'fetch', 'XMLHttpRequest', 'WebSocket', 'WebAssembly', 'SharedArrayBuffer', 'Atomics',
          'FinalizationRegistry', 'console', 'global', 'navigator', 'performance', 'structuredClone', 'Intl'];
        const found = {};
        for (const n of names) found[n] = typeof globalThis[n];
        found.viaFunction = Function('return typeof process')();
        found.helpers = ['sha1', 'sha256', 'md5', 'hmac', 'lookup', 'log', 'accept', 'reject', 'defer', 'deliver'].map((n) => typeof globalThis[n]);
        found.promise = typeof Promise;
        return found;
      }`),
        js('helo', 'export default async function () { return await import("node:fs"); }'),
        js('auth', 'export default function () { globalThis.accept = () => ({ verdict: "accept" }); }'),
      ],
    }, async (sandbox) => {
      const found = await sandbox.invoke('connect', {}, 'c1') as Record<string, unknown>;
      const { helpers, promise, ...rest } = found;
      for (const [name, type] of Object.entries(rest)) assert.equal(type, 'undefined', `${name} must not exist`);
      assert.deepEqual(helpers, Array(10).fill('function'));
      assert.equal(promise, 'function');
      await assert.rejects(sandbox.invoke('helo', {}, 'c1'), (e: unknown) => e instanceof ScriptFailure && e.kind === 'error');
      // Helpers are read-only: one script cannot swap accept() for another.
      await assert.rejects(sandbox.invoke('auth', {}, 'c1'), /TypeError: Cannot assign to read only property 'accept'/);
    });
  });

  test('hash helpers are computed by the host with node:crypto', async () => {
    await withSandbox({
      host: recordingHost(),
      scripts: [js('data', `export default function (ctx) {
      return { sha1: sha1(ctx.s), sha256: sha256(ctx.s), md5: md5(ctx.s), hmac: hmac('sha512', ctx.k, ctx.s) };
    }`)],
    }, async (sandbox) => {
      const s = 'grüße, wörld';
      const hex = (alg: string) => createHash(alg).update(s).digest('hex');
      assert.deepEqual(await sandbox.invoke('data', { s, k: 'secret' }, null), {
        sha1: hex('sha1'), sha256: hex('sha256'), md5: hex('md5'),
        hmac: createHmac('sha512', 'secret').update(s).digest('hex'),
      });
    });
  });

  test('lookup and log reach the host, tagged with the connection id and script file', async () => {
    const host = recordingHost({ tls_fingerprints: { abc123: 'alice' } });
    await withSandbox({
      host,
      scripts: [js('auth', `log('loaded');
      export default function (ctx) {
        const user = lookup('tls_fingerprints', ctx.fp);
        log('user', user, { n: 1 }, [1, 2], new TypeError('shown'), undefined, 5n);
        return user === null ? reject('unknown') : accept({ username: user });
      }`)],
      isolates: 1,
    }, async (sandbox) => {
      assert.deepEqual(host.logs, [{ connectionId: null, file: `${SCRIPT_DIR}/auth.js`, level: 'info', message: 'loaded' }],
        'top-level log lines have no connection');
      assert.deepEqual(await sandbox.invoke('auth', { fp: 'abc123' }, 'conn-1'), { verdict: 'accept', username: 'alice' });
      assert.deepEqual(await sandbox.invoke('auth', { fp: 'nope' }, 'conn-2'), { verdict: 'reject', text: 'unknown' });
      assert.deepEqual(host.lookups, [['tls_fingerprints', 'abc123'], ['tls_fingerprints', 'nope']]);
      assert.deepEqual(host.logs.slice(1), [
        { connectionId: 'conn-1', file: `${SCRIPT_DIR}/auth.js`, level: 'info', message: 'user alice {"n":1} [1,2] TypeError: shown undefined 5n' },
        { connectionId: 'conn-2', file: `${SCRIPT_DIR}/auth.js`, level: 'info', message: 'user null {"n":1} [1,2] TypeError: shown undefined 5n' },
      ]);
    });
  });

  test('log() prints [circular] for an object inside itself only, not for one shared, and in linear time', async () => {
    const host = recordingHost();
    await withSandbox({
      host,
      isolates: 1,
      // A guard only: the log of 200,000 objects takes milliseconds; the check against every object seen took minutes.
      timeoutMs: 30_000,
      scripts: [js('helo', `export default function (ctx) {
      const a = { x: 1 };
      const self = { a, list: [a, a] };
      self.me = self;
      self.list.push(self.list);
      log({ p: a, q: a }, self);
      const many = [];
      for (let i = 0; i < ctx.n; i++) many.push({ i });
      log(many);
      return accept();
    }`)],
    }, async (sandbox) => {
      await sandbox.invoke('helo', { n: 200_000 }, 'c1');
      const lines = host.logs.map((l) => l.message);
      assert.equal(lines[0], '{"p":{"x":1},"q":{"x":1}} {"a":{"x":1},"list":[{"x":1},{"x":1},"[circular]"],"me":"[circular]"}');
      assert.match(lines[1]!, /^\[\{"i":0\},\{"i":1\},/);
    });
  });

  test('an isolate remembers lookup answers (tables belong to a generation); a failed lookup is asked again', async () => {
    let failNext = 0;
    const host = recordingHost({ t: { a: 'one' } });
    const lookup = host.lookup.bind(host);
    host.lookup = (table, key) => {
      if (key === 'flaky' && failNext-- > 0) throw new Error('backend down');
      return lookup(table, key);
    };
    await withSandbox({
      // On an isolate thread, with time to spare: a fast-path attempt stopped on a loaded machine runs again, and its
      // lookups with it (the failed one is then asked again before this test can see it fail).
      host, isolates: 1, fastPathMs: 0, timeoutMs: 30_000,
      scripts: [js('rcptto', `export default (ctx) => reject(String(lookup('t', ctx.k)) + '/' + String(lookup('t', ctx.k)))`)],
    }, async (sandbox) => {
      for (let i = 0; i < 3; i++) assert.deepEqual(await sandbox.invoke('rcptto', { k: 'a' }, 'c1'), { verdict: 'reject', text: 'one/one' });
      assert.deepEqual(await sandbox.invoke('rcptto', { k: 'missing' }, 'c1'), { verdict: 'reject', text: 'null/null' });
      assert.deepEqual(host.lookups, [['t', 'a'], ['t', 'missing']], 'each key crossed to the host once');
      failNext = 1;
      await assert.rejects(sandbox.invoke('rcptto', { k: 'flaky' }, 'c1'), /backend down/);
      assert.deepEqual(await sandbox.invoke('rcptto', { k: 'flaky' }, 'c1'), { verdict: 'reject', text: 'null/null' });
      assert.deepEqual(host.lookups.slice(2), [['t', 'flaky']], 'the failed lookup was asked again');
    });
  });

  test('a return value that cannot be copied out is a ScriptFailure', async () => {
    await withSandbox({
      host: recordingHost(),
      scripts: [js('rcptto', `export default async function (ctx) {
      if (ctx.what === 'function') return () => 1;
      if (ctx.what === 'nested') return { verdict: 'accept', extra: { when: new Date(0) } };
      if (ctx.what === 'cycle') { const o = { verdict: 'accept' }; o.self = o; return o; }
      return { verdict: 'accept', username: Symbol('x') };
    }`)],
    }, async (sandbox) => {
      const expect = async (what: string, message: RegExp) => {
        await assert.rejects(sandbox.invoke('rcptto', { what }, 'c1'), (e: unknown) => {
          assert.ok(e instanceof ScriptFailure && e.kind === 'error', String(e));
          assert.match(e.message, message);
          return true;
        });
      };
      await expect('function', /cannot be copied out of the sandbox: function at result/);
      await expect('nested', /Date object at result\.extra\.when/);
      await expect('cycle', /circular reference at result\.self/);
      await expect('symbol', /symbol at result\.username/);
    });
  });

  test('a failing lookup fails the call closed; a failing logger does not', async () => {
    await withSandbox({
      host: {
        lookup() { throw new Error('table backend unavailable'); },
        log() { throw new Error('log sink full'); },
      },
      scripts: [
        js('auth', 'export default (ctx) => accept({ username: lookup("users", ctx.u) ?? "nobody" });'),
        js('helo', 'export default () => { log("hello"); return accept(); };'),
      ],
    }, async (sandbox) => {
      await assert.rejects(sandbox.invoke('auth', { u: 'alice' }, 'c1'), (e: unknown) => {
        assert.ok(e instanceof ScriptFailure && e.kind === 'error');
        assert.match(e.message, /table backend unavailable/);
        assert.equal(e.line, 1);
        return true;
      });
      assert.deepEqual(await sandbox.invoke('helo', {}, 'c1'), { verdict: 'accept' });
    });
  });
});

describe('resizable-buffers', () => {
  /**
   * An isolate's memory limit (sandbox.memoryLimitMb) holds for ArrayBuffers too, over real SMTP: isolated-vm
   * enforces it through V8's ArrayBuffer allocator, which a resizable buffer bypassed — a call grew one to
   * 64 MB in a 32 MB isolate, filled it and kept it, and was answered 250. Resizable buffers do not exist in
   * the sandbox: such a call fails closed; fixed-length buffers, their subclasses and slices work as before.
   *
   * Likewise Intl objects, which hold ICU memory outside V8's heap: a Segments object (`segmenter.segment(text)`)
   * keeps its own UTF-16 copy of the text — a 32 MB isolate kept 1.6 GB of them over ten 100 ms calls with its heap
   * at 5 MB (3.2 GB with their iterators) — and a DateTimeFormat ~30 KB. Intl does not exist in the sandbox; the
   * locale-sensitive methods of strings, numbers and dates still work (their ICU objects live for the call only).
   */
  const FAIL_CLOSED = '451 4.3.0 Temporary policy failure, try again later';

  // A long time limit: on the old code the 64 MB fill must finish (and be answered 250), however loaded the machine.
  const CONFIG = `
localDomains: [example.com]
sandbox: { timeoutMs: 10000, memoryLimitMb: 32, isolates: 1 }
listeners:
  - name: mx
    listen: 127.0.0.1:0
    limits: { greetingDelayMs: 0 }
`;

  const SCRIPTS = {
    'rcptto.js': `const kept = [];
  class Chunk extends ArrayBuffer {}
  const text = 'x'.repeat(2 ** 20); // 1 MB in the heap, once
  export default function (ctx) {
    const local = ctx.address.localPart;
    // 48 MB of native copies of the text, past the 32 MB limit, kept for good.
    if (local === 'segments') for (let i = 0; i < 24; i++) kept.push(new Intl.Segmenter().segment(text));
    if (local === 'formats') for (let i = 0; i < 100; i++) kept.push(new Intl.DateTimeFormat('en', { timeZone: 'Asia/Tokyo' }));
    if (local === 'locale') {
      const when = new Date(Date.UTC(2026, 0, 2, 3, 4, 5)).toLocaleString('en-GB', { timeZone: 'UTC' });
      if (when !== '02/01/2026, 03:04:05') throw new Error('toLocaleString: ' + when);
      if ((1234.5).toLocaleString('de-DE') !== '1.234,5' || 'a'.localeCompare('B', 'en', { sensitivity: 'base' }) !== -1) throw new Error('locale methods');
      if ('I'.toLocaleLowerCase('tr') !== 'ı') throw new Error('toLocaleLowerCase');
    }
    if (local === 'grow') {
      const b = new ArrayBuffer(1, { maxByteLength: 2 ** 30 });
      b.resize(64 * 2 ** 20);
      new Uint8Array(b).fill(1);
      kept.push(b);
    }
    if (local === 'big') kept.push(new ArrayBuffer(64 * 2 ** 20, { maxByteLength: 64 * 2 ** 20 }));
    if (local === 'subclass') kept.push(new Chunk(1, { maxByteLength: 2 ** 30 }));
    if (local === 'fixed') {
      const b = new ArrayBuffer(16);
      new Uint8Array(b).set([1, 2, 3], 0);
      const c = new Chunk(8).slice(2);
      if (b.resizable || !(c instanceof Chunk) || c.byteLength !== 6 || new Uint8Array(b.slice(1))[0] !== 2) throw new Error('broken buffers');
      if (b.transfer(32).byteLength !== 32 || !ArrayBuffer.isView(new DataView(new ArrayBuffer(4)))) throw new Error('broken buffers');
    }
  }`,
  };

  let server: TestServer;
  before(async () => { server = await startTestServer({ config: CONFIG, scripts: SCRIPTS }); });
  after(async () => { await server.stop(); });

  async function rcpt(local: string): Promise<string> {
    const c = await openTransaction(server.port('mx'));
    try {
      return (await c.command(`RCPT TO:<${local}@example.com>`)).text;
    } finally {
      await c.quit();
    }
  }

  test('a call that makes a resizable ArrayBuffer (to grow past the memory limit) fails closed, naming why', async () => {
    for (const local of ['grow', 'big', 'subclass']) {
      assert.equal(await rcpt(local), FAIL_CLOSED, local);
    }
    const failures = server.logs.filter((l) => String(l.msg).startsWith('policy script rcptto failed'));
    assert.equal(failures.length, 3, JSON.stringify(failures));
    for (const l of failures) assert.match(String(l.err), /resizable buffers \(maxByteLength\) are not available/);
  });

  test('fixed-length ArrayBuffers, subclasses, slices and transfers work as before', async () => {
    assert.match(await rcpt('fixed'), /^250 /);
    assert.match(await rcpt('someone'), /^250 /);
  });

  test('a call that keeps Intl objects (ICU memory outside the isolate\'s limit) fails closed, naming why', async () => {
    const before = server.logs.length;
    for (const local of ['segments', 'formats']) {
      assert.equal(await rcpt(local), FAIL_CLOSED, local);
    }
    const failures = server.logs.slice(before).filter((l) => String(l.msg).startsWith('policy script rcptto failed'));
    assert.equal(failures.length, 2, JSON.stringify(failures));
    for (const l of failures) assert.match(String(l.err), /Intl is not defined/);
  });

  test('locale-sensitive methods of dates, numbers and strings work as before', async () => {
    assert.match(await rcpt('locale'), /^250 /);
  });
});

describe('shared-connection', () => {
  /**
   * Connection facts cross into an isolate once per connection key: scripts see them frozen, see every
   * change (a new key), and an isolate that has kept too many forgets them and is sent them again.
   */
  /** The facts as the host builds them, before they are frozen for a script. */
  type Writable<T> = { -readonly [K in keyof T]: T[K] };
  const sample = (): Writable<ConnectionInfo> => authContext().connection;

  test('the connection key changes with every fact that can change within a connection', () => {
    // Fixed for the life of a connection, so its id stands for them.
    const fixedById = new Set(['id', 'source', 'remoteAddress', 'remotePort', 'localAddress', 'localPort', 'listener']);
    const changes: Record<string, (c: Writable<ConnectionInfo>) => void> = {
      helo: (c) => { c.helo = 'other.example'; },
      auth: (c) => { c.auth = { username: 'alice', mechanism: 'EXTERNAL' }; },
      tls: (c) => { c.tls = { ...c.tls!, sni: 'other.example' }; },
      clientCertificate: (c) => { c.clientCertificate = { ...c.clientCertificate!, verified: false, verifyError: 'revoked' }; },
      certificateIdentity: (c) => { c.certificateIdentity = 'bob'; },
    };
    for (const field of Object.keys(sample())) {
      if (fixedById.has(field)) continue;
      assert.ok(changes[field], `connectionKey() must cover the new ConnectionInfo field "${field}"`);
      const changed = sample();
      changes[field]!(changed);
      assert.notEqual(connectionKey(changed), connectionKey(sample()), field);
    }
    const other = sample();
    other.id = 'another';
    assert.notEqual(connectionKey(other), connectionKey(sample()));
    assert.equal(connectionKey(sample()), connectionKey(sample()));
  });

  test('scripts see the kept facts, frozen, and the new ones once the key changes', async () => {
    await withSandbox({
      host: recordingHost(),
      isolates: 1,
      // A call stopped by the fast path's limit (a busy machine) legitimately makes the host send the facts
      // again, which this test would take for a failure to keep them; 50 ms makes that vanishingly rare.
      fastPathMs: 50,
      scripts: [
        js('mailfrom', 'export default (ctx) => accept({ text: `${ctx.connection.helo} ${ctx.connection.clientCertificate.subject.CN} ${ctx.address}` })'),
        js('rcptto', 'export default (ctx) => { ctx.connection.helo = "changed"; }'),
        js('data', 'export default (ctx) => accept({ text: Object.keys(ctx).join(",") })'),
      ],
    }, async (sandbox) => {
      const c = sample();
      const key = connectionKey(c);
      assert.deepEqual(await sandbox.invoke('mailfrom', { connection: c, address: 'a' }, 'c1', key), { verdict: 'accept', text: 'laptop.example.com alice a' });
      // Same key: the host's object is not even looked at again.
      assert.deepEqual(await sandbox.invoke('mailfrom', { connection: { ...c, helo: 'ignored' }, address: 'b' }, 'c1', key), { verdict: 'accept', text: 'laptop.example.com alice b' });
      await assert.rejects(sandbox.invoke('rcptto', { connection: c }, 'c1', key), (e) => e instanceof ScriptFailure && /read.only|Cannot assign/.test(e.message));
      const renamed = { ...c, helo: 'renamed.example' };
      assert.deepEqual(await sandbox.invoke('mailfrom', { connection: renamed, address: 'c' }, 'c1', connectionKey(renamed)), { verdict: 'accept', text: 'renamed.example alice c' });
      assert.deepEqual(await sandbox.invoke('data', { connection: c, transaction: {}, data: {} }, 'c1', key), { verdict: 'accept', text: 'connection,transaction,data' });
      // Without a key the context crosses whole, as always.
      assert.deepEqual(await sandbox.invoke('mailfrom', { connection: { ...c, helo: 'whole' }, address: 'd' }, 'c1'), { verdict: 'accept', text: 'whole alice d' });
    });
  });

  test('an isolate that kept many connections forgets them and is sent them again', async () => {
    await withSandbox({ host: recordingHost(), isolates: 1, scripts: [js('helo', 'export default (ctx) => accept({ text: ctx.connection.id })')] }, async (sandbox) => {
      for (let i = 0; i < 600; i++) {
        const c = { ...sample(), id: `conn-${i % 300}` };
        assert.deepEqual(await sandbox.invoke('helo', { connection: c }, c.id, connectionKey(c)), { verdict: 'accept', text: c.id });
      }
      const heap = (await sandbox.stats()).isolates[0]!.heapUsedBytes!;
      assert.ok(heap < 8 * 1024 * 1024, `isolate heap ${heap} bytes`);
    });
  });

  test('a client certificate crosses once per isolate; a different chain verdict is a different certificate', async () => {
    await withSandbox({
      host: recordingHost(),
      isolates: 1,
      scripts: [js('helo', 'export default (ctx) => { const c = ctx.connection.clientCertificate; return accept({ text: c ? `${ctx.connection.id} ${c.subject.CN} ${c.verified} ${c.verifyError} ${Object.isFrozen(c)} ${c.pem.length}` : `${ctx.connection.id} none` }); }')],
    }, async (sandbox) => {
      const base = sample();
      const pemLength = base.clientCertificate!.pem!.length;
      for (let i = 0; i < 300; i++) { // past the number of kept certificates: forgotten and sent again
        const c = { ...base, id: `c${i}`, clientCertificate: { ...base.clientCertificate!, fingerprint: { ...base.clientCertificate!.fingerprint, sha256: String(i % 150).padStart(64, '0') } } };
        assert.deepEqual(await sandbox.invoke('helo', { connection: c }, c.id), { verdict: 'accept', text: `c${i} alice true null true ${pemLength}` });
      }
      const revoked = { ...base, id: 'r', clientCertificate: { ...base.clientCertificate!, verified: false, verifyError: 'revoked' as const, verifyErrorCode: 'CERT_REVOKED' } };
      assert.deepEqual(await sandbox.invoke('helo', { connection: revoked }, 'r'), { verdict: 'accept', text: `r alice false revoked true ${pemLength}` });
      assert.deepEqual(await sandbox.invoke('helo', { connection: { ...base, id: 'n', clientCertificate: null } }, 'n'), { verdict: 'accept', text: 'n none' });
      assert.deepEqual(await sandbox.invoke('helo', { connection: base }, 'again'), { verdict: 'accept', text: `${base.id} alice true null true ${pemLength}` });
    });
  });
});

describe('runner-internals', () => {
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
});

describe('host-work', () => {
  /**
   * Work a script makes the server's own thread do stays bounded per call, over real SMTP sockets: each
   * helper's input is copied out of the isolate and handled on the event-loop thread, which no time limit
   * interrupts, so a helper given a huge input (or called for huge output) would hold every connection.
   */
  const CONFIG = `
localDomains: [example.com]
sandbox: { timeoutMs: 2000, isolates: 1 }
tables: { users: ./users }
listeners:
  - name: mx
    listen: 127.0.0.1:0
    limits: { greetingDelayMs: 0 }
`;

  const SCRIPTS: Record<string, string> = {
    // A top level runs once per isolate, within its own time limit: it may look up more than a call may.
    'rcptto.ts': `const known = new Set();
  for (let i = 0; i < 600; i++) if (lookup('users', 'top' + i) !== null) known.add(i);
  export default async function (ctx) {
    const local = ctx.address.localPart;
    if (local === 'huge-key') {
      const key = 'A'.repeat(1 << 22);
      try { lookup('users', key); return reject('looked up'); } catch (e) { return reject(e.message); }
    }
    if (local === 'hash-flood' || local === 'hash-some') {
      const data = 'x'.repeat(1 << 20);
      try {
        for (let i = 0; i < (local === 'hash-flood' ? 64 : 3); i++) sha256(data);
        return reject('hashed');
      } catch (e) { return reject(e.message); }
    }
    if (local === 'lookup-flood' || local === 'lookup-some' || local === 'empty-hash-flood') {
      // New keys each time: the isolate remembers answers, so each one is a call to the server's thread.
      try {
        for (let i = 0; i < (local === 'lookup-some' ? 400 : 1e9); i++) {
          if (local === 'empty-hash-flood') sha256('');
          else lookup('users', 'k' + i);
        }
        return reject('looked up');
      } catch (e) { return reject(e.message); }
    }
    if (local === 'lookup-long-keys') {
      const long = 'k'.repeat(60000);
      try { for (let i = 0; i < 1e9; i++) lookup('users', long + i); } catch (e) { return reject(e.message); }
    }
    if (local === 'ops-flood' || local === 'ops-some') {
      try {
        for (let i = 0; i < (local === 'ops-some' ? 150 : 250); i++) await rate('ops-' + i, 10, 60);
        return reject('counted');
      } catch (e) { return reject(e.message); }
    }
    if (local === 'log-most') {
      const line = 'z'.repeat(250);
      for (let i = 0; i < 1000; i++) log(line);
      return;
    }
    if (local === 'log-flood') {
      const line = 'x'.repeat(8192);
      for (let i = 0; i < 1000; i++) log(ctx.address.address, line);
      return;
    }
    if (lookup('users', local) !== 'ok') return reject('no such user', { code: 550, enhanced: '5.1.1' });
  }`,
  };

  SCRIPTS['data.ts'] = `export default async (ctx) => {
  const subject = ctx.data.headers.find(([n]) => n === 'Subject')?.[1];
  const reads = subject === 'many' ? 64 : subject === 'bytes' ? 1e9 : 4;
  let n = 0;
  try {
    for (let i = 0; i < reads; i++) n += (await ctx.message.text(subject === 'bytes' ? 1 : 1 << 20)).length;
  } catch (e) { return reject(e.message); }
  return accept({ text: 'read ' + n });
}`;

  let server: TestServer;
  before(async () => { server = await startTestServer({ config: CONFIG, scripts: SCRIPTS, files: { users: 'bob ok\n' } }); });
  after(async () => { await server.stop(); });

  async function rcpt(address: string): Promise<string> {
    const c = await SmtpTestClient.connect(server.port('mx'));
    try {
      await c.hello();
      assert.match((await c.command('MAIL FROM:<a@sender.example>')).text, /^250 /);
      return (await c.command(`RCPT TO:<${address}>`, 20_000)).text;
    } finally {
      await c.quit();
    }
  }

  test('lookup() refuses a key the server would have to fold and hash at length (a TypeError in the script)', async () => {
    assert.equal(await rcpt('huge-key@example.com'), '550 5.7.1 lookup(): table and key are longer than 65536 characters');
    assert.match(await rcpt('bob@example.com'), /^250 /);
    assert.equal(await rcpt('mallory@example.com'), '550 5.1.1 no such user');
  });

  test('what one call logs is bounded in characters, not only in lines', async () => {
    assert.match(await rcpt('log-flood@example.com'), /^250 /);
    const dropped = /further log lines of this call are dropped: more than 1000 lines or 262144 characters/;
    await until('the line saying the rest is dropped', () => server.logs.some((l) => dropped.test(String(l.msg))));
    const lines = server.logs.filter((l) => typeof l.msg === 'string' && l.msg.startsWith('log-flood@example.com '));
    const total = lines.reduce((sum, l) => sum + String(l.msg).length, 0);
    assert.ok(total <= 256 * 1024, `${lines.length} lines, ${total} characters logged by one call`);
    assert.ok(lines.length >= 31, `${lines.length} lines: those within the bound are logged`);
  });

  test('what all scripts log is bounded per second, not only per call', async () => {
    // Each call logs close to its own bound (250,000 characters): calls after calls wrote it all, a full disk in the
    // making, or a server thread waiting for a stdout pipe that cannot keep up.
    const calls = 32;
    const isLine = (l: Record<string, unknown>): boolean => typeof l.msg === 'string' && l.msg.startsWith('zzzz');
    const c = await SmtpTestClient.connect(server.port('mx'));
    await c.hello();
    assert.match((await c.command('MAIL FROM:<a@sender.example>')).text, /^250 /);
    const start = performance.now();
    for (let i = 0; i < calls; i++) assert.match((await c.command('RCPT TO:<log-most@example.com>', 20_000)).text, /^250 /);
    const seconds = (performance.now() - start) / 1000;
    await c.quit();
    const logged = server.logs.filter(isLine).reduce((sum, l) => sum + String(l.msg).length, 0);
    const perSecond = 1 << 20;
    assert.ok(logged <= perSecond * (Math.ceil(seconds) + 1), `${logged} characters logged in ${seconds.toFixed(1)} s`);
    assert.ok(logged >= 250 * 1000, `${logged} characters: lines within the budget are logged`);
    if (calls * 250_000 > perSecond * (Math.ceil(seconds) + 1)) {
      const warning = /^(\d+) script log lines \(\d+ characters\) dropped: scripts of this process may log 10000 lines and 1048576 characters a second in all/;
      await until('the warning that lines were dropped', () => server.logs.some((l) => warning.test(String(l.msg))));
      // Once the budget is spent the scripts make no more lines until the second ends, rather than lines that are
      // formatted, copied out and parsed by the server's thread only to be dropped: what is dropped in a second is
      // at most the rest of the one call that spent it (1000 lines).
      const dropped = server.logs.map((l) => warning.exec(String(l.msg))).filter((m) => m !== null).map((m) => Number(m[1]));
      assert.ok(dropped.every((n) => n <= 1000), `lines dropped per second: ${dropped.join(', ')}`);
    }
  });

  test('what one call hashes is bounded in all, not only per helper call (hashing runs on the server\'s thread)', async () => {
    // 64 MiB in 1 MiB pieces used to go through, the event loop hashing for the call's whole time limit.
    assert.equal(await rcpt('hash-flood@example.com'), '550 5.7.1 sha256(): more than 4194304 characters hashed in one call (hashing runs on the server\'s own thread)');
    assert.equal(await rcpt('hash-some@example.com'), '550 5.7.1 hashed', 'a few MiB in one call still hash');
    assert.match(await rcpt('bob@example.com'), /^250 /);
  });

  test('calls of the synchronous helpers are bounded per call in number, and lookup() keys in characters', async () => {
    // A loop of lookup() with new keys, or of sha256(''), kept the server's thread 25-50% busy for the call's whole
    // time limit, which did not stop it: the isolate was abandoned at the deadline (451), call after call.
    const calls = '550 5.7.1 lookup(): more than 500 calls of lookup(), hashing and message.text() in one call (each runs on the server\'s own thread)';
    assert.equal(await rcpt('lookup-flood@example.com'), calls);
    assert.equal(await rcpt('empty-hash-flood@example.com'), calls.replace('lookup()', 'sha256()'));
    assert.equal(await rcpt('lookup-long-keys@example.com'),
      '550 5.7.1 lookup(): more than 1048576 characters of tables and keys looked up in one call (each lookup runs on the server\'s own thread)');
    assert.equal(await rcpt('lookup-some@example.com'), '550 5.7.1 looked up', 'hundreds of lookups in one call still go through');
    assert.match(await rcpt('bob@example.com'), /^250 /);
  });

  test('host operations are bounded per call: each costs the server\'s thread, even answered at once', async () => {
    assert.equal(await rcpt('ops-flood@example.com'), '550 5.7.1 more than 200 host operations (rate(), counter(), dns.resolve(), dnsbl()) in one call');
    assert.equal(await rcpt('ops-some@example.com'), '550 5.7.1 counted', 'a hundred or so still go through');
  });

  test('what one call reads of the message body is bounded in all, not only per text() call (read and decoded on the server\'s thread)', async () => {
    const line = 'y'.repeat(998) + '\r\n';
    const body = line.repeat(1200); // 1.2 MB: a spool file of its own, each text() reads it back
    const send = async (subject: string): Promise<string> => {
      const c = await SmtpTestClient.connect(server.port('mx'));
      try {
        await c.hello();
        return (await c.sendMail('a@sender.example', ['bob@example.com'], `Subject: ${subject}\r\n\r\n${body}`)).text;
      } finally {
        await c.quit();
      }
    };
    // 64 reads of 1 MiB used to go through.
    assert.equal(await send('many'), '550 5.7.1 message.text(): more than 4194304 characters read in one call: keep what it gave');
    assert.match(await send('four'), /^250 2\.0\.0 read 4194304: queued as /);
    // And in number of reads: text(1) in a loop was 4 million calls to the server's thread.
    assert.equal(await send('bytes'), '550 5.7.1 message.text(): more than 500 calls of lookup(), hashing and message.text() in one call (each runs on the server\'s own thread)');
  });
});

describe('verdict-matrix', () => {
  // Every SMTP hook of a listener x every verdict and option the script API allows, and hostile ones, over real SMTP:
  // each reply is the one docs/scripts.md (§ Verdicts) gives, or the hook's failure reply (fail closed), and at the end
  // of data a message is spooled (and held) only when the script accepted it (and held it). One listener per hook,
  // whose script applies the case; the case is the client's address (127.0.0.<10 + its index>).
  const HOOKS = ['connect', 'helo', 'auth', 'mailfrom', 'rcptto', 'data'] as const;
  type Hook = typeof HOOKS[number];
  type Expected = string | RegExp;

  const FAILED = (h: Hook): string => (h === 'auth' ? '454 4.7.0' : '451 4.3.0') + ' Temporary policy failure, try again later';
  const REFUSED: Record<Hook, string> = {
    connect: '554 5.7.1 Connection refused by policy', helo: '550 5.7.1 HELO refused by policy', auth: '535 5.7.8 Authentication credentials invalid',
    mailfrom: '550 5.7.1 Sender refused by policy', rcptto: '550 5.7.1 Recipient refused by policy', data: '550 5.7.1 Message refused by policy',
  };
  const ACCEPTED: Record<Hook, RegExp> = {
    connect: /^220 /, helo: /^250[ -]/, auth: /^235 2\.7\.0 /, mailfrom: /^250 2\.1\.0 Accepted$/, rcptto: /^250 2\.1\.5 Accepted$/, data: /^250 2\.0\.0 Ok: queued as \w+$/,
  };
  /** The reply an accept with text gets: its text where the hook's reply carries one, else the hook's own. */
  const acceptText = (h: Hook, text: string): RegExp => ({
    mailfrom: new RegExp(`^250 2\\.1\\.0 ${text}$`), rcptto: new RegExp(`^250 2\\.1\\.5 ${text}$`), data: new RegExp(`^250 2\\.0\\.0 ${text}: queued as \\w+$`),
  } as Partial<Record<Hook, RegExp>>)[h] ?? ACCEPTED[h];

  /** [case, what the script returns, the reply in each hook, at the end of data: spooled, held]. */
  const CASES: Array<[string, string, (h: Hook) => Expected, { spooled: boolean; held?: boolean }?]> = [
    ['none', 'undefined', (h) => ACCEPTED[h], { spooled: true }],
    ['accept', 'accept()', (h) => ACCEPTED[h], { spooled: true }],
    ['accept-text', 'accept({ text: "fine\\r\\n550 5.0.0 no\\u0000" })', (h) => acceptText(h, 'fine 550 5\\.0\\.0 no '), { spooled: true }],
    ['accept-username', '({ verdict: "accept", username: "bob@example.com" })', (h) => ACCEPTED[h], { spooled: true }],
    ['hold', 'accept({ hold: "look" })', (h) => (h === 'data' ? ACCEPTED[h] : FAILED(h)), { spooled: true, held: true }],
    ['hold-text-headers', 'accept({ hold: "look", text: "kept", headers: [{ op: "add", name: "X-A", value: "1" }] })', (h) => (h === 'data' ? acceptText(h, 'kept') : FAILED(h)), { spooled: true, held: true }],
    ['headers', 'accept({ headers: [{ op: "add", name: "X-A", value: "1" }] })', (h) => (h === 'data' ? ACCEPTED[h] : FAILED(h)), { spooled: true }],
    ['reject', 'reject("no\\r\\n250 2.0.0 ok\\u0000", { code: 554, enhanced: "5.7.0" })', () => '554 5.7.0 no 250 2.0.0 ok '],
    ['reject-default', 'reject()', (h) => REFUSED[h]],
    ['reject-text-250', '({ verdict: "reject", text: "250 2.0.0 Ok" })', (h) => `${REFUSED[h].slice(0, 9)} 250 2.0.0 Ok`],
    ['reject-8bit', 'reject("Nom refusé")', (h) => `${REFUSED[h].slice(0, 9)} Nom refus?`],
    ['reject-long', 'reject("x".repeat(100000))', (h) => `${REFUSED[h].slice(0, 9)} ${'x'.repeat(400)}`],
    ['defer', 'defer("later", { code: 452, enhanced: "4.2.2" })', () => '452 4.2.2 later'],
    ['defer-disconnect', 'defer(undefined, { disconnect: true })', () => '421 4.7.0 Temporary policy failure, try again later'],
    ['reject-2xx', '({ verdict: "reject", code: 250 })', FAILED],
    ['defer-5xx', '({ verdict: "defer", code: 550 })', FAILED],
    ['code-float', '({ verdict: "reject", code: 550.5 })', FAILED],
    ['code-string', '({ verdict: "reject", code: "550" })', FAILED],
    ['enhanced-class', '({ verdict: "defer", enhanced: "5.7.1" })', FAILED],
    ['text-number', '({ verdict: "reject", text: 42 })', FAILED],
    ['disconnect-string', '({ verdict: "reject", disconnect: "yes" })', FAILED],
    ['hold-number', '({ verdict: "accept", hold: 1 })', FAILED],
    ['username-empty', '({ verdict: "accept", username: "" })', FAILED],
    ['deliver', '({ verdict: "deliver" })', FAILED],
    ['unknown-verdict', '({ verdict: "discard" })', FAILED],
    ['reject-huge', 'reject("x".repeat(10 * 1024 * 1024))', FAILED],
    ['rejects-verdict', 'Promise.reject(accept())', FAILED],
    ['throws-undefined', '(() => { throw undefined; })()', FAILED],
    ['unhandled', '(Promise.reject(new Error("lost")), accept())', FAILED],
  ];

  const script = (hook: Hook): string => `export default function (ctx) {
  if (ctx.connection.listener !== ${JSON.stringify(hook)}) return;
  const c = Number(ctx.connection.remoteAddress.split('.')[3]) - 10;
${CASES.map(([, verdict], i) => `  if (c === ${i}) return ${verdict};`).join('\n')}
}`;

  const MESSAGE = 'Subject: matrix\r\n\r\nbody\r\n.';

  /** The reply at the hook's step, walking a session up to it. */
  async function replyAt(c: SmtpTestClient, hook: Hook): Promise<string> {
    const greeting = await c.read();
    if (hook === 'connect') return greeting.text;
    const ehlo = await c.command('EHLO client.example');
    if (hook === 'helo') return ehlo.text;
    if (hook === 'auth') return (await c.command(`AUTH PLAIN ${Buffer.from('\0bob@example.com\0s3cret').toString('base64')}`)).text;
    const mail = await c.command('MAIL FROM:<bob@example.com>');
    if (hook === 'mailfrom') return mail.text;
    const rcpt = await c.command('RCPT TO:<user@example.com>');
    if (hook === 'rcptto') return rcpt.text;
    assert.equal((await c.command('DATA')).code, 354);
    return (await c.command(MESSAGE)).text;
  }

  test('each verdict in each SMTP hook gets the reply the docs give it, or the failure reply', async () => {
    const s = await startTestServer({
      files: { users: `bob@example.com:${await hashPassword('s3cret')}\n` },
      scripts: Object.fromEntries(HOOKS.map((h) => [`${h}.js`, script(h)])),
      config: configYaml({
        users: './users', localDomains: ['example.com'],
        listeners: HOOKS.map((h) => testListener(h, { auth: { mechanisms: ['PLAIN'] }, limits: { maxErrors: 100 } })),
      }),
    });
    try {
      const wrong: string[] = [];
      // The cases of one hook at once (each its own client address); the hooks one after another.
      for (const hook of HOOKS) {
        await Promise.all(CASES.map(async ([name, , expected], i) => {
          const c = await SmtpTestClient.connect(s.port(hook), { localAddress: `127.0.0.${10 + i}` });
          const got = await replyAt(c, hook).catch((err: Error) => `(${err.message.split('\n')[0]})`);
          const want = expected(hook);
          const first = got.split('\n')[0]!;
          if (typeof want === 'string' ? first !== want : !want.test(first)) wrong.push(`${hook} ${name}: ${JSON.stringify(first.slice(0, 100))}`);
          // A 421, and any refusal at connect, closes the connection.
          if (/^421 /.test(first) || (hook === 'connect' && !/^220 /.test(first))) {
            if (!(await c.waitClosed())) wrong.push(`${hook} ${name}: not closed after ${first.slice(0, 20)}`);
          }
          c.socket.destroy();
        }));
      }
      // At the end of data: what was spooled, and held, is what the script accepted, and held.
      const expectedSpooled = CASES.flatMap(([name, , , at], i) => (at?.spooled ? [`127.0.0.${10 + i} ${name}${at.held ? ' held' : ''}`] : []));
      await until('an accepted line for each accepted message', () => s.logs.filter((l) => /: accepted from=/.test(String(l.msg))).length >= expectedSpooled.length);
      const spooled = s.logs.filter((l) => /: accepted from=/.test(String(l.msg)))
        .map((l) => `${l.client} ${CASES[Number(String(l.client).split('.')[3]) - 10]![0]}${l.held ? ' held' : ''}`);
      assert.deepEqual(wrong, []);
      assert.deepEqual(spooled.sort(), expectedSpooled.sort());
    } finally {
      await s.stop();
    }
  });
});

describe('fast-delivery', () => {
  /**
   * Where an awaited host operation's continuation runs, counted in isolate entries (engine/sandbox/isolate-slot.ts
   * `slotEntries`), not time: a store that answers at once settles the call within its own entry; answers that
   * come later are delivered to fast-path calls on the event-loop thread, all of one turn in one entry. A delivery
   * stopped at the fast path's budget runs its calls again from the start on an isolate thread, where their
   * journals answer what they had started: each operation counts once, and a continuation that never ends fails
   * closed as a timeout there.
   */
  const entriesSince = (before: typeof slotEntries) => ({
    eventLoop: slotEntries.eventLoop - before.eventLoop,
    isolateThread: slotEntries.isolateThread - before.isolateThread,
  });

  const RATE = `export default async (ctx) => {
  const r = await rate('k' + ctx.n, 10, 60);
  log('after', ctx.n, r.count);
  return accept({ text: ctx.n + ':' + r.count });
}`;

  test('await rate() on a store that answers at once settles the calls within their own entry', async () => {
    // A budget no loaded machine uses up: this test is about where calls run, not about stops.
    await withSandbox({ host: { ...recordingHost(), store: new MemoryCounterStore() }, fastPathMs: 1000, scripts: [js('mailfrom', RATE)] }, async (sandbox) => {
      const before = { ...slotEntries };
      const replies = await Promise.all(Array.from({ length: 10 }, (_, n) => sandbox.invoke('mailfrom', { n }, `c${n}`)));
      assert.deepEqual(replies.map((r) => (r as { text: string }).text), Array.from({ length: 10 }, (_, n) => `${n}:1`));
      assert.deepEqual(entriesSince(before), { eventLoop: 1, isolateThread: 0 });
    });
  });

  test('answers that come later are delivered to fast-path calls on the event-loop thread, those of one turn in one entry', async () => {
    const held = heldStore();
    const host = { ...recordingHost(), store: held.store };
    await withSandbox({ host, fastPathMs: 1000, scripts: [js('mailfrom', RATE)] }, async (sandbox) => {
      const before = { ...slotEntries };
      const calls = Array.from({ length: 10 }, (_, n) => sandbox.invoke('mailfrom', { n }, `c${n}`));
      await held.until(10);
      held.answerAll();
      const replies = await Promise.all(calls);
      assert.deepEqual(replies.map((r) => (r as { text: string }).text), Array.from({ length: 10 }, (_, n) => `${n}:1`));
      assert.deepEqual(entriesSince(before), { eventLoop: 2, isolateThread: 0 }, 'one entry for the calls, one for the answers');
      // The continuations' log lines name their own calls' connections.
      for (let n = 0; n < 10; n++) assert.ok(host.logs.some((l) => l.connectionId === `c${n}` && l.message === `after ${n} 1`), `line of c${n}`);
    });
  });

  test('a delivery stopped at the fast path\'s budget runs its calls again on an isolate thread; each operation counts once', async () => {
    const held = heldStore();
    const host = { ...recordingHost(), store: held.store };
    // Call 0's continuation spins on its first attempt in an isolate only (counted work, far past a 1 ms budget):
    // the entry delivering both answers is stopped, and both calls run again from the start. (On a loaded machine
    // the stop may come elsewhere, or late: what holds whatever the timing is asserted.) Two isolates: a call run
    // on an isolate thread from the start holds its isolate while it waits for the answer the test holds back.
    const script = `let spun = false;
  export default async (ctx) => {
    const r = await rate('k' + ctx.n, 10, 60);
    if (ctx.n === 0 && !spun) { spun = true; let x = 0; for (let i = 0; i < 5e7; i++) x += i; }
    log('after', ctx.n, r.count);
    return accept({ text: ctx.n + ':' + r.count });
  }`;
    // timeoutMs: a hang guard, for a 5·10⁷-iteration loop (10 s ran out in such tests at load 40).
    await withSandbox({ host, fastPathMs: 1, timeoutMs: 30_000, isolates: 2, scripts: [js('mailfrom', script)] }, async (sandbox) => {
      const calls = [0, 1].map((n) => sandbox.invoke('mailfrom', { n }, `c${n}`));
      await held.until(2);
      held.answerAll();
      assert.deepEqual((await Promise.all(calls)).map((r) => (r as { text: string }).text), ['0:1', '1:1']);
      assert.equal(held.counts.started, 2, 'the re-runs took their answers from the journal');
      // The stopped attempt's lines are dropped; each call logged once, from its run that counted.
      for (const n of [0, 1]) assert.equal(host.logs.filter((l) => l.message === `after ${n} 1`).length, 1);
    });
  });

  test('a continuation that never ends after await is stopped on the fast path and fails closed on an isolate thread, counted once', async () => {
    const held = heldStore();
    const host = { ...recordingHost(), store: held.store };
    const script = `export default async (ctx) => {
    const r = await rate('k', 10, 60);
    if (ctx.loop) while (true) {}
    return accept({ text: String(r.count) });
  }`;
    await withSandbox({ host, fastPathMs: 1, timeoutMs: 300, isolates: 2, scripts: [js('mailfrom', script)] }, async (sandbox) => {
      const looping = sandbox.invoke('mailfrom', { loop: true }, 'looper');
      await held.until(1);
      held.answerAll();
      await assert.rejects(looping, (e: unknown) => e instanceof ScriptFailure && e.kind === 'timeout');
      assert.equal(held.counts.started, 1);
      // The pool serves store-awaiting calls again.
      const after = sandbox.invoke('mailfrom', {}, 'after');
      await held.until(1);
      held.answerAll();
      assert.deepEqual(await after, { verdict: 'accept', text: '2' });
      assert.equal(held.counts.started, 2);
    });
  });

  test('a script that tries to replace the array iterator does not break the delivery of answers (its own or others\')', async () => {
    const held = heldStore();
    // Builtins are frozen (the assignment throws); were they not, the runner must not depend on them either.
    const script = `try { Array.prototype[Symbol.iterator] = function () { throw new Error('patched'); }; } catch {}
  ${RATE}`;
    await withSandbox({ host: { ...recordingHost(), store: held.store }, fastPathMs: 1000, scripts: [js('mailfrom', script)] }, async (sandbox) => {
      const calls = [0, 1].map((n) => sandbox.invoke('mailfrom', { n }, `c${n}`));
      await held.until(2);
      held.answerAll();
      assert.deepEqual((await Promise.all(calls)).map((r) => (r as { text: string }).text), ['0:1', '1:1']);
    });
  });

  test('answers that come in an I/O or timer callback are delivered before that turn\'s check phase, so what the continuations reply leaves in that turn', async () => {
    const held = heldStore();
    await withSandbox({ host: { ...recordingHost(), store: held.store }, fastPathMs: 1000, scripts: [js('mailfrom', RATE)] }, async (sandbox) => {
      const order: string[] = [];
      const calls = [0, 1].map((n) => sandbox.invoke('mailfrom', { n }, `c${n}`).then((r) => { order.push(`settled ${n}`); return r; }));
      await held.until(2);
      // As a Redis reply comes: in a callback of the poll (here the timers) phase. The replies the continuations
      // make are written at the end of the turn (smtp/reply-batch.ts, a setImmediate): this one stands for it.
      await new Promise<void>((done) => setTimeout(() => {
        setImmediate(() => { order.push('check phase'); done(); });
        held.answerAll();
      }, 0));
      await Promise.all(calls);
      assert.deepEqual(order, ['settled 0', 'settled 1', 'check phase']);
    });
  });

  test('a continuation answered at once again and again is delivered at most twice per turn: the event loop goes on meanwhile', async () => {
    // The memory store answering by promise (as a remote store does, but within the same turn).
    const memory = new MemoryCounterStore();
    const store = { kind: 'memory', rate: (k: string, l: number, w: number) => memory.rate(k, l, w), get: (k: string) => memory.get(k),
      add: (k: string, n: number, t: number) => memory.add(k, n, t), authFailures: () => memory.authFailures(), close: () => memory.close() };
    const script = `export default async () => {
    let r;
    for (let i = 0; i < 200; i++) r = await rate('loop', 1000, 60);
    return accept({ text: String(r.count) });
  }`;
    await withSandbox({ host: { ...recordingHost(), store }, fastPathMs: 1000, scripts: [js('mailfrom', script)] }, async (sandbox) => {
      let turns = 0;
      let ticking = true;
      const tick = (): void => { turns++; if (ticking) setImmediate(tick); };
      setImmediate(tick);
      const before = { ...slotEntries };
      assert.deepEqual(await sandbox.invoke('mailfrom', {}, 'c'), { verdict: 'accept', text: '200' });
      ticking = false;
      const entries = entriesSince(before);
      assert.equal(entries.eventLoop, 201, 'the call, then one delivery per answer');
      assert.ok(turns >= 200 / 2 - 2, `${turns} turns of the event loop during 200 deliveries`);
    });
  });
});

describe('longest-time-limit', () => {
  /**
   * sandbox.timeoutMs at the largest value the schema takes (2^31-1 ms, Node's longest timer). The watchdog of a
   * call on an isolate thread waits timeoutMs + 250 ms: past a timer's reach Node ran it after 1 ms, and every
   * call that outran the fast path was cut off ("did not finish within 2147483897 ms"), a 451 for every client.
   * The warning Node gives for such a timer is counted (emitted when the timer is set: no timing involved); the
   * call's outcome shows what a client saw.
   */
  test('sandbox.timeoutMs 2147483647: a call on an isolate thread is not cut off, no timer overflows', async () => {
    const overflows: string[] = [];
    const onWarning = (w: Error): void => { if (w.name === 'TimeoutOverflowWarning') overflows.push(w.message); };
    process.on('warning', onWarning);
    try {
      const host = { lookup: () => null, log: () => undefined };
      // Work of some milliseconds at least, on any machine: the overflowed watchdog came after 1.
      const source = 'export default () => { let x = 0; for (let i = 0; i < 2e8; i++) x += i % 7; return reject(`worked ${x > 0}`); }';
      await withSandbox({ host, isolates: 1, fastPathMs: 0, timeoutMs: 2 ** 31 - 1, scripts: [js('helo', source)] }, async (sandbox) => {
        assert.deepEqual(await sandbox.invoke('helo', {}, 'c1'), { verdict: 'reject', text: 'worked true' });
      });
    } finally {
      process.off('warning', onWarning);
    }
    assert.deepEqual(overflows, []);
  });
});
