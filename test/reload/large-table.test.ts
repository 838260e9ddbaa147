// A large lookup table (400,000 lines: seconds of parsing) reloaded under `postern serve`: every process
// reads it on the event loop that serves its sessions. The sessions must go on meanwhile, and no watchdog may take
// the busy loop for a hung script: before, every worker and the queue process were killed at once, with every
// connection. A YAML table's parse is a single call: it now runs on a thread of its own.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadTable } from '../../engine/policy/lookup-tables.ts';
import { loadUsersFile } from '../../engine/auth/users-file.ts';
import { startCluster, greeted, ONE_WORKER, type ClusterProcess } from '../helpers/cluster.ts';

const ENTRIES = 400_000;
/**
 * A YAML table is parsed in one call by the yaml package: on the event loop, 40,000 entries here already got the
 * processes killed as hung (30,000 did not). This many leaves a margin on a faster machine.
 */
const YAML_ENTRIES = 100_000;
/** The worker and the queue process. */
const PROCESSES = 2;

/** The content digest every one of the `count` processes runs, once they agree. */
async function agreedDigest(c: ClusterProcess, count: number): Promise<string> {
  const r = await c.waitFor('every process on the small table', async () => {
    const reload = (await c.cluster()).reload;
    return Object.keys(reload.processes).length === count && reload.converged && reload;
  });
  return Object.values(r.processes)[0]!.digest;
}

/** Until all `count` processes run a generation built from other content than `digest`, without a refusal. */
async function allMovedFrom(c: ClusterProcess, count: number, digest: string): Promise<void> {
  await c.waitFor('every process on the large table', async () => {
    const r = (await c.cluster()).reload;
    return Object.keys(r.processes).length === count && Object.values(r.processes).every((p) => p.digest !== digest && p.lastError === null);
  }, 240_000);
}

/** Writes `text` beside `file` and renames it over: the table changes in one step. */
async function replaceFile(file: string, text: string): Promise<void> {
  await writeFile(`${file}.new`, text);
  await rename(`${file}.new`, file);
}

/**
 * One server for both reloads under postern serve, with one worker and the queue process: each parses the table on
 * its own loop, and a second worker would only repeat the first one's parse. It starts on a small Postfix table;
 * the YAML test then names its YAML table in the configuration instead (no longer reading the large Postfix one).
 */
let c: ClusterProcess;
before(async () => {
  c = await startCluster({ config: `${ONE_WORKER}tables:\n  senders: ./senders\n`, files: { senders: 'a@example.test a\n' } });
});
after(async () => { await c.stop(); });

/**
 * Makes a change with `change` while a transaction is open: it completes, every process takes the new table, none
 * is replaced or reported hung.
 */
async function reloadDuringTransaction(change: () => Promise<void>): Promise<void> {
  const restarts = async (): Promise<number> => (await c.cluster()).processes.reduce((n, p) => n + p.restarts, 0);
  const digest = await agreedDigest(c, PROCESSES);
  const client = await greeted(c);
  try {
    assert.equal((await client.command('MAIL FROM:<sender@example.test>')).code, 250);
    assert.equal((await client.command('RCPT TO:<someone@example.test>')).code, 250);

    await change();
    await allMovedFrom(c, PROCESSES, digest);

    assert.equal((await client.command('DATA')).code, 354, 'the session lived through the reload');
    client.write('Subject: during a reload\r\n\r\nhello\r\n.');
    const end = await client.read();
    assert.equal(end.code, 250, end.text);
    assert.equal(await restarts(), 0, `no process was replaced: ${JSON.stringify((await c.cluster()).processes.map((p) => [p.role, p.index, p.restarts]))} ${c.logs.filter((l) => (l.level as number) >= 40).map((l) => l.msg).join(' | ')}`);
    assert.ok(!c.logs.some((l) => /hung/.test(String(l.msg))), 'no hang reported');
  } finally {
    client.destroy();
  }
}

test('a 400,000-line table reloaded under postern serve: a transaction open meanwhile completes, no process is replaced', { timeout: 300_000 }, async () => {
  const lines: string[] = [];
  for (let i = 0; i < ENTRIES; i++) lines.push(`user${i}@example.test user${i}`);
  await reloadDuringTransaction(() => replaceFile(join(c.dir, 'senders'), `${lines.join('\n')}\n`));
});

test(`a YAML table of ${YAML_ENTRIES.toLocaleString('en')} entries reloaded under postern serve: its parse (one call) holds no process until it is killed as hung`, { timeout: 120_000 }, async () => {
  const lines: string[] = [];
  for (let i = 0; i < YAML_ENTRIES; i++) lines.push(`user${i}@example.test: user${i}`);
  await writeFile(join(c.dir, 'senders.yaml'), `${lines.join('\n')}\n`, { mode: 0o600 });
  const config = join(c.dir, 'postern.yaml');
  const text = await readFile(config, 'utf8');
  assert.match(text, /^  senders: \.\/senders$/m);
  await reloadDuringTransaction(() => replaceFile(config, text.replace(/^  senders: \.\/senders$/m, '  senders: { file: ./senders.yaml, format: yaml }')));
  await c.stop(); // the tests below need no server: not left idle through them
});

test('a YAML table of 50,000 entries loads in one go (the key check compared each key with all before it: over a minute)', { timeout: 300_000 }, async () => {
  // A guard, not a measure: linear now, about a second here; quadratic before (30,000 entries: 28 s here), far past it.
  // Counted in this process's CPU time (the parse runs on a thread of it), not wall time: the test's own 20 s timeout
  // was the guard, and a loaded machine (four test files beside other work, load 15-20) stretched a second past it.
  const dir = await mkdtemp(join(tmpdir(), 'postern-yaml-table-'));
  try {
    const file = join(dir, 'senders.yaml');
    await writeFile(file, Array.from({ length: 50_000 }, (_, i) => `user${i}@example.test: user${i}\n`).join(''));
    const cpu = process.cpuUsage();
    const table = await loadTable('senders', { file, format: 'yaml', caseSensitive: false });
    const { user, system } = process.cpuUsage(cpu);
    assert.ok((user + system) / 1e6 < 20, `50,000 entries took ${((user + system) / 1e6).toFixed(1)} s of CPU time`);
    assert.equal(table.size, 50_000);
    assert.equal(table.get('USER49999@example.test'), 'user49999');
    // Keys given twice are still refused, at the later one's line.
    await writeFile(file, 'a@example.test: 1\nb@example.test: 2\na@example.test: 3\n');
    await assert.rejects(loadTable('senders', { file, format: 'yaml', caseSensitive: false }), /senders\.yaml:3: duplicate key a@example\.test$/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a JSON table with a key given twice is refused at the later one\'s line, as YAML and Postfix tables are (JSON.parse kept the last)', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-json-table-'));
  try {
    const file = join(dir, 'senders.json');
    // The same key inside a nested value or a string is no top-level key; \u0061 is the same key as a.
    await writeFile(file, '{\n  "a@example.test": "1",\n  "b": {"a@example.test": "x", "c": ["{\\"", "a"]},\n  "c\\\\": "a@example.test",\n  "\\u0061@example.test": "3"\n}\n');
    await assert.rejects(loadTable('senders', { file, format: 'json', caseSensitive: true }), /senders\.json:5: duplicate key a@example\.test$/);
    await writeFile(file, '{"a@example.test": "1", "b@example.test": {"a@example.test": "2"}, "c\\"": "{"}');
    await assert.rejects(loadTable('senders', { file, format: 'json', caseSensitive: true }), /senders\.json: value of b@example\.test must be a scalar$/);
    await writeFile(file, '{"a@example.test": "1", "b@example.test": "2"}');
    assert.equal((await loadTable('senders', { file, format: 'json', caseSensitive: true })).size, 2);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a users file of 300,000 users is read giving way to the sessions (it was one stretch: a million users held the loop a second)', { timeout: 60_000 }, async () => {
  // Measured against the load itself, in the event-loop thread's CPU time (a loaded machine that deschedules the
  // thread stretches wall time, not this): before, its longest stretch without a turn was nearly all of it.
  const dir = await mkdtemp(join(tmpdir(), 'postern-users-file-'));
  try {
    const file = join(dir, 'users');
    const hash = '$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$QmFzZTY0SGFzaEJhc2U2NEhhc2hCYXNlNjRIYXNo';
    await writeFile(file, Array.from({ length: 300_000 }, (_, i) => `user${i}@example.test:${hash}\n`).join(''));
    const cpuMs = (): number => { const u = process.threadCpuUsage(); return (u.user + u.system) / 1000; };
    let longest = 0;
    let last = cpuMs();
    const turns = setInterval(() => { const now = cpuMs(); longest = Math.max(longest, now - last); last = now; }, 1);
    const started = cpuMs();
    const users = await loadUsersFile(file).finally(() => clearInterval(turns));
    const took = cpuMs() - started;
    longest = Math.max(longest, cpuMs() - last);
    assert.equal(users.size, 300_000);
    assert.ok(longest < took / 2, `the longest stretch without a turn was ${Math.round(longest)} ms of CPU of ${Math.round(took)} ms`);
    // Errors still name the line, and a user given twice is still refused.
    await writeFile(file, `a@example.test:${hash}\n# comment\r\nA@example.test:${hash}\n`);
    await assert.rejects(loadUsersFile(file), /users:3: duplicate user a@example\.test$/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
