/**
 * A DNS answer that came in time is an answer, however late this process's event loop gets to it. The DNS server
 * runs on its own thread (its own event loop), so it answers while the test holds this one — as a loaded machine
 * that descheduled the process, or a long stretch of other work in one turn, holds it: the answer then waits in
 * the socket while the lookup's time limit passes. An event loop that gets the CPU back runs its timers before it
 * reads its sockets, and a timer that failed the lookup there turned an answer in time into `timeout` (a DNSBL
 * check that passed over a listed sender, an MX check that deferred mail).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { once } from 'node:events';
import { ScriptDns } from '../../engine/dns/script-dns.ts';
import { createResolver } from '../../engine/delivery/dns.ts';

const HELPER = new URL('../helpers/dns-server.ts', import.meta.url).href;

/** A test DNS server on a thread of its own; `address` for dns.servers. */
async function dnsServerThread(): Promise<{ address: string; answered(): number; stop(): Promise<void> }> {
  // Queries the server has answered (it answers in the turn it counts them), told through shared memory: this thread
  // reads it while its own event loop is held.
  const answered = new Int32Array(new SharedArrayBuffer(4));
  const worker = new Worker(`
    const { parentPort, workerData } = require('node:worker_threads');
    import(${JSON.stringify(HELPER)}).then(async ({ startDnsServer }) => {
      const s = await startDnsServer({
        'mail.example.test': [{ type: 'A', value: '192.0.2.10', ttl: 30 }],
        'example.test': [{ type: 'MX', value: { exchange: 'mail.example.test', priority: 10 } }],
      });
      s.silent.add('silent.example.test');
      setInterval(() => { let n = 0; for (const [name, count] of s.queries) if (!name.includes('silent')) n += count; Atomics.store(workerData, 0, n); }, 1);
      parentPort.postMessage(s.address);
    });`, { eval: true, workerData: answered });
  const [address] = await once(worker, 'message') as [string];
  return { address, answered: () => Atomics.load(answered, 0), async stop() { await worker.terminate(); } };
}

/**
 * Hold this thread's event loop until the server has answered one more query, then `ms` longer: the answer waits in
 * the socket while the time limit passes, however late the server's thread got the CPU on a loaded machine.
 */
function holdPastAnswer(server: { answered(): number }, before: number, ms: number): void {
  while (server.answered() <= before) holdEventLoop(1);
  holdEventLoop(ms);
}

/** Hold this thread's event loop for `ms` (nothing else of this process runs meanwhile). */
function holdEventLoop(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end);
}

test('an answer that arrived within the time limit while the event loop was held is the answer, not a timeout', async () => {
  const server = await dnsServerThread();
  try {
    const dns = new ScriptDns({ servers: [server.address], timeoutMs: 100 });
    const before = server.answered();
    const asked = dns.resolve('mail.example.test', 'A');
    holdPastAnswer(server, before, 400); // the 100 ms pass with the answer waiting in the socket
    assert.deepEqual(await asked, { ok: true, records: ['192.0.2.10'], ttl: 30, nxdomain: false });
    // A name that is never answered still fails at its limit, held or not.
    const silent = dns.resolve('silent.example.test', 'A');
    holdEventLoop(400);
    assert.equal((await silent).ok, false);
  } finally { await server.stop(); }
});

test('the queue\'s resolver too: an MX answer that came in time while the event loop was held routes the message', async () => {
  const server = await dnsServerThread();
  try {
    const resolver = createResolver({ servers: [server.address], hostLookup: 'dns', timeoutMs: 100 });
    const before = server.answered();
    const mx = resolver.mx('example.test');
    holdPastAnswer(server, before, 400); // past both tries (2 × 100 ms), the answer waiting
    assert.deepEqual(await mx, [{ exchange: 'mail.example.test', priority: 10 }]);
  } finally { await server.stop(); }
});
