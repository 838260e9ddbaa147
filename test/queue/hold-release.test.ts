// `postern queue hold | release | show` (Postfix postsuper -h/-H, postcat) with the real command line (each case's
// first run of each command; its further variants call the commands' functions in this process: a process each,
// ~0.3 s of CPU mostly module loading, proved nothing more) against a running server that delivers to a real next hop on 127.0.0.1: a held message is never
// attempted (not by `retry --all`, not when it was already due), is marked in the listing, and is delivered
// once released; every operation is logged by the server with who ran it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { chmod, chown, readdir, stat } from 'node:fs/promises';
import { tmpdir, userInfo } from 'node:os';
import { execFile, spawnSync } from 'node:child_process';
import { startSink, type Sink } from '../helpers/sink.ts';
import { startDeliveryServer, type DeliveryServer } from '../helpers/delivery-server.ts';
import { runCli, type CliResult } from '../helpers/cli.ts';
import { runInProcess } from '../helpers/cli-in-process.ts';
import { queueActionCommand, queueListCommand, queueShowCommand, type QueueAction } from '../../engine/cli/queue.ts';
import { until } from '../helpers/wait.ts';
import { configYaml, smarthostDelivery, testListener } from '../helpers/config.ts';

let sink: Sink;
let s: DeliveryServer;
/** Recipients the next hop defers (451) while their local part starts with `slow`. */
let deferring = true;

before(async () => {
  sink = await startSink({ decide: (stage, address) => (stage === 'rcpt' && deferring && address.startsWith('slow') ? { code: 451, text: '4.2.0 Not now' } : null) });
  s = await startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      delivery: smarthostDelivery(sink.port, { retrySchedule: [3600], scanIntervalMs: 200 }),
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
  });
});
after(async () => {
  await s?.stop();
  await sink?.close();
});

const MAIN = new URL('../../engine/cli/main.ts', import.meta.url).pathname;
const cli = (...args: string[]): Promise<CliResult> => runCli(['queue', ...args, '-c', join(s.dir, 'postern.yaml')]);
/** cli's list, show and the actions (ids, --all, --from, --to), through the commands' functions in this process. */
const here = (command: string, ...args: string[]): Promise<CliResult> => {
  const config = join(s.dir, 'postern.yaml');
  const value = (name: string): string | undefined => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
  const ids = args.filter((a, i) => !a.startsWith('--') && args[i - 1] !== '--from' && args[i - 1] !== '--to');
  if (command === 'list') return runInProcess(() => queueListCommand({ config, json: args.includes('--json') || undefined }));
  if (command === 'show') return runInProcess(() => queueShowCommand(ids[0]!, { config, envelope: args.includes('--envelope') || undefined, json: args.includes('--json') || undefined }));
  return runInProcess(() => queueActionCommand(command as QueueAction, ids, { config, all: args.includes('--all') || undefined, from: value('--from'), to: value('--to') }));
};
const attemptsOf = (id: string): number => s.attempts.filter((e) => e.id === id).length;

test('hold, list, show, retry --all passes it over, release delivers it; unknown ids are named', async () => {
  deferring = true;
  const held = await s.send('me@origin.test', ['slow1@dest.test']);
  const other = await s.send('me@origin.test', ['slow2@dest.test']);
  for (const id of [held, other]) await s.nextAttempt((e) => e.id === id, { past: true });

  const hold = await cli('hold', held);
  assert.equal(hold.code, 0, hold.stderr);
  assert.equal(hold.stdout, `1 message placed on hold: ${held}\n`);
  const again = await here('hold', held);
  assert.equal(again.code, 0);
  assert.match(again.stderr, new RegExp(`${held}: already on hold`));

  const list = await cli(); // `postern queue` alone lists, like mailq
  assert.equal(list.code, 0, list.stderr);
  assert.match(list.stdout, new RegExp(`^${held}! +\\d+ `, 'm'));
  assert.match(list.stdout, new RegExp(`^${other} +\\d+ `, 'm'));
  assert.match(list.stdout, /^-- 2 messages, 1 held \(!\)$/m);
  const json = JSON.parse((await here('list', '--json')).stdout) as { messages: Array<{ id: string; held: boolean }> };
  assert.deepEqual(json.messages.map((m) => [m.id, m.held]), [[held, true], [other, false]]);

  const show = await cli('show', held);
  assert.equal(show.code, 0, show.stderr);
  assert.match(show.stdout, new RegExp(`^\\*\\*\\* ENVELOPE RECORDS ${held} \\*\\*\\*\n`));
  assert.match(show.stdout, /^sender: me@origin\.test$/m);
  assert.match(show.stdout, new RegExp(`^held: yes, since \\S+ by ${userInfo().username} \\(postern queue release ${held}\\)$`, 'm'));
  assert.match(show.stdout, /^attempts: 1$/m);
  assert.match(show.stdout, /^recipient: slow1@dest\.test \(pending\)\n {2}last_error: 451 4\.2\.0 Not now$/m);
  assert.match(show.stdout, new RegExp(`\\*\\*\\* MESSAGE CONTENTS ${held} \\*\\*\\*\n[^]*\r\nSubject: test\r\n\r\nhello\r\n\\*\\*\\* END OF MESSAGE ${held} \\*\\*\\*\n$`));
  const envelopeOnly = await here('show', held, '--envelope');
  assert.doesNotMatch(envelopeOnly.stdout, /MESSAGE CONTENTS/);
  const asJson = JSON.parse((await here('show', held, '--json')).stdout) as { held: { by: { user: string } } | null; attempts: number };
  assert.equal(asJson.held!.by.user, userInfo().username);
  assert.equal(asJson.attempts, 1);

  // The next hop takes everything now: retry --all makes the other due and passes the held one over.
  deferring = false;
  const retry = await cli('retry', '--all');
  assert.equal(retry.code, 0, retry.stderr);
  assert.equal(retry.stdout, `1 message due now: ${other}\n`);
  assert.match(retry.stderr, new RegExp(`${held}: on hold, left as it is`));
  await s.nextAttempt((e) => e.id === other && e.removed, { past: true });
  // Due now as well (as if its retry time had come): still not attempted while held.
  const state = (await s.spools.readState(held))!;
  await s.spools.updateState(held, { ...state, nextAttemptAt: new Date().toISOString() });
  await s.spools.requestRescan();
  await s.scans(2); // whole scans after the rescan: the held one was read, due, and passed over
  assert.equal(attemptsOf(held), 1, 'a held message is not attempted');
  assert.ok(!sink.messages.some((m) => m.to.includes('slow1@dest.test')));

  const release = await cli('release', held);
  assert.equal(release.code, 0, release.stderr);
  assert.equal(release.stdout, `1 message released from hold (due now): ${held}\n`);
  const done = await s.nextAttempt((e) => e.id === held && e.removed, { past: true });
  assert.equal(done.attempt, 2);
  assert.deepEqual(sink.messages.at(-1)!.to, ['slow1@dest.test']);

  // Gone, malformed and not held: each named, exit status 1 for what is not in the queue.
  for (const op of ['hold', 'release', 'show']) {
    const missing = await here(op, held);
    assert.equal(missing.code, 1, `${op} of a message no longer queued`);
    assert.match(missing.stderr, new RegExp(`${held}: no such message in the queue`));
  }
  const malformed = await here('hold', '../etc');
  assert.equal(malformed.code, 1);
  assert.match(malformed.stderr, /not a queue id: "\.\.\/etc"/);
  const typo = await cli('hodl', held);
  assert.equal(typo.code, 1, 'a mistyped command is not taken for a listing');
  assert.match(typo.stderr, /unknown queue command: hodl/);
  const nothing = await cli('hold');
  assert.equal(nothing.code, 1);
  assert.match(nothing.stderr, /needs message ids, or --all, --from, --to or --certificate/);

  const logged = (op: string, id: string): Record<string, unknown> | undefined => s.logs.find((l) => l.op === op && l.id === id);
  await until('hold and release logged', () => !!logged('hold', held) && !!logged('release', held), { timeoutMs: 30_000 });
  const user = userInfo().username;
  assert.match(String(logged('hold', held)!.msg), new RegExp(`^${held}: placed on hold by postern queue hold \\(${user}, uid ${userInfo().uid}, pid \\d+ on \\S+\\) at \\S+$`));
  assert.match(String(logged('release', held)!.msg), new RegExp(`^${held}: released from hold by postern queue release \\(${user}, `));
  assert.equal((logged('hold', held)!.by as { user: string }).user, user);
});

test('hold by sender or recipient, ids from stdin, release --all; delete removes a held message', async () => {
  deferring = true;
  const fromA = await s.send('alice@a.test', ['slow3@dest.test']);
  const toB = await s.send('bob@b.test', ['slow4@b.test', 'slow5@dest.test']);
  const bystander = await s.send('carol@c.test', ['slow6@dest.test']);
  for (const id of [fromA, toB, bystander]) await s.nextAttempt((e) => e.id === id, { past: true });

  const bySender = await cli('hold', '--from', 'a.test');
  assert.equal(bySender.stdout, `1 message placed on hold: ${fromA}\n`);
  const byRecipient = await here('hold', '--to', 'slow4@B.test');
  assert.equal(byRecipient.stdout, `1 message placed on hold: ${toB}\n`);
  const none = await here('hold', '--from', 'nobody@a.test');
  assert.equal(none.code, 0);
  assert.equal(none.stdout, '0 messages placed on hold\n');
  const bothWays = await cli('hold', bystander, '--all');
  assert.equal(bothWays.code, 1, 'ids and a filter at once are refused');

  const list = (await cli('list')).stdout;
  assert.match(list, new RegExp(`^${fromA}! `, 'm'));
  assert.match(list, new RegExp(`^${toB}! `, 'm'));
  assert.match(list, new RegExp(`^${bystander} `, 'm'));

  // An id copied from the listing, held mark and all.
  const shown = await cli('show', `${fromA}!`, '--envelope');
  assert.equal(shown.code, 0, shown.stderr);
  assert.match(shown.stdout, /^held: /m);

  // Ids on stdin, as `postsuper -H -` reads them: here the listing's first column, marks included.
  const listed = list.split('\n').map((l) => l.split(' ')[0]!).filter((i) => i.startsWith(fromA));
  assert.deepEqual(listed, [`${fromA}!`]);
  const fromStdin = await runCli(['queue', 'release', '-', '-c', join(s.dir, 'postern.yaml')], { input: `${listed[0]}\n` });
  assert.equal(fromStdin.code, 0, fromStdin.stderr);
  assert.equal(fromStdin.stdout, `1 message released from hold (due now): ${fromA}\n`);

  const del = await cli('delete', toB);
  assert.equal(del.code, 0, del.stderr);
  assert.equal((await here('release', '--all')).stdout, '0 messages released from hold (due now)\n', 'deleting a held message takes its hold too');

  deferring = false;
  assert.equal((await cli('retry', '--all')).code, 0);
  for (const id of [fromA, bystander]) await s.nextAttempt((e) => e.id === id && e.removed, { past: true });
  await s.scans(1);
  assert.equal((await here('list')).stdout, 'Mail queue is empty\n');
  assert.equal(attemptsOf(toB), 1, 'the deleted held message was never attempted again');
});

const RETRY_AFTER_S = 4;
test('a hold made while the message waits for its retry time stops that attempt, before any rescan', async () => {
  deferring = true;
  const sink2 = await startSink({ decide: (stage) => (stage === 'rcpt' && deferring ? { code: 451, text: '4.2.0 Not now' } : null) });
  // No periodic rescan during the test: only the check made when the attempt is due can see the hold.
  const s2 = await startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      // The retry 4 s after the first attempt (it was 10 s, waited out in full): the hold, a write of the message's state
      // made as that attempt is recorded, lands long before; the check at the due time is what is tested.
      delivery: smarthostDelivery(sink2.port, { retrySchedule: [RETRY_AFTER_S], scanIntervalMs: 3_600_000 }),
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
  });
  try {
    let holding: Promise<void> | null = null;
    s2.queue!.onAttempt((e) => {
      // Held as soon as its first attempt is recorded: RETRY_AFTER_S before the retry is due.
      if (e.attempt === 1 && !holding) holding = s2.spools.hold(e.id, { at: new Date().toISOString(), by: null });
    });
    const id = await s2.send('me@origin.test', ['slow7@dest.test']);
    await s2.nextAttempt((e) => e.id === id, { past: true });
    await holding;
    await until('the due attempt passed over', () => s2.logs.some((l) => l.id === id && l.held === true), { timeoutMs: 60_000 });
    assert.equal(s2.attempts.filter((e) => e.id === id).length, 1, 'no second attempt');
    assert.match(String(s2.logs.find((l) => l.id === id && l.held === true)!.msg), new RegExp(`^${id}: on hold, not attempted until released`));
  } finally {
    await s2.stop();
    await sink2.close();
  }
});

test('delete and retry take ids, `-` and the same selections (postsuper -d, postqueue -s)', async () => {
  deferring = true;
  const spam1 = await s.send('spam@junk.test', ['slow10@dest.test']);
  const spam2 = await s.send('spam@junk.test', ['slow11@dest.test']);
  const wanted = await s.send('friend@good.test', ['slow12@other.test']);
  for (const id of [spam1, spam2, wanted]) await s.nextAttempt((e) => e.id === id, { past: true });

  const purge = await cli('delete', '--from', 'junk.test');
  assert.equal(purge.code, 0, purge.stderr);
  assert.equal(purge.stdout, `${spam1}: deleted\n${spam2}: deleted\n`);
  const again = await runCli(['queue', 'delete', '-', '-c', join(s.dir, 'postern.yaml')], { input: `${spam1}\n` });
  assert.equal(again.code, 1, 'gone already');
  assert.match(again.stderr, new RegExp(`${spam1}: no such message in the queue`));

  deferring = false;
  assert.equal((await cli('retry', '--to', 'dest.test')).stdout, '0 messages due now\n', 'nothing left for dest.test');
  const flush = await here('retry', '--to', 'other.test');
  assert.equal(flush.stdout, `1 message due now: ${wanted}\n`);
  await s.nextAttempt((e) => e.id === wanted && e.removed, { past: true });
  for (const id of [spam1, spam2]) assert.equal(attemptsOf(id), 1, 'a deleted message is not attempted again');
  const logged = (): number => s.logs.filter((l) => l.op === 'delete' && (l.id === spam1 || l.id === spam2)).length;
  await until('both deletions logged', () => logged() === 2, { timeoutMs: 30_000 });
});

const NOBODY = 65534;
/** Give every path under `dir` (the folder itself included) to `uid`; one the running server removes meanwhile is passed over. */
async function chownAll(dir: string, uid: number): Promise<void> {
  const gone = (err: NodeJS.ErrnoException): void => { if (err.code !== 'ENOENT') throw err; };
  await chown(dir, uid, uid).catch(gone);
  const entries = await readdir(dir, { withFileTypes: true }).catch((err: NodeJS.ErrnoException) => { gone(err); return []; });
  for (const e of entries) {
    if (e.isDirectory()) await chownAll(join(dir, e.name), uid);
    else await chown(join(dir, e.name), uid, uid).catch(gone);
  }
}

test('run as root on a spool another user owns, the command writes files that user can read, and the log names root', { skip: process.getuid?.() !== 0 ? 'needs root (sudo postern queue …)' : false }, async () => {
  deferring = true;
  const a = await s.send('me@origin.test', ['slow8@dest.test']);
  const b = await s.send('me@origin.test', ['slow9@dest.test']);
  for (const id of [a, b]) await s.nextAttempt((e) => e.id === id, { past: true });
  const data = join(s.dir, 'data');
  await chmod(s.dir, 0o755); // the way to it open, as /var/lib is
  // As if the server ran as an unprivileged user. (This test's server runs as root: what it writes from here
  // on is root's, so the commands below touch only files written before or by themselves.)
  await chownAll(data, NOBODY);
  const hold = await cli('hold', a);
  assert.equal(hold.code, 0, hold.stderr);
  for (const file of [s.spools.home.heldPath(a), join(data, 'spool', 'rescan'), join(data, 'spool', 'operations')]) {
    const st = await stat(file);
    assert.deepEqual([st.uid, st.gid], [NOBODY, NOBODY], `${file} belongs to the spool's owner`);
  }
  await until('hold logged', () => s.logs.some((l) => l.op === 'hold' && l.id === a), { timeoutMs: 30_000 });
  const by = s.logs.find((l) => l.op === 'hold' && l.id === a)!.by as { user: string; uid: number };
  assert.deepEqual([by.user, by.uid], ['root', 0], 'the log names who ran it, not the user it acted as');

  await chownAll(data, 0); // the server's files again
  deferring = false;
  const release = await cli('release', a);
  assert.equal(release.code, 0, release.stderr);
  assert.equal((await cli('delete', b)).code, 0);
  await s.nextAttempt((e) => e.id === a && e.removed, { past: true });
});

/** Whether the user nobody can run the command line of this checkout (not when it lies under a private folder). */
const NOBODY_RUNS_CLI = process.getuid?.() === 0 && spawnSync('setpriv', [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', process.execPath, '-e',
  `require('node:fs').accessSync(${JSON.stringify(MAIN)}, require('node:fs').constants.R_OK)`], { timeout: 60_000 }).status === 0;

test('another unprivileged user is refused by the spool\'s modes and told whose rights the command needs', {
  skip: process.getuid?.() !== 0 ? 'needs root (to run the command as nobody)' : !NOBODY_RUNS_CLI ? 'this checkout is not readable by nobody' : false,
}, async () => {
  deferring = true;
  const id = await s.send('me@origin.test', ['slow13@dest.test']);
  await s.nextAttempt((e) => e.id === id, { past: true });
  await chmod(s.dir, 0o755); // the way to the spool open, as /var/lib is; the spool itself is the server's (0700)
  const asNobody = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
    execFile('setpriv', [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', process.execPath, MAIN, 'queue', 'hold', id, '-c', join(s.dir, 'postern.yaml')],
      { cwd: tmpdir(), env: { ...process.env, NODE_NO_WARNINGS: '1' }, timeout: 60_000 }, (err, _stdout, stderr) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stderr }));
  });
  assert.equal(asNobody.code, 1);
  assert.match(asNobody.stderr, /EACCES[^\n]*\(postern queue needs the rights of the user the server runs as: run it as that user, or as root\)/);
  assert.equal(await s.spools.isHeld(id), false);
  assert.equal((await cli('delete', id)).code, 0);
});
