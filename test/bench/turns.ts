/**
 * Developer aid: `node test/bench/turns.ts <treeA> [<treeB>…]` counts the event-loop turns a command costs:
 * from smtp-server reading `MAIL FROM` (and `RCPT TO`) to its reply, in each tree's server under benchmark (a)
 * whose mailfrom script awaits rate() (TURNS_RATE=redis, the default, or memory). A `setImmediate` ticker
 * preloaded into the server counts check phases; a reply made in the turn's own check phase counts 1 (the
 * ticker runs first there), one made in the next turn's poll phase (an answer read from Redis) counts 1 too,
 * one made after the next check phase 2. The ticker keeps the loop from sleeping, so rates here mean nothing;
 * the shares of commands by turns are the figure (load-independent). ROUNDS (2) × MESSAGES (2000).
 * A tree written `<tree>@none|async|memory|redis` runs that mailfrom script instead (none: (a)'s own; async: made
 * async without a store call), e.g. `node test/bench/turns.ts .@none .@async .@memory`.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { makeTestPki } from '../helpers/pki.ts';
import { startRedis } from '../helpers/redis-server.ts';
import { ASYNC_MAILFROM, BENCH_SCRIPTS, RATE_MAILFROM, benchConfig, benchPort, writeBenchFolder } from './bench-config.ts';
import { load } from './measure.ts';

const args = process.argv.slice(2).map((a) => { const at = a.lastIndexOf('@'); return at > 0 ? { tree: resolve(a.slice(0, at)), rate: a.slice(at + 1) } : { tree: resolve(a), rate: process.env.TURNS_RATE ?? 'redis' }; });
if (args.length === 0) throw new Error('usage: node test/bench/turns.ts <tree>[@none|async|memory|redis] […]');
for (const a of args) if (!['none', 'async', 'memory', 'redis'].includes(a.rate)) throw new Error(`${a.rate}: none, async, memory or redis`);
const rounds = Number(process.env.ROUNDS ?? 2);
const messages = Number(process.env.MESSAGES ?? 2000);
const withRedis = args.some((a) => a.rate === 'redis');
const pki = await makeTestPki();
const redis = withRedis ? await startRedis() : null;
const work = await mkdtemp(join(tmpdir(), 'postern-turns-'));
const hook = join(work, 'turns-hook.mjs');
await writeFile(hook, `const { SMTPConnection } = await import(process.env.TURNS_SMTP_CONNECTION);
let turn = 0;
const tick = () => { turn++; setImmediate(tick); };
setImmediate(tick);
const started = new WeakMap();
const counts = {};
const onCommand = SMTPConnection.prototype._onCommand;
SMTPConnection.prototype._onCommand = function (command, callback) {
  const verb = String(command).slice(0, 4).toUpperCase();
  if (verb === 'MAIL' || verb === 'RCPT') started.set(this, [verb, turn]);
  return onCommand.call(this, command, callback);
};
const send = SMTPConnection.prototype.send;
SMTPConnection.prototype.send = function (...args) {
  const s = started.get(this);
  if (s) {
    started.delete(this);
    const byTurns = (counts[s[0]] ??= {});
    byTurns[turn - s[1]] = (byTurns[turn - s[1]] ?? 0) + 1;
  }
  return send.apply(this, args);
};
process.on('message', (m) => {
  if (m !== 'turns') return;
  process.send({ turns: structuredClone(counts) });
  for (const k of Object.keys(counts)) delete counts[k];
});
`);

const servers: Array<{ name: string; child: ChildProcess; port: number }> = [];
process.on('exit', () => { for (const s of servers) s.child.kill('SIGKILL'); if (redis?.pid) process.kill(redis.pid, 'SIGKILL'); });
const turnsOf = (child: ChildProcess): Promise<Record<string, Record<string, number>>> =>
  new Promise((r) => { child.once('message', (m) => r((m as { turns: Record<string, Record<string, number>> }).turns)); child.send('turns'); });
for (const [i, { tree, rate }] of args.entries()) {
  const dir = join(work, String(i));
  const mailfrom = rate === 'none' ? BENCH_SCRIPTS['mailfrom.ts']! : rate === 'async' ? ASYNC_MAILFROM : RATE_MAILFROM;
  await writeBenchFolder(dir, { ...BENCH_SCRIPTS, 'mailfrom.ts': mailfrom });
  const port = benchPort();
  const store = rate === 'redis' ? `store: { redis: { url: "${redis!.url}", keyPrefix: "t${i}:", timeoutMs: 1000 } }\n` : '';
  const child = fork(join(tree, 'test/bench/postern-server.ts'), [JSON.stringify({ configText: benchConfig(dir, port, pki) + 'sandbox: { timeoutMs: 2000 }\n' + store, baseDir: dir })], {
    execArgv: ['--import', hook], env: { ...process.env, TURNS_SMTP_CONNECTION: join(tree, 'node_modules/smtp-server/dist/esm/smtp-connection.js') },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  await new Promise((r) => child.once('message', r));
  servers.push({ name: `${tree} (${rate})`, child, port });
  // Warm-up; a Redis store connects in the background and refuses until then.
  for (let attempt = 1; ; attempt++) {
    try {
      await load(pki, port, 100, 1000, true);
      break;
    } catch (err) {
      if (attempt === 5) throw err;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
  await turnsOf(child);
}
/** Shares of commands by turns, the largest first (a few outliers waited long, spinning the ticker). */
const shares = (byTurns: Record<string, number> = {}): string => {
  const n = Object.values(byTurns).reduce((a, b) => a + b, 0);
  return Object.entries(byTurns).sort((a, b) => b[1] - a[1]).slice(0, 3).map(([t, c]) => `${t}: ${(c / n).toFixed(2)}`).join(', ');
};
console.log(`turns from a command to its reply (share of commands, the 3 commonest), ${rounds} × ${messages} messages`);
for (let round = 0; round < rounds; round++) {
  for (const s of servers) {
    await load(pki, s.port, 100, messages, true);
    const t = await turnsOf(s.child);
    console.log(`${s.name}\tMAIL FROM ${shares(t.MAIL)}\tRCPT TO ${shares(t.RCPT)}`);
  }
}
for (const s of servers) s.child.kill('SIGKILL');
servers.length = 0;
await redis?.stop();
await rm(work, { recursive: true, force: true });
