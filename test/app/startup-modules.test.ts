/**
 * What a process of the server loads at start: never Node's own fetch (undici, ~20 ms of CPU at every start of every
 * worker, queue process and command). An ES import of node:http reads every export of it, and one of them loads
 * undici; smtp-server's and nodemailer's ES builds import node:http, so the engine loads their CommonJS builds
 * (engine/smtp/postern-server.ts, engine/delivery/connection-pool.ts) and takes node:http by getBuiltinModule.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { Worker } from 'node:worker_threads';
import { createRequire } from 'node:module';
import { once } from 'node:events';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { loadConfigFile } from '../../engine/config/load-config.ts';
import { parseToHand } from '../../engine/config/handed-parse.ts';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const ROOT = new URL('../../', import.meta.url).pathname;
// The modules a supervisor, a worker and the queue process start from, and `postern status`.
const ENTRIES = ['engine/cli/serve.ts', 'engine/cluster/supervisor.ts', 'engine/app/postern.ts', 'engine/cli/status.ts'];

test('starting the server\'s modules loads neither Node\'s fetch (undici), nor a second copy of smtp-server or nodemailer, nor what a process needs only later', () => {
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', `
    import { registerHooks } from 'node:module';
    const urls = [];
    registerHooks({ load(url, context, next) { urls.push(url); return next(url, context); } });
    for (const entry of ${JSON.stringify(ENTRIES)}) await import(${JSON.stringify(ROOT)} + entry);
    console.log(JSON.stringify({ undici: process.moduleLoadList.filter((m) => m.includes('undici')), urls }));
  `], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, NODE_NO_WARNINGS: '1' } });
  const loaded = JSON.parse(out.trim().split('\n').pop()!) as { undici: string[]; urls: string[] };
  assert.deepEqual(loaded.undici, [], 'undici loaded');
  const esm = loaded.urls.filter((u) => /node_modules\/(smtp-server|nodemailer)\/dist\/esm\//.test(u) && !/addressparser/.test(u));
  assert.deepEqual(esm, [], 'ES builds loaded beside the CommonJS ones');
  // What a process loads at start only for what it never does there (each a cut of the start's CPU; the file that
  // loads it later says why).
  const needless = loaded.urls.filter((u) => NOT_AT_START.some((re) => re.test(u)));
  assert.deepEqual(needless, [], 'loaded at start, needed later or never');
});

/**
 * prom-client's index (engine/metrics/prom-client-parts.ts: its Pushgateway, Summary and cluster aggregator,
 * ~20 ms of CPU a process; the aggregator is the supervisor's, loaded at its first scrape).
 * @opentelemetry/api: required by prom-client's process CPU counter for exemplars, never enabled (51 files, ~30 ms).
 * zod's locales but English (engine/config/zod.ts: 63 files, ~35 ms). nodemailer's SMTP client: loaded by the first
 * delivery (engine/delivery/connection-pool.ts), which a worker or a command never makes; its fetch (behind the shared
 * helpers smtp-server requires: engine/smtp/postern-server.ts). argon2: the first password check (password-hash.ts).
 * The quick start's text: the embedded configuration's start alone (engine/cli/serve.ts).
 * The PKI's index: its CA's issuing and revoking code, which a server never runs (postern.ts takes the parts it uses).
 */
const NOT_AT_START = [
  /node_modules\/prom-client\/index\.js$/, /node_modules\/prom-client\/lib\/(pushgateway|summary|cluster)\.js$/, /node_modules\/(tdigest|bintrees)\//,
  /node_modules\/@opentelemetry\//, /node_modules\/zod\/v4\/locales\/(?!en\.c?js$)/,
  /node_modules\/nodemailer\/dist\/cjs\/(smtp-connection|fetch)\//, /node_modules\/@node-rs\/argon2/,
  /engine\/cli\/quick-start\.ts$/, /engine\/pki\/(index|revoke|devices)\.ts$/,
];

test('@opentelemetry/api, left out at start, is the real package where something uses it', async () => {
  await import('../../engine/metrics/prom-client-parts.ts');
  const require = createRequire(createRequire(import.meta.url).resolve('prom-client/lib/metrics/processCpuTotal'));
  const api = require('@opentelemetry/api') as { trace: { getSpan: (context: unknown) => unknown }; context: { active: () => unknown } };
  assert.equal(typeof api.trace.getSpan, 'function');
  assert.equal(api.trace.getSpan(api.context.active()), undefined, 'no span outside a trace');
});

test('zod\'s locales, left out at start, are there for whoever asks; its JIT is off', async () => {
  const { z } = await import('../../engine/config/zod.ts');
  assert.equal(typeof z.locales.de, 'function');
  assert.ok('fr' in z.locales);
  assert.equal(z.string().safeParse(1).error?.issues[0]?.message, 'Invalid input: expected string, received number', 'English, as before');
  assert.equal(z.config().jitless, true, 'no parser compiled for a schema parsed once a start');
});

/**
 * The watchdog thread of every worker and queue process (engine/cluster/watchdog-thread.ts) is a Node bootstrap of its
 * own, started with each process: what its modules import is loaded there again. node:crypto (running-call.ts's
 * script hashes, fsync.ts's temporary names) cost each thread ~15 ms of CPU; the thread needs it only to write a crash
 * record, at a hang, when fsync.ts takes it.
 */
test('the watchdog thread starts without node:crypto', async () => {
  const sab = (): SharedArrayBuffer => new SharedArrayBuffer(64);
  const entry = new URL('../../engine/cluster/watchdog-thread.ts', import.meta.url).href;
  const thread = new Worker(`
    const { parentPort } = require('node:worker_threads');
    import(${JSON.stringify(entry)}).then(() => parentPort.postMessage(process.moduleLoadList.filter((m) => /crypto/.test(m))));
  `, { eval: true, workerData: { marker: sab(), heartbeat: sab(), crashDir: '/nonexistent', worker: 0, hangMs: 3_600_000, mirror: '/nonexistent/m', logBuffer: sab() } });
  try {
    const [loaded] = await once(thread, 'message') as [string[]];
    assert.deepEqual(loaded, [], 'node:crypto loaded on the watchdog thread at its start');
  } finally {
    await thread.terminate();
  }
});

/**
 * Each process of `postern serve` starts without what its role never does there (each its own process here, so that
 * what one role loaded is not taken for the other's). The queue process listens on nothing: no SMTP server
 * (smtp-server and the session's modules, ~60 files: ~45 ms of CPU at each of its starts), no policy service, no
 * shadow runner. A worker delivers nothing: no queue runner and delivery code (~30 files, ~13 ms). Neither serves HTTP
 * (node:http, ~25 ms: the supervisor's admin server) nor, without a policy service configured, loads its server.
 * Both start without argon2's native binding (the first password check loads it) and nodemailer's fetch (required
 * by the shared helpers smtp-server requires, for content given as a URL: node:http, node:https, node:zlib). And
 * handed their supervisor's parse of postern.yaml (engine/config/handed-parse.ts), without the YAML parser and zod.
 */
test('each process of the server starts without what its role does not do', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-startup-modules-'));
  try {
    await mkdir(join(dir, 'scripts'));
    const config = `dataDir: ${JSON.stringify(join(dir, 'data'))}\nscripts: ${JSON.stringify(join(dir, 'scripts'))}\nlocalDomains: [example.test]\nlisteners:\n  - name: in\n    listen: 127.0.0.1:2525\n`;
    const configPath = join(dir, 'postern.yaml');
    await writeFile(configPath, config);
    const handed = parseToHand(loadConfigFile(configPath));
    const started = (role: string): Record<string, number> => {
      const out = execFileSync(process.execPath, ['--input-type=module', '-e', `
        import { registerHooks } from 'node:module';
        const urls = [];
        registerHooks({ load(url, context, next) { urls.push(url); return next(url, context); } });
        const { startPostern } = await import(${JSON.stringify(`${ROOT}engine/app/postern.ts`)});
        const role = ${JSON.stringify(role)};
        const dataDir = ${JSON.stringify(join(dir, 'data'))};
        const running = await startPostern({ configPath: ${JSON.stringify(configPath)}, regularFileOnly: true, handed: ${JSON.stringify(handed)}, role, watch: false, workers: 1,
          lockDir: role === 'queue' ? dataDir + '/spool' : dataDir + '/spool/worker-0' });
        const count = (re) => urls.filter((u) => re.test(u)).length;
        console.log(JSON.stringify({ started: role,
          smtpServer: count(/node_modules\\/smtp-server\\//), queueRunner: count(/engine\\/(queue\\/runner|delivery\\/transaction)\\.ts$/),
          policyServer: count(/engine\\/policy-service\\/policy-server\\.ts$/), shadowRunner: count(/engine\\/shadow\\/shadow-runner\\.ts$/),
          nodemailerFetch: count(/node_modules\\/nodemailer\\/dist\\/cjs\\/fetch\\//), argon2: count(/node_modules\\/@node-rs\\/argon2/),
          http: process.moduleLoadList.filter((m) => m === 'NativeModule http').length, yamlAndZod: count(/node_modules\\/(yaml|zod)\\//) }));
        await running.close();
        process.exit(0);
      `], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, NODE_NO_WARNINGS: '1' } });
      return JSON.parse(out.trim().split('\n').find((l) => l.startsWith('{"started"'))!) as Record<string, number>;
    };
    const queue = started('queue');
    const worker = started('worker');
    assert.deepEqual({ ...queue, queueRunner: queue.queueRunner! > 0 },
      { started: 'queue', smtpServer: 0, queueRunner: true, policyServer: 0, shadowRunner: 0, nodemailerFetch: 0, argon2: 0, http: 0, yamlAndZod: 0 },
      'the queue process: loaded at start (its runner: the check can see it)');
    assert.deepEqual({ ...worker, smtpServer: worker.smtpServer! > 0, shadowRunner: worker.shadowRunner! > 0 },
      { started: 'worker', smtpServer: true, queueRunner: 0, policyServer: 0, shadowRunner: true, nodemailerFetch: 0, argon2: 0, http: 0, yamlAndZod: 0 },
      'a worker: loaded at start (smtp-server and the shadow runner: the check can see them)');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

/**
 * What the stand-ins put off is there where first used: nodemailer's fetch behind smtp-server's shared helpers, and
 * argon2 at the first password check (a hash made and checked).
 */
test('nodemailer\'s fetch and argon2, left out at start, work where used', async () => {
  await import('../../engine/smtp/postern-server.ts');
  const fromSmtpServer = createRequire(createRequire(import.meta.url).resolve('smtp-server'));
  const shared = createRequire(fromSmtpServer.resolve('nodemailer/lib/shared'));
  const fetch = shared('../fetch/index.js') as { default: unknown; Cookies?: unknown };
  assert.equal(typeof fetch.default, 'function');
  const { hashPassword, verifyPassword, readableHash } = await import('../../engine/auth/password-hash.ts');
  const phc = await hashPassword('secret');
  assert.ok(readableHash(phc));
  assert.equal(await verifyPassword(phc, 'secret'), true);
  assert.equal(await verifyPassword(phc, 'wrong'), false);
});
