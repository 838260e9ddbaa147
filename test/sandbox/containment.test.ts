/**
 * Fail closed is the host's invariant: a script that patches builtins in the shared context, or returns a
 * hostile object, can break only its own call. Other calls on the same isolate keep their exact verdicts
 * and failures, on the fast path, in batches and on isolate threads.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Sandbox, ScriptFailure } from '../../engine/sandbox/index.ts';
import { js, recordingHost } from '../helpers/sandbox-fixtures.ts';

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
