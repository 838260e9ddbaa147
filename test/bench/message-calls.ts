/**
 * Developer aid: `node test/bench/message-calls.ts [<treeA> <treeB>]` — CPU per message of benchmark (a)'s three
 * per-message script calls (mailfrom, rcptto, data, with the bench's scripts and the contexts engine/smtp builds:
 * connection facts kept per key, a transaction, envelope addresses, headers) through Sandbox.invoke, with CONNS
 * (5) connections calling at once, so that each entry into the isolate runs five calls, about as under
 * `npm run bench`. No SMTP, TLS or spool: what the sandbox and the isolate cost per message, which the
 * benchmark's server CPU resolves only to a few percent on a shared machine. Median of ROUNDS (7) runs of
 * MESSAGES (6000) per tree, trees alternating, each in a process of its own. Default: this tree alone.
 * WARM (3000) messages are run first. NO_TX=1 leaves the transaction out of the contexts (what building and crossing it costs, at most); `--child
 * <tree>` runs one measurement and prints it.
 */
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { fork } from 'node:child_process';
import { median } from './measure.ts';

const MESSAGES = Number(process.env.MESSAGES ?? 6000);
const ROUNDS = Number(process.env.ROUNDS ?? 7);
const CONNS = Number(process.env.CONNS ?? 5);
/** Messages before measuring (the isolate's runtime reaches V8's optimising tier only after thousands of calls). */
const WARM = Number(process.env.WARM ?? 3000);

if (process.argv[2] === '--child') {
  const tree = process.argv[3]!;
  const load = (p: string) => import(pathToFileURL(resolve(tree, p)).href);
  const { Sandbox } = await load('engine/sandbox/index.ts');
  const { connectionKey, envelopeAddress } = await load('engine/smtp/script-context.ts');
  const { authContext, js, recordingHost } = await load('test/helpers/sandbox-fixtures.ts');
  const { BENCH_SCRIPTS } = await load('test/bench/bench-config.ts');
  const scripts = ['mailfrom', 'rcptto', 'data'].map((hook) => js(hook, BENCH_SCRIPTS[`${hook}.ts`]!));
  const sandbox = await Sandbox.create({ host: recordingHost({ senders: {} }), scripts, fastPathMs: 50 });
  const conns = Array.from({ length: CONNS }, (_, i) => {
    const connection = { ...authContext().connection, id: `conn${i}`, auth: { username: 'alice@example.com', mechanism: 'EXTERNAL' } };
    return { connection, key: connectionKey(connection) as string };
  });
  const parsed = (a: string) => ({ address: a, args: {} });
  let serial = 0;
  // NO_TX=1: contexts without their transaction (what it costs to send, at most).
  const tx = (t: object) => (process.env.NO_TX ? {} : { transaction: t });
  // One message on every connection at once: each step's calls share one entry, as connections' calls of one turn do.
  const messages = async (): Promise<void> => {
    const ids = conns.map(() => `0mxb2uod${(serial++).toString(36).padStart(11, '0')}`);
    const builtinSender = { accepted: true, reason: 'not-enforced' };
    const builtinRelay = { accepted: true, reason: 'local-domain' };
    await Promise.all(conns.map((c, i) => sandbox.invoke('mailfrom', {
      connection: c.connection, ...tx({ id: ids[i], sender: null, recipients: [] }), address: envelopeAddress(parsed('bench@example.com')), builtin: builtinSender,
    }, c.connection.id, c.key)));
    await Promise.all(conns.map((c, i) => sandbox.invoke('rcptto', {
      connection: c.connection, ...tx({ id: ids[i], sender: envelopeAddress(parsed('bench@example.com')), recipients: [] }),
      address: envelopeAddress(parsed('sink@example.com')), builtin: builtinRelay,
    }, c.connection.id, c.key)));
    await Promise.all(conns.map((c, i) => sandbox.invoke('data', {
      connection: c.connection,
      ...tx({ id: ids[i], sender: envelopeAddress(parsed('bench@example.com')), recipients: [envelopeAddress(parsed('sink@example.com'))] }),
      data: { size: 1073, headers: [['From', 'bench@example.com'], ['To', 'sink@example.com'], ['Subject', 'bench']] },
    }, c.connection.id, c.key)));
  };
  for (let i = 0; i < WARM; i += CONNS) await messages(); // warm-up
  const c0 = process.cpuUsage();
  for (let i = 0; i < MESSAGES; i += CONNS) await messages();
  const cu = process.cpuUsage(c0);
  const result = { us: (cu.user + cu.system) / MESSAGES, failures: (await sandbox.stats()).failures };
  if (process.send) process.send(result); else console.log(JSON.stringify(result));
  sandbox.dispose();
  process.exit(0);
}

const trees = process.argv.length > 2 ? process.argv.slice(2).map((t) => resolve(t)) : [resolve(import.meta.dirname, '../..')];
const results = trees.map(() => [] as number[]);
const runTree = (tree: string): Promise<{ us: number; failures: unknown }> => new Promise((done, fail) => {
  const child = fork(import.meta.filename, ['--child', tree], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  child.once('message', (m) => done(m as { us: number; failures: unknown }));
  child.once('exit', (code) => { if (code !== 0) fail(new Error(`${tree}: exit ${code}`)); });
});
for (let r = 0; r < ROUNDS; r++) {
  const order = r % 2 ? [...trees.keys()].reverse() : [...trees.keys()];
  for (const i of order) {
    const { us, failures } = await runTree(trees[i]!);
    results[i]!.push(us);
    if (r === 0) console.log(`${trees[i]}: failures ${JSON.stringify(failures)}`);
  }
  console.log(`round ${r + 1}: ${trees.map((_, i) => results[i]!.at(-1)!.toFixed(2)).join('  ')} µs/msg`);
}
for (let i = 0; i < trees.length; i++) {
  const s = [...results[i]!].sort((a, b) => a - b);
  console.log(`${trees[i]}: median ${median(results[i]!).toFixed(2)} µs/msg (${s[0]!.toFixed(2)}–${s.at(-1)!.toFixed(2)})${i > 0 ? `, ${(median(results[i]!) / median(results[0]!)).toFixed(3)} of A's` : ''}`);
}
