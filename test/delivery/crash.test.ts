// Crash safety: `postern serve` in a child process is killed with SIGKILL (twice) while it accepts and
// delivers a stream of messages; after each restart it picks up the spool. Every message that got its 250
// must reach the next hop at least once (duplicates are allowed, loss is not).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { Spool } from '../../engine/spool/spool.ts';
import { SpoolSet } from '../../engine/cluster/spool-set.ts';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { startSink } from '../helpers/sink.ts';
import { sleep } from '../helpers/delivery-server.ts';
import { configYaml, smarthostDelivery, testListener } from '../helpers/config.ts';

const MAIN = fileURLToPath(new URL('../../engine/cli/main.ts', import.meta.url));

async function serve(config: string): Promise<{ child: ChildProcess; port: number }> {
  const child = spawn(process.execPath, [MAIN, 'serve', '--config', config], { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout! });
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('server did not start within 60 s')), 60_000);
    child.once('exit', (code) => reject(new Error(`server exited ${code}`)));
    lines.on('line', (line) => {
      const m = /"msg":"listening"/.test(line) ? /"address":"127\.0\.0\.1:(\d+)"/.exec(line) : null;
      if (m) { clearTimeout(timer); resolve(Number(m[1])); }
    });
  });
  return { child, port };
}

function kill9(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', () => resolve());
    child.kill('SIGKILL');
  });
}

// The waits below are bounds on a server that stopped making progress, not on its speed: each ends as soon as its
// condition holds. They were 20 s for 120 messages, 40 s for every delivery and 10 s for the spool to drain, within
// a test limit of 110 s: what a loaded CI machine may need for the work itself.
test('kill -9 during accept and delivery loses no acknowledged message', { timeout: 300_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-crash-'));
  // A slow next hop, so a backlog builds up and the kills land in the middle of deliveries.
  const sink = await startSink({ dataDelayMs: 5 });
  const config = join(dir, 'postern.yaml');
  await mkdir(join(dir, 'scripts')); // named, so it must exist (empty: the built-in rules)
  await writeFile(config, configYaml({
    dataDir: join(dir, 'data'),
    scripts: join(dir, 'scripts'),
    log: { level: 'info' },
    localDomains: ['dest.test', 'other.test'],
    listeners: [testListener('in')],
    delivery: smarthostDelivery(sink.port, { concurrency: 4, perDestinationConcurrency: 2, retrySchedule: [0.2], scanIntervalMs: 200 }),
  }));
  const acked = new Set<string>();
  let next = 0;
  const target = { port: 0 };
  let running = true;
  // Clients keep sending; a connection that breaks (server killed) is retried against the current port.
  const clients = Array.from({ length: 6 }, async () => {
    while (running) {
      let c: SmtpTestClient | null = null;
      try {
        c = await SmtpTestClient.connect(target.port);
        await c.hello();
        for (let i = 0; i < 20 && running; i++) {
          const tag = `crash-${next++}`;
          const r = await c.sendMail('load@origin.test', ['r1@dest.test', 'r2@other.test'], `Subject: ${tag}\r\n\r\n${'x'.repeat(2000)}\r\n`);
          if (r.code === 250) acked.add(tag);
        }
        await c.quit();
      } catch {
        c?.destroy();
        await sleep(50);
      }
    }
  });
  let server: { child: ChildProcess; port: number } | null = null;
  // Reads what the server's processes wrote (every worker's spool), like `postern queue`; before the first
  // process has made its folders there is nothing yet.
  const spools = new SpoolSet(new Spool(join(dir, 'data', 'spool')));
  const spoolView = { list: () => spools.list().catch((err: NodeJS.ErrnoException) => (err.code === 'ENOENT' ? [] : Promise.reject(err))) };
  try {
    server = await serve(config);
    target.port = server.port;
    for (const round of [1, 2]) {
      const goal = acked.size + 120;
      const deadline = Date.now() + 90_000;
      while (acked.size < goal && Date.now() < deadline) await sleep(20);
      await kill9(server.child);
      const queued = (await spoolView.list()).length;
      assert.ok(acked.size >= goal - 10, `round ${round}: ${acked.size} acknowledged`);
      process.stderr.write(`# round ${round}: ${acked.size} acknowledged, ${sink.messages.length} at the sink, ${queued} in the spool at the kill\n`);
      server = await serve(config);
      target.port = server.port;
    }
    running = false;
    await Promise.all(clients);
    // Everything acknowledged arrives eventually.
    const seen = new Set<string>();
    let counted = 0;
    const missingNow = (): string[] => {
      for (; counted < sink.messages.length; counted++) seen.add(/Subject: (crash-\d+)/.exec(sink.messages[counted]!.data.toString('latin1'))?.[1] ?? '');
      return [...acked].filter((t) => !seen.has(t));
    };
    const deadline = Date.now() + 120_000;
    let missing = missingNow();
    while (missing.length && Date.now() < deadline) {
      await sleep(200);
      missing = missingNow();
    }
    assert.deepEqual(missing, [], `${missing.length} acknowledged messages never reached the next hop`);
    const copies = sink.messages.length;
    process.stderr.write(`# ${acked.size} acknowledged, ${copies} deliveries (${copies - seen.size} duplicates)\n`);
    // Every delivered message carried both recipients in one transaction.
    assert.ok(sink.messages.every((m) => m.to.length === 2));
    // And the spool drains.
    const drained = Date.now() + 60_000;
    while ((await spoolView.list()).length && Date.now() < drained) await sleep(100);
    assert.deepEqual(await spoolView.list(), []);
  } finally {
    running = false;
    if (server) await kill9(server.child);
    await sink.close();
    await rm(dir, { recursive: true, force: true });
  }
});
