// What the supervisor of `postern serve` judges by itself follows a reload, as the workers do, for the keys a reload
// takes (test/reload/key-decisions.ts marks them live): the spool's floors of /readyz and `postern status`, and a
// policy service's maxConnections at accept. It kept the values it started with: a spool.minFreeBytes raised above the
// disk's free space had the workers refuse every message (452 4.3.1) while /readyz said 200 and `postern status`
// exited 0; a lowered maxConnections let a policy client queue as many connections as before while no worker took them;
// a hostname changed by a reload was refused 421 as a Host of the admin listener (and the old one still served).
// One one-worker server; each case edits postern.yaml and waits until every process and the supervisor run the edit.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import http from 'node:http';
import { once } from 'node:events';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startCluster, type ClusterProcess } from '../helpers/cluster.ts';
import { runCli } from '../helpers/cli.ts';

/** More than any disk here has, in bytes and in inodes. */
const HUGE = 2 ** 50;
const FLOORS = 'spool: { minFreeBytes: 0, minFreeInodes: 0 }';

let c: ClusterProcess;
let file: string;
before(async () => {
  c = await startCluster({ config: `
workers: 1
hostname: before.example.test
localDomains: [example.test]
admin: { listen: "127.0.0.1:{PORT:admin}" }
${FLOORS}
listeners:
  - { name: in, listen: "127.0.0.1:{PORT:in}", reverseDns: false, limits: { greetingDelayMs: 0 } }
policyServices:
  - { name: policy, listen: "127.0.0.1:{PORT:policy}", limits: { maxConnections: 50 } }
` });
  file = join(c.dir, 'postern.yaml');
  await c.waitFor('every process ready', async () => (await c.cluster()).processes.every((p) => p.ready));
});
after(() => c?.stop());

/** postern.yaml edited (`from` → `to`), then waited for until every process, and the supervisor, run the edit. */
async function reload(from: string, to: string): Promise<void> {
  const before = (await c.cluster()).reload.processes['worker 0']!.digest;
  const text = await readFile(file, 'utf8');
  assert.ok(text.includes(from), from);
  await writeFile(file, text.replace(from, to));
  await c.waitFor('every process and the supervisor on the edit', async () => {
    const r = (await c.cluster()).reload;
    const all = Object.values(r.processes);
    return all.length === 2 && all.every((p) => p.digest !== before && !p.lastError && p.digest === r.supervisor);
  });
}

async function readyz(): Promise<{ code: number; body: string }> {
  const res = await fetch(`http://127.0.0.1:${c.port('admin')}/readyz`);
  return { code: res.status, body: await res.text() };
}

test('a spool.minFreeBytes raised by a reload above the free space: not ready, as a server started with it', { timeout: 120_000 }, async () => {
  assert.equal((await readyz()).code, 200);
  await reload(FLOORS, `spool: { minFreeBytes: ${HUGE}, minFreeInodes: 0 }`);
  const ready = await readyz();
  assert.equal(ready.code, 503, ready.body);
  assert.match(ready.body, /below spool\.minFreeBytes \(1125899906842624\)/);
  const status = await runCli(['status', '--config', file]);
  assert.equal(status.code, 5, status.stderr);
  assert.match(status.stderr, /not ready.*spool\.minFreeBytes/);
});

test('a spool.minFreeInodes raised by a reload, the bytes\' floor lowered again: judged by the new floors', { timeout: 120_000 }, async () => {
  await reload(`spool: { minFreeBytes: ${HUGE}, minFreeInodes: 0 }`, `spool: { minFreeBytes: 0, minFreeInodes: ${HUGE} }`);
  const ready = await readyz();
  assert.equal(ready.code, 503, ready.body);
  assert.match(ready.body, /below spool\.minFreeInodes/);
  assert.doesNotMatch(ready.body, /minFreeBytes/);
  await reload(`spool: { minFreeBytes: 0, minFreeInodes: ${HUGE} }`, FLOORS);
  assert.equal((await readyz()).code, 200);
  const status = await runCli(['status', '--config', file]);
  assert.equal(status.code, 0, status.stderr);
});

/** The admin listener's answer to GET /healthz naming `host` in its Host header (as a scrape by that name does). */
function healthzAs(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port: c.port('admin'), path: '/healthz', headers: { host: `${host}:${c.port('admin')}` } }, (res) => {
      res.resume();
      resolve(res.statusCode!);
    }).on('error', reject);
  });
}

test('a hostname changed by a reload is a Host name of the admin listener, the old one no longer', { timeout: 120_000 }, async () => {
  assert.equal(await healthzAs('before.example.test'), 200);
  assert.equal(await healthzAs('after.example.test'), 421);
  await reload('hostname: before.example.test', 'hostname: after.example.test');
  assert.equal(await healthzAs('after.example.test'), 200);
  assert.equal(await healthzAs('before.example.test'), 421);
});

// Last: it stops the worker (let go on at the end, not waited for to be replaced).
test('a policy service\'s maxConnections lowered by a reload bounds the connections waiting at the supervisor', { timeout: 120_000 }, async () => {
  await reload('limits: { maxConnections: 50 }', 'limits: { maxConnections: 2 }');
  const worker = (await c.cluster()).processes.find((p) => p.role === 'worker' && p.ready)!.pid!;
  const sockets: net.Socket[] = [];
  try {
    process.kill(worker, 'SIGSTOP'); // no worker takes them: past the few handed to it, they wait at the supervisor
    for (let i = 0; i < 16; i++) {
      const s = net.connect(c.port('policy'), '127.0.0.1');
      s.on('error', () => undefined);
      sockets.push(s);
      await once(s, 'connect');
    }
    // With 50 (the start's) all 16 waited; with 2, those past the few handed and 2 waiting are closed at accept.
    await c.waitFor('connections over maxConnections closed at accept', () =>
      c.logs.some((l) => /too many connections to this policy service waiting for a worker/.test(String(l.msg)) && l.limit === 2), 30_000);
  } finally {
    try { process.kill(worker, 'SIGCONT'); } catch { /* replaced meanwhile */ }
    for (const s of sockets) s.destroy();
  }
});
