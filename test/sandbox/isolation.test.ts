/** What a script can reach: a copy of its context, the helper globals, and nothing of the host. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, createHmac } from 'node:crypto';
import { ScriptFailure } from '../../engine/sandbox/index.ts';
import { js, recordingHost, SCRIPT_DIR } from '../helpers/sandbox-fixtures.ts';
import { withSandbox } from '../helpers/sandbox.ts';

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
