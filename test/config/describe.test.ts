/**
 * The configuration reference comes from the schema: docs/configuration.md's key tables must be what
 * `postern config describe` generates, and every key must have a description.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { z } from '../../engine/config/zod.ts';
import { CONFIGURATION_DOC, REGENERATE_COMMAND, configKeys, undescribedKeys, updateDocument } from '../../engine/config/describe.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const run = (...args: string[]) => promisify(execFile)(process.execPath, [join(ROOT, 'engine/cli/main.ts'), ...args], { cwd: ROOT });

/** The first line where two texts part, to show in a failure instead of two whole files. */
function firstDifference(actual: string, expected: string): string {
  const a = actual.split('\n');
  const e = expected.split('\n');
  const i = a.findIndex((line, n) => line !== e[n]);
  const at = i === -1 ? a.length : i;
  return `line ${at + 1}:\n  in the docs: ${a[at] ?? '(end of file)'}\n  generated:   ${e[at] ?? '(end of file)'}`;
}

test(`docs/configuration.md's key tables match the schema (regenerate: ${REGENERATE_COMMAND})`, async () => {
  const doc = await readFile(CONFIGURATION_DOC, 'utf8');
  const fresh = updateDocument(doc);
  assert.ok(doc === fresh,
    `docs/configuration.md is out of date with engine/config/schema.ts; run \`${REGENERATE_COMMAND}\` and commit the result\n${firstDifference(doc, fresh)}`);
});

test('every configuration key has a description', () => {
  assert.deepEqual(undescribedKeys(), [], 'give these keys a .describe() text in engine/config/schema.ts');
});

test('a key without a description is caught, wherever it sits', () => {
  const schema = z.strictObject({
    a: z.number().default(1).describe('described'),
    list: z.array(z.strictObject({ inner: z.string() })).describe('a list'),
    map: z.record(z.string(), z.strictObject({ x: z.boolean().default(false) })).default({}).describe('a map'),
    either: z.union([z.strictObject({ one: z.string().describe('one') }), z.strictObject({ two: z.number() })]).describe('a union'),
  });
  assert.deepEqual(undescribedKeys(configKeys(schema)), ['list[].inner', 'map.<name>.x', 'either.two']);
});

test('keys are read with their type, default and hints', () => {
  const byPath = new Map(configKeys().map((k) => [k.path, k]));
  const key = (p: string) => byPath.get(p) ?? assert.fail(`no key ${p}`);
  assert.deepEqual(
    { type: key('listeners[].limits.maxMessageSize').type, default: key('listeners[].limits.maxMessageSize').default },
    { type: 'integer ≥ 1, bytes', default: '`26214400` (25 MiB)' });
  assert.equal(key('sandbox.isolates').type, 'integer 1–64');
  assert.match(key('sandbox.isolates').description, /^Isolates per scripts folder\./);
  assert.equal(key('listeners[].tls.mode').type, '`none` | `starttls` | `implicit`');
  assert.equal(key('listeners[].tls.caFiles').type, 'path[]');
  assert.equal(key('listeners').default, '`[]` (then `policyServices` needs an entry)');
  assert.equal(key('users').default, '—');
  assert.ok(key('listeners[].limits.greetingDelayMs').default.startsWith('`0` when'));
  assert.equal(key('delivery.clientCertificates.<name>.key').type, 'path');
  assert.equal(key('tables.<name>.format').default, '`postfix`');
});

test('a stale, missing or doubled generated block is handled', async () => {
  const doc = await readFile(CONFIGURATION_DOC, 'utf8');
  const stale = doc.replace(/^\| `isolates` \|.*$/m, '| `isolates` | integer | `2` | Isolates per generation. |');
  assert.notEqual(stale, doc);
  assert.equal(updateDocument(stale), updateDocument(doc));
  const begin = '<!-- BEGIN config-reference sandbox:';
  assert.throws(() => updateDocument(doc.replace(begin, '<!-- gone:')), /no generated block for sandbox/);
  const block = doc.slice(doc.indexOf(begin), doc.indexOf('<!-- END config-reference sandbox -->'));
  assert.throws(() => updateDocument(`${doc}\n${block}<!-- END config-reference sandbox -->\n`), /two generated blocks for sandbox/);
});

test('postern config describe prints the reference; --write-docs regenerates a stale copy', async () => {
  const text = (await run('config', 'describe')).stdout;
  assert.match(text, /^sandbox\.isolates\n {2}integer 1–64; default: `2`\n {2}Isolates per scripts folder\./m);
  assert.match(text, /^listeners\[\]\.tls\.mode\n/m);
  const schema = JSON.parse((await run('config', 'describe', '--json')).stdout) as { properties: Record<string, unknown> };
  assert.ok('listeners' in schema.properties && 'delivery' in schema.properties);
  assert.match((await run('config', 'describe', '--markdown')).stdout, /^## `listeners\[\]\.limits`$/m);

  const dir = await mkdtemp(join(tmpdir(), 'postern-describe-'));
  try {
    const doc = await readFile(CONFIGURATION_DOC, 'utf8');
    const copy = join(dir, 'configuration.md');
    await writeFile(copy, doc.replace(/^\| `isolates` \|.*$/m, '| `isolates` | integer | `2` | stale |'));
    assert.match((await run('config', 'describe', '--write-docs', copy)).stdout, /reference updated/);
    assert.equal(await readFile(copy, 'utf8'), updateDocument(doc));
  } finally {
    await rm(dir, { recursive: true });
  }
});
