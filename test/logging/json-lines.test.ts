/**
 * The log is for machines too (jq, Loki, fail2ban): every line `postern serve` writes, from every process,
 * is one JSON object with an ISO-8601 time and each key once. A key twice (a child logger's binding over its
 * parent's, a field named like a base field) is valid JSON, but which value a reader keeps is its own choice:
 * the supervisor wrote the child's pid over its own, and `component` as both `supervisor` and `reload`.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startCluster } from '../helpers/cluster.ts';
import { startSink } from '../helpers/sink.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { configYaml, smarthostDelivery, testListener } from '../helpers/config.ts';

/** The keys of a JSON object's top level, in order, duplicates included (JSON.parse keeps only the last). */
function topLevelKeys(line: string): string[] {
  const keys: string[] = [];
  let depth = 0;
  for (let i = 0; i < line.length; i++) {
    const ch = line[i];
    if (ch === '"') {
      let j = i + 1;
      while (line[j] !== '"') j += line[j] === '\\' ? 2 : 1;
      if (depth === 1 && line[j + 1] === ':') keys.push(line.slice(i + 1, j));
      i = j;
    } else if (ch === '{' || ch === '[') depth++;
    else if (ch === '}' || ch === ']') depth--;
  }
  return keys;
}

test('the key counter sees a key twice', () => {
  assert.deepEqual(topLevelKeys('{"pid":1,"a":{"pid":2},"s":"x\\"pid\\":3","pid":4}'), ['pid', 'a', 's', 'pid']);
});

test('every line of postern serve, from every process, is JSON with an ISO time and each key once', async () => {
  const sink = await startSink();
  const config = configYaml({
    workers: 1,
    localDomains: ['example.test', 'held.example'],
    listeners: [testListener('mx', { auth: { mechanisms: ['PLAIN'] } })],
    delivery: smarthostDelivery(sink.port, { retrySchedule: [3600] }),
  }).replace("listen: 127.0.0.1:0", 'listen: "127.0.0.1:{PORT:mx}"');
  const c = await startCluster({
    config: `admin: { listen: "127.0.0.1:{PORT:admin}" }\n${config}`,
    scripts: {
      'mailfrom.ts': `export default (ctx) => { log('mailfrom ' + ctx.address.address); if (ctx.address.domain === 'bad.example') return reject(); };`,
      'predelivery.ts': `export default (ctx) => { log('predelivery ' + ctx.destination.domain); if (ctx.destination.domain === 'held.example') return defer(); };`,
    },
  });
  try {
    await c.waitFor('the worker and the queue process ready', async () => (await c.cluster()).processes.filter((p) => p.ready).length === 2);
    const client = await SmtpTestClient.connect(c.port('mx'));
    await client.hello();
    assert.equal((await client.command('AUTH PLAIN AGFsaWNlAHdyb25n')).code, 535);
    assert.equal((await client.command('MAIL FROM:<x@bad.example>')).code, 550);
    assert.equal((await client.command('RSET')).code, 250);
    assert.equal((await client.sendMail('a@example.net', ['b@example.test', 'c@held.example'])).code, 250);
    await client.quit();
    await c.waitFor('the delivery lines', () => c.logs.some((l) => l.status === 'sent') && c.logs.some((l) => l.status === 'deferred'));

    // A reload that works, one that is refused (logged by the supervisor), and the fix.
    const script = join(c.dir, 'scripts', 'mailfrom.ts');
    await writeFile(script, 'export default () => { log("v2"); };');
    // Both processes (worker, queue) run v2 before the next edit, so each reloads once more after the fix.
    await c.waitFor('the reload of both processes', () => c.logs.filter((l) => l.msg === 'reloaded').length >= 2);
    await writeFile(script, 'export default () => { return reject( };');
    await c.waitFor('the refused reload', () => c.logs.some((l) => String(l.msg).startsWith('reload refused')));
    await writeFile(script, 'export default () => {};');
    await c.waitFor('the second reload', () => c.logs.filter((l) => l.msg === 'reloaded').length >= 4);
  } finally {
    await c.stop();
    await sink.close();
  }

  const lines = c.lines.filter((l) => l.trim() !== '');
  assert.ok(lines.length > 20, `${lines.length} lines`);
  const wrong: string[] = [];
  for (const line of lines) {
    let parsed: { time?: unknown };
    try { parsed = JSON.parse(line) as { time?: unknown }; } catch { wrong.push(`not JSON: ${line}`); continue; }
    if (typeof parsed.time !== 'string' || Number.isNaN(Date.parse(parsed.time)) || !parsed.time.endsWith('Z')) wrong.push(`no ISO time: ${line}`);
    const keys = topLevelKeys(line);
    const twice = keys.filter((k, i) => keys.indexOf(k) !== i);
    if (twice.length) wrong.push(`${twice.join(', ')} twice: ${line}`);
  }
  assert.deepEqual(wrong, []);
  for (const event of ['worker ready', 'queue ready', 'supervisor started', 'reloaded', 'authentication failed', 'shutting down']) {
    assert.ok(lines.some((l) => l.includes(`"msg":"${event}`)), `a line "${event}" was checked`);
  }
  assert.ok(lines.some((l) => l.includes('"msg":"reload refused')) && lines.some((l) => l.includes('"status":"deferred"')));
});
