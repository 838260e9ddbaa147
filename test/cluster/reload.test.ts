// Hot reload under `postern serve`: the supervisor watches the inputs once and tells every process to
// reload. An edit reaches every worker; a broken edit is refused by every worker, reported once, and
// `postern status` shows it; SIGHUP to the whole process group reloads each process once.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { startCluster, greeted, TWO_WORKERS, ROUND_ROBIN, type ClusterProcess, type ClusterStatus } from '../helpers/cluster.ts';

const ROOT = new URL('../../', import.meta.url).pathname;
const verdict = (text: string): string => `export default function () { return reject('${text}'); }\n`;
const PROCESSES = ['worker 0', 'worker 1', 'queue 0'];

/**
 * RCPT answers from `n` connections open at once: the supervisor hands idle connections round robin, so
 * they reach both workers.
 */
async function answers(c: ClusterProcess, n = 4): Promise<string[]> {
  const clients = [];
  for (let i = 0; i < n; i++) clients.push(await greeted(c));
  const texts = await Promise.all(clients.map(async (client) => {
    assert.equal((await client.command('MAIL FROM:<a@example.test>', 30_000)).code, 250);
    return (await client.command('RCPT TO:<b@example.test>', 30_000)).text;
  }));
  for (const client of clients) client.destroy();
  return texts;
}

/** The reload state once every process has answered and they agree on the content in force. */
function converged(c: ClusterProcess, what: string, check: (r: ClusterStatus['reload']) => boolean): Promise<ClusterStatus['reload']> {
  return c.waitFor(what, async () => {
    const r = (await c.cluster()).reload;
    return PROCESSES.every((p) => r.processes[p]) && r.converged && check(r) && r;
  });
}

/**
 * One server for both tests (a two-worker server cost some 3 s of CPU to start and stop). Detached: it leads its own
 * process group, for the signal to the group. The SIGHUP test first: it counts every reload, and an edit's late
 * change event would reload once more.
 */
let shared: ClusterProcess | undefined;
const server = async (): Promise<ClusterProcess> =>
  (shared ??= await startCluster({ config: TWO_WORKERS + ROUND_ROBIN, scripts: { 'rcptto.js': verdict('v1') }, detached: true }));
after(() => shared?.stop());

test('SIGHUP to the whole process group reloads every process once', async () => {
  const c = await server();
  try {
    const reloads = async (): Promise<number[]> => {
      const r = (await c.cluster()).reload.processes;
      return PROCESSES.map((p) => r[p]?.reloads ?? -1);
    };
    await converged(c, 'every process started', () => true);
    const before = await reloads();
    process.kill(-c.proc.pid!, 'SIGHUP'); // as a terminal or a service manager may send it
    await c.waitFor('every process reloaded', async () => (await reloads()).every((n, i) => n >= before[i]! + 1));
    // A second SIGHUP, to the supervisor alone: once each has done it, no process has done more.
    process.kill(c.proc.pid!, 'SIGHUP');
    await c.waitFor('every process reloaded again', async () => (await reloads()).every((n, i) => n >= before[i]! + 2));
    assert.deepEqual(await reloads(), before.map((n) => n + 2));
    assert.equal(c.proc.exitCode, null, 'the server is still running');
  } catch (err) {
    await c.stop(); // not left half-way for the next test
    shared = undefined;
    throw err;
  }
});

test('an edit reaches both workers; a broken edit is refused on both, reported once and shown by postern status', async () => {
  const c = await server();
  const script = join(c.dir, 'scripts', 'rcptto.js');
  try {
    const first = await converged(c, 'every process started', () => true);
    const digest = first.processes['worker 0']!.digest;
    assert.deepEqual(new Set((await answers(c)).map((t) => t.replace(/^550 5\.7\.1 /, ''))), new Set(['v1']));

    await writeFile(script, verdict('v2'));
    const second = await converged(c, 'every process on the edit', (r) => PROCESSES.every((p) => r.processes[p]!.digest !== digest));
    assert.equal(second.lastError, null);
    assert.deepEqual(new Set((await answers(c)).map((t) => t.replace(/^550 5\.7\.1 /, ''))), new Set(['v2']), 'each worker answers with the new verdict');

    await writeFile(script, 'export default function ( {\n');
    const broken = await c.waitFor('every process refuses the broken edit', async () => {
      const r = (await c.cluster()).reload;
      return PROCESSES.every((p) => r.processes[p]?.refused) && r;
    });
    assert.ok(broken.converged, 'all still run the same generation');
    assert.match(broken.lastError!.join('\n'), /rcptto\.js:\d+:\d+: SyntaxError/, "the error names file and line");
    assert.deepEqual(new Set((await answers(c)).map((t) => t.replace(/^550 5\.7\.1 /, ''))), new Set(['v2']), 'both workers keep the running generation');
    const refusals = c.logs.filter((l) => /reload refused/.test(String(l.msg)));
    assert.equal(refusals.filter((l) => l.level === 50).length, broken.lastError!.length, 'reported once, not once per process');
    const out = await promisify(execFile)(join(ROOT, 'node_modules/.bin/node'), [join(ROOT, 'engine/cli/main.ts'), 'status', '--config', join(c.dir, 'postern.yaml')]).catch((e: { stdout: string }) => e);
    let status: { lastError: string[] | null; converged: boolean };
    try { status = JSON.parse(out.stdout) as typeof status; } catch { throw new Error(`postern status printed: ${out.stdout}`); }
    assert.match(String(status.lastError), /rcptto\.js:\d+:\d+/);

    await writeFile(script, verdict('v3'));
    await converged(c, 'every process on the fix', (r) => r.lastError === null && PROCESSES.every((p) => r.processes[p]!.refused === null));
    assert.deepEqual(new Set((await answers(c)).map((t) => t.replace(/^550 5\.7\.1 /, ''))), new Set(['v3']));
  } finally {
    await c.stop();
    shared = undefined;
  }
});
