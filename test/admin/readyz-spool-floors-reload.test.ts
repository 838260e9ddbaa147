// A single `postern start` judges /readyz's spool check by the floors a reload took (spool.minFreeBytes and
// spool.minFreeInodes are live, test/reload/key-decisions.ts): it kept the start's, so a spool.minFreeBytes raised
// above the disk's free space had every message refused (452 4.3.1) while /readyz answered 200.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer, PLAIN_MX_CONFIG, type TestServer } from '../helpers/postern.ts';
import { freePort } from '../helpers/free-port.ts';

/** More than any disk here has, in bytes and in inodes. */
const HUGE = 2 ** 50;
const FLOORS = 'spool: { minFreeBytes: 0, minFreeInodes: 0 }';

let s: TestServer;
before(async () => {
  s = await startTestServer({ config: `${PLAIN_MX_CONFIG}admin: { listen: "127.0.0.1:${await freePort()}" }\n${FLOORS}\n` });
});
after(() => s?.stop());

/** postern.yaml edited (`from` → `to`) and the reload done. */
async function reload(from: string, to: string): Promise<void> {
  const file = join(s.dir, 'postern.yaml');
  const text = await readFile(file, 'utf8');
  assert.ok(text.includes(from), from);
  const serial = s.runtime.generation.serial;
  await writeFile(file, text.replace(from, to));
  for (;;) {
    await s.reloader.whenIdle();
    if (s.runtime.generation.serial !== serial) return;
    await new Promise((r) => setTimeout(r, 25)); // the change not seen yet
  }
}

async function readyz(): Promise<{ code: number; body: string }> {
  const res = await fetch(`http://127.0.0.1:${s.admin!.address.port}/readyz`);
  return { code: res.status, body: await res.text() };
}

test('spool floors raised and lowered by reloads: /readyz judges by those in force', { timeout: 60_000 }, async () => {
  assert.equal((await readyz()).code, 200);
  await reload(FLOORS, `spool: { minFreeBytes: ${HUGE}, minFreeInodes: 0 }`);
  let ready = await readyz();
  assert.equal(ready.code, 503, ready.body);
  assert.match(ready.body, /below spool\.minFreeBytes \(1125899906842624\)/);
  await reload(`spool: { minFreeBytes: ${HUGE}, minFreeInodes: 0 }`, `spool: { minFreeBytes: 0, minFreeInodes: ${HUGE} }`);
  ready = await readyz();
  assert.equal(ready.code, 503, ready.body);
  assert.match(ready.body, /below spool\.minFreeInodes/);
  await reload(`spool: { minFreeBytes: 0, minFreeInodes: ${HUGE} }`, FLOORS);
  assert.equal((await readyz()).code, 200);
});
