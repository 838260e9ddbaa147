/**
 * One hook's calls cannot starve the other hooks of isolates, over real SMTP sockets: clients flooding a
 * hook whose script spins until its time limit keep every isolate of the pool busy, and calls that wait
 * for one fail at their deadline (451). Another client's calls of the other hooks must still get their own
 * verdicts: a freed isolate goes first to a waiting call of a hook that holds fewer of them, so they wait
 * for one flooding call at most (not for the queue of them, failing at their deadlines: the old FIFO).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

const CONFIG = `
localDomains: [example.com]
sandbox: { timeoutMs: 300, isolates: 2 }
listeners:
  - name: mx
    listen: 127.0.0.1:0
    limits: { greetingDelayMs: 0, maxConnectionsPerIp: 100, maxErrors: 100000 }
`;

const SCRIPTS = {
  'helo.ts': `export default function (ctx) { if (ctx.helo.name === 'refused.example') return reject('go away'); }`,
  'mailfrom.ts': `export default function (ctx) { if (ctx.address.localPart === 'spam') return reject('no spam'); }`,
  'rcptto.ts': `export default function (ctx) { if (ctx.address.localPart === 'spin') for (;;); }`,
};

const FLOODERS = 30;
let server: TestServer;
before(async () => { server = await startTestServer({ config: CONFIG, scripts: SCRIPTS }); });
after(async () => { await server.stop(); });

test("clients flooding a spinning rcptto script do not starve another client's helo and mailfrom calls", async () => {
  let flooding = true;
  let spun = 0;
  const sessions: SmtpTestClient[] = [];
  for (let i = 0; i < FLOODERS; i++) {
    const c = await SmtpTestClient.connect(server.port('mx'));
    await c.hello({ name: 'flood.example' });
    assert.match((await c.command('MAIL FROM:<a@sender.example>')).text, /^250 /);
    sessions.push(c);
  }
  const flooders = sessions.map(async (c) => {
    while (flooding) {
      assert.match((await c.command('RCPT TO:<spin@example.com>', 20_000)).text, /^451 /);
      spun++;
    }
    await c.quit();
  });
  // Until the flood has had a full round of 451s: the pool is busy and calls queue.
  while (spun < FLOODERS) await new Promise((r) => setTimeout(r, 20));
  const verdicts: string[] = [];
  for (let i = 0; i < 3; i++) {
    const c = await SmtpTestClient.connect(server.port('mx'));
    verdicts.push((await c.hello({ name: 'refused.example' })).text);
    verdicts.push((await c.command('EHLO client.example', 20_000)).text.slice(0, 3));
    verdicts.push((await c.command('MAIL FROM:<spam@sender.example>', 20_000)).text);
    verdicts.push((await c.command('MAIL FROM:<a@sender.example>', 20_000)).text.slice(0, 3));
    c.destroy();
  }
  flooding = false;
  await Promise.all(flooders);
  // Each call gets its own verdict, or at worst fails closed (451): a machine loaded enough to deschedule the
  // server past the deadline's slack may fail one. Most must get through; behind the FIFO queue none did.
  const want = Array(3).fill(['550 5.7.1 go away', '250', '550 5.7.1 no spam', '250']).flat();
  // (A 451 to EHLO makes the session's next MAIL FROM a 503: a consequence, never an accept.)
  verdicts.forEach((v, i) => assert.ok(v === want[i] || /^(451|503)/.test(v), `call ${i}: ${v}, expected ${want[i]} or a failure`));
  const right = verdicts.filter((v, i) => v === want[i]).length;
  assert.ok(right >= 9, `${right} of 12 calls got their verdict (the rest failed closed): ${verdicts.join(' | ')}`);
});
