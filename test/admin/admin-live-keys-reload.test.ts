// A single `postern start` judges /readyz's spool check by the floors a reload took (spool.minFreeBytes and
// spool.minFreeInodes are live, test/reload/key-decisions.ts): it kept the start's, so a spool.minFreeBytes raised
// above the disk's free space had every message refused (452 4.3.1) while /readyz answered 200. And its Host check
// takes the hostname a reload set (hostname is live): the new name was refused 421 and the old one still served.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer, PLAIN_MX_CONFIG, type TestServer } from '../helpers/postern.ts';
import { freePort } from '../helpers/free-port.ts';

/** More than any disk here has, in bytes and in inodes. */
const HUGE = 2 ** 50;
const FLOORS = 'spool: { minFreeBytes: 0, minFreeInodes: 0 }';

let s: TestServer;
before(async () => {
  s = await startTestServer({ config: `hostname: before.example.test\n${PLAIN_MX_CONFIG}admin: { listen: "127.0.0.1:${await freePort()}" }\n${FLOORS}\n` });
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

/** The admin listener's answer to GET /healthz naming `host` in its Host header (as a scrape by that name does). */
function healthzAs(host: string): Promise<number> {
  const port = s.admin!.address.port;
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: '/healthz', headers: { host: `${host}:${port}` } }, (res) => {
      res.resume();
      resolve(res.statusCode!);
    }).on('error', reject);
  });
}

test('a hostname changed by a reload is a Host name of the admin listener, the old one no longer', { timeout: 60_000 }, async () => {
  assert.equal(await healthzAs('before.example.test'), 200);
  assert.equal(await healthzAs('after.example.test'), 421);
  await reload('hostname: before.example.test', 'hostname: after.example.test');
  assert.equal(await healthzAs('after.example.test'), 200);
  assert.equal(await healthzAs('before.example.test'), 421);
});
