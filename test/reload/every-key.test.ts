// Every configuration key has a reload decision (test/reload/key-decisions.ts): in force at the reload, or
// named in pendingRestart. A key added to the schema without one fails here; a start-only key that the
// reload neither applies nor names (silently ignored) fails here too.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { stringify } from 'yaml';
import { configKeys } from '../../engine/config/describe.ts';
import { serveRestartNeeded } from '../../engine/cluster/supervisor.ts';
import { restartNeeded } from '../../engine/reload/restart-needed.ts';
import { BASE, DECISIONS, type Draft } from './key-decisions.ts';
import { spawn, spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfigFile, parseConfig } from '../../engine/config/load-config.ts';
import { digestInputs, watchedInputs } from '../../engine/reload/watched-inputs.ts';
import { freePort, watchServer } from '../helpers/cluster.ts';
import { ask } from '../../engine/cli/status.ts';
import { statusSocket } from '../../engine/cluster/process-model.ts';
import { startSink } from '../helpers/sink.ts';
import { SmtpTestClient, submitMessage } from '../helpers/smtp-client.ts';

const parse = (c: Draft) => parseConfig(stringify(c), '/etc/postern/postern.yaml', '/etc/postern').config;

test('every key of the schema has a reload decision, and no decision names a key the schema lacks', () => {
  const keys = configKeys().map((k) => k.path);
  assert.deepEqual(keys.filter((k) => !DECISIONS[k]), [], 'keys without a reload decision in test/reload/key-decisions.ts');
  assert.deepEqual(Object.keys(DECISIONS).filter((k) => !keys.includes(k)), [], 'decisions for keys the schema does not have');
});

test('each key changed alone: a restart key is named in pendingRestart, and only it; a live key names nothing', () => {
  const wrong: string[] = [];
  for (const [key, d] of Object.entries(DECISIONS)) {
    if (d.section) continue;
    const before = BASE();
    d.from?.(before);
    const after = structuredClone(before);
    d.change!(after);
    const [was, now] = [parse(before), parse(after)];
    assert.notDeepEqual(was, now, `${key}: the change changes the configuration`);
    const pending = (d.serveOnly ? serveRestartNeeded : restartNeeded)(was, now);
    if (d.restart ? !pending.length || !pending.every((p) => d.restart!.test(p)) : pending.length) wrong.push(`${key}: ${JSON.stringify(pending)}`);
    // Under serve the supervisor's list is the single process's and more: the same decision there.
    if (!d.serveOnly && JSON.stringify(serveRestartNeeded(was, now)) !== JSON.stringify(pending)) wrong.push(`${key}: serve differs`);
  }
  assert.deepEqual(wrong, []);
});

/**
 * The same decisions against `postern serve` (2 workers and the queue process): each restart key changed on
 * disk is accepted by every process, named by `postern status` and once in the log, and gone again when the
 * change is undone; a sample of live keys is in force on every worker (connections round robin) and, for
 * delivery, in the queue process.
 */
test('postern serve: every restart key is named by postern status and the log; live keys are in force in every process', { timeout: 600_000 }, async () => {
  const [inPort, adminPort, sinkA, sinkB] = [await freePort(), await freePort(), await startSink(), await startSink()];
  const dir = await mkdtemp(join(tmpdir(), 'postern-every-key-'));
  await mkdir(join(dir, 'scripts'));
  /** What the server starts from: the restart keys' sections present, plain SMTP, delivery to sink A. */
  const base = (): Draft => ({
    dataDir: join(dir, 'data'), scripts: join(dir, 'scripts'), hostname: 'mx.example.test', localDomains: ['example.test'],
    workers: 2, workerChoice: 'roundRobin', store: { maxKeys: 100_000 }, log: { level: 'info', format: 'json' },
    listeners: [{ name: 'in', listen: `127.0.0.1:${inPort}`, reverseDns: false, limits: { greetingDelayMs: 0 } }],
    policyServices: [{ name: 'pol', listen: `unix:${join(dir, 'policy.sock')}` }],
    delivery: { route: { smarthost: { host: '127.0.0.1', port: sinkA.port } }, tls: { mode: 'none' }, scanIntervalMs: 200 },
    admin: { listen: `127.0.0.1:${adminPort}` },
  });
  const file = join(dir, 'postern.yaml');
  await writeFile(file, stringify(base()));
  const c = await watchServer(spawn(join(ROOT, 'node_modules/.bin/node'), [join(ROOT, 'engine/cli/main.ts'), 'serve', '--config', file], {
    // The configuration is written whole each time (one writeFile), often shorter: not the half-written input the 2 s
    // settling of a shrunk file is for (test/reload/half-written.test.ts), which cost this test a wait per key.
    cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NODE_NO_WARNINGS: '1', POSTERN_SHRUNK_SETTLE_MS: '50' },
  }), { dir, dataDir: join(dir, 'data'), ports: new Map([['in', inPort]]) });
  /** Every process runs a generation built from the files as they are now, and none refused it. */
  const inForce = async (what: string): Promise<void> => {
    const disk = await digestInputs(watchedInputs(loadConfigFile(file)));
    await c.waitFor(what, async () => {
      const r = (await c.cluster()).reload;
      return PROCESSES.every((p) => r.processes[p]?.digest === disk && !r.processes[p]?.refused);
    });
  };
  const write = async (config: Draft, what: string): Promise<void> => {
    await writeFile(file, stringify(config));
    await inForce(what);
  };
  // The server runs with the data directory it started with, also while a change of dataDir waits for a restart.
  // `postern status` prints the supervisor's answer on its status socket as it is (engine/cli/status.ts): asked here
  // in this process, the same answer without a CLI process started for each question; the command itself is run
  // once, for the first key, and must print the same list.
  const pending = async (): Promise<string[]> => (await ask<{ pendingRestart: string[] }>(statusSocket(join(dir, 'data')), '/status')).pendingRestart;
  const pendingByCli = (): string[] => {
    const r = spawnSync(join(ROOT, 'node_modules/.bin/node'), [join(ROOT, 'engine/cli/main.ts'), 'status', '--config', file, '--data-dir', join(dir, 'data')], { encoding: 'utf8', timeout: 60_000 });
    try {
      return (JSON.parse(r.stdout) as { pendingRestart: string[] }).pendingRestart;
    } catch {
      throw new Error(`postern status: ${r.stdout} ${r.stderr}`);
    }
  };
  const restartLines = (): string[] => c.logs.filter((l) => l.level === 40 && /^configuration change needs a restart: /.test(String(l.msg))).map((l) => String(l.msg));
  try {
    await inForce('every process started');
    const wrong: string[] = [];
    let ranCli = false;
    for (const [key, d] of Object.entries(DECISIONS)) {
      if (!d.restart || CLUSTER_SKIPS.has(key)) continue;
      const config = base();
      d.from?.(config);
      // A starting point that itself waits for a restart (Redis on, a PROXY listener) is one the server must start from: the first part decides those.
      if (d.from && serveRestartNeeded(parseConfig(stringify(base()), file, dir).config, parseConfig(stringify(config), file, dir).config).length) continue;
      if (d.from) await write(config, `${key}: its starting point`);
      const said = restartLines().length;
      d.change!(config);
      await write(config, `${key}: the change in force everywhere`);
      const listed = await c.waitFor(`${key}: postern status names the restart`, async () => { const p = await pending(); return p.length > 0 && p; });
      if (!ranCli) { assert.deepEqual(pendingByCli(), listed, `${key}: the command prints what the status socket answers`); ranCli = true; }
      if (!listed.every((p) => d.restart!.test(p))) wrong.push(`${key}: postern status ${JSON.stringify(listed)}`);
      const lines = await c.waitFor(`${key}: the log names the restart`, () => restartLines().length > said && restartLines().slice(said));
      if (!lines.every((l) => d.restart!.test(l.replace(/^configuration change needs a restart: /, '')))) wrong.push(`${key}: logged ${JSON.stringify(lines)}`);
      await write(base(), `${key}: undone`);
      await c.waitFor(`${key}: nothing pending once undone`, async () => (await pending()).length === 0);
    }
    assert.deepEqual(wrong, []);

    // Live keys, each in force on every worker (four connections at once: round robin reaches both).
    const sessions = async (n = 4): Promise<SmtpTestClient[]> => Promise.all(Array.from({ length: n }, () => SmtpTestClient.connect(inPort)));
    const greetings = async (): Promise<Set<string>> => {
      const clients = await sessions();
      const texts = await Promise.all(clients.map(async (s) => (await s.read(30_000)).text));
      for (const s of clients) s.destroy();
      return new Set(texts);
    };
    const ehlos = async (): Promise<Set<string>> => {
      const clients = await sessions();
      const texts = await Promise.all(clients.map(async (s) => { await s.read(30_000); return (await s.command('EHLO client.test', 30_000)).text; }));
      for (const s of clients) s.destroy();
      return new Set(texts.map((t) => t.split('\n').slice(1).sort().join('\n')));
    };
    const rcpts = async (to: string[]): Promise<Set<string>> => {
      const clients = await sessions();
      const texts = await Promise.all(clients.map(async (s) => {
        await s.read(30_000);
        await s.command('EHLO client.test', 30_000);
        await s.command('MAIL FROM:<a@example.net>', 30_000);
        const replies = [];
        for (const r of to) replies.push((await s.command(`RCPT TO:<${r}>`, 30_000)).code);
        return replies.join(' ');
      }));
      for (const s of clients) s.destroy();
      return new Set(texts);
    };
    let config = base();
    config.hostname = 'other.example.test';
    config.listeners[0].banner = 'Renamed';
    await write(config, 'hostname and banner');
    assert.deepEqual(await greetings(), new Set(['220 other.example.test ESMTP Renamed']));
    config.listeners[0].limits.maxMessageSize = 4321;
    config.listeners[0].auth = { mechanisms: ['PLAIN'] };
    await write(config, 'maxMessageSize and auth.mechanisms');
    const ehlo = [...await ehlos()];
    assert.equal(ehlo.length, 1, `every worker answers EHLO alike: ${ehlo.join(' | ')}`);
    assert.match(ehlo[0]!, /250[- ]SIZE 4321/);
    assert.match(ehlo[0]!, /250[- ]AUTH PLAIN/);
    assert.deepEqual(await rcpts(['a@example.test', 'b@more.example']), new Set(['250 554']));
    config.localDomains.push('more.example');
    config.listeners[0].limits.maxRecipients = 2;
    await write(config, 'localDomains and maxRecipients');
    assert.deepEqual(await rcpts(['a@example.test', 'b@more.example', 'c@example.test']), new Set(['250 250 452']));
    // Delivery: the queue process delivers to the new route.
    config = base();
    config.delivery.route.smarthost.port = sinkB.port;
    await write(config, 'delivery.route');
    await submitMessage(inPort, 'a@example.net', ['b@example.test']);
    const [got] = await sinkB.waitFor(1, 60_000);
    assert.deepEqual(got!.to, ['b@example.test']);
    assert.equal(sinkA.messages.length, 0);
  } finally {
    await c.stop();
    await Promise.all([sinkA.close(), sinkB.close()]);
  }
});

/** Restart keys not changed under serve here: they need TLS material or the account page (their entries above decide them). */
const CLUSTER_SKIPS = new Set(['listeners[].tls.mode', 'accounts', 'accounts.listen']);
const PROCESSES = ['worker 0', 'worker 1', 'queue 0'];
const ROOT = new URL('../../', import.meta.url).pathname;
