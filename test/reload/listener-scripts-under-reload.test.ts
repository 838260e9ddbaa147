// Two listeners, each with its own scripts folder, under load while the configuration reloads again and again
// (each reload builds new isolates, and a session moves to the new generation at its next MAIL FROM): every
// reply comes from its own listener's scripts and shows its own connection's facts, never the other listener's
// or another session's, whichever generation decided it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

/** A folder's scripts: each reply says which folder (and which version of it) decided, and what it saw. */
const scripts = (folder: string, version: number): Record<string, string> => {
  const seen = `"${folder}${version}|" + ctx.connection.listener + "|" + ctx.connection.remotePort + "|" + ctx.connection.helo`;
  return {
    [`${folder}/mailfrom.ts`]: `export default (ctx) => accept({ text: ${seen} + "|" + ctx.address.address });`,
    [`${folder}/rcptto.ts`]: `export default async (ctx) => { await counter("${folder}").add(1, 60); return accept({ text: ${seen} + "|" + ctx.address.address }); }`,
  };
};

test('per-listener scripts are never swapped, nor facts mixed, under load and repeated reloads', { timeout: 300_000 }, async () => {
  const s = await startTestServer({
    config: `
localDomains: [example.com]
# A loaded machine must not turn a slow call into a 451: only a swapped or mixed reply is a failure here.
sandbox: { isolates: 2, timeoutMs: 30000 }
listeners:
  - { name: la, listen: "127.0.0.1:0", scripts: ./a, reverseDns: false, limits: { greetingDelayMs: 0, maxConnectionsPerIp: 1000 } }
  - { name: lb, listen: "127.0.0.1:0", scripts: ./b, reverseDns: false, limits: { greetingDelayMs: 0, maxConnectionsPerIp: 1000 } }
`,
    files: { ...scripts('a', 0), ...scripts('b', 0) },
  });
  const problems: string[] = [];
  let running = true;
  let reloads = 0;
  try {
    // Reloads, each with a new version of both folders' scripts, while the sessions below run.
    const reloading = (async () => {
      for (let version = 1; running; version++) {
        for (const [name, text] of Object.entries({ ...scripts('a', version), ...scripts('b', version) })) await writeFile(join(s.dir, name), text);
        const o = await s.reloader.reload('SIGHUP');
        if (!o.ok) problems.push(`reload: ${o.errors.join('; ')}`);
        reloads++;
      }
    })();
    const session = async (n: number): Promise<void> => {
      const listener = n % 2 ? 'la' : 'lb';
      const folder = listener === 'la' ? 'a' : 'b';
      const c = await SmtpTestClient.connect(s.port(listener));
      const port = String(c.socket.localPort);
      try {
        await c.read();
        for (let t = 0; t < 4; t++) {
          const helo = `h${n}-${t}.example`;
          await c.command(`EHLO ${helo}`);
          const from = `s${n}-${t}@sender.example`;
          const to = `r${n}-${t}@example.com`;
          c.socket.write(`MAIL FROM:<${from}>\r\nRCPT TO:<${to}>\r\n`);
          for (const address of [from, to]) {
            const r = await c.read();
            const m = /^250 \S+ ([ab])\d+\|(\S+)\|(\d+)\|(\S+)\|(\S+)$/.exec(r.text);
            if (!m) problems.push(`${n} ${listener}: ${r.text}`);
            else if (m[1] !== folder || m[2] !== listener || m[3] !== port || m[4] !== helo || m[5] !== address) {
              problems.push(`${n} on ${listener} (port ${port}, ${helo}, ${address}) got: ${r.text}`);
            }
          }
          await c.command('RSET');
        }
      } finally {
        await c.quit();
      }
    };
    let next = 0;
    await Promise.all(Array.from({ length: 40 }, async () => {
      // Until several reloads came in the middle of sessions (a reload builds every isolate again: a second or so here).
      while (next < 200 || reloads < 4) await session(next++);
    }));
    running = false;
    await reloading;
    if (problems.length) console.log(JSON.stringify(s.logs.filter((l) => (l.level as number) >= 50).slice(0, 4), null, 1));
    assert.deepEqual(problems.slice(0, 10), [], `${problems.length} problems`);
  } finally {
    running = false;
    await s.stop();
  }
});
