/**
 * A disk that stops answering (a lost SAN or NFS path, a drive in endless retries): the journal's fdatasync never
 * returns. Every client then waited at its final dot with no reply for as long as the disk hung, and sessions piled
 * up. Now the records of a flush not confirmed within the journal's deadline are refused with 451 (listed as done,
 * so never delivered besides the copy the client sends again), as are messages that end while it still hangs; once
 * the disk answers, mail is taken again, and each acknowledged message is delivered once. A message over 1 MiB, whose
 * file of its own did not return its sync, hung the same way: it gets the 451 too, and its file is removed, and while
 * that sync hangs (holding a thread of libuv's pool) the next one is refused without starting another; so did a
 * message a data script holds, whose hold file is written before the message is committed. (While such a sync hangs,
 * new transactions are refused at MAIL FROM: hung-disk-early-refusal.test.ts.) The fault is injected at the
 * C library (test/helpers/disk-faults.c, preloaded); the clients, the queue process and the next hop are real.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startSink, type Sink } from '../helpers/sink.ts';
import { greeted, spooled, startCluster, ONE_WORKER, type ClusterProcess, deliveryToSink } from '../helpers/cluster.ts';
import { diskFaults } from '../helpers/disk-faults.ts';
import type { SmtpTestClient } from '../helpers/smtp-client.ts';
import { MIN_SYNC_DEADLINE_MS } from '../../engine/spool/sync-deadline.ts';

const subjectOf = (data: Buffer): string | undefined => /Subject: (\S+)/.exec(data.toString())?.[1];

/** A data script that holds messages whose subject asks for it (`accept({ hold })`: a file beside the message). */
const HOLDING = {
  'data.ts': `export default function (ctx) {
  const subject = ctx.data.headers.find(([n]) => n.toLowerCase() === 'subject')?.[1] ?? '';
  if (subject.startsWith('held')) return accept({ hold: 'asked for' });
}`,
};

/**
 * The spool's deadline, shortened from its 30 s (engine/spool/sync-deadline.ts) to the least the configuration takes
 * (5 s; it was 8 s): each test waits it out once. Nothing has to finish within it but a healthy sync, which the messages
 * after the disk is back need, and the configuration's least is set for a healthy disk under load.
 */
const SYNC_DEADLINE = `spool: { syncDeadlineMs: ${MIN_SYNC_DEADLINE_MS} }\n`;

async function start(env: Record<string, string>, dataDir: string, sink: Sink): Promise<ClusterProcess> {
  return startCluster({ env, dataDir, scripts: HOLDING, config: `${ONE_WORKER}${SYNC_DEADLINE}${deliveryToSink(sink.port, { retrySchedule: [1] })}` });
}

/** A line of a message over 1 MiB (a file of its own), 1 100 of them. */
const LONG_LINE = 'y'.repeat(998);

/**
 * A whole transaction, its reply to the final dot awaited far longer than the spool's deadline. `large`: over 1 MiB,
 * so the message has a file of its own instead of a journal record. While a sync hangs the transaction is refused
 * before the message is sent (451 at MAIL FROM, or at DATA: hung-disk-early-refusal.test.ts): that code.
 */
async function send(client: SmtpTestClient, subject: string, large = false): Promise<number> {
  const mail = await client.command('MAIL FROM:<a@example.test>');
  if (mail.code === 451) return mail.code;
  assert.equal(mail.code, 250);
  assert.equal((await client.command('RCPT TO:<b@example.test>')).code, 250);
  const data = await client.command('DATA');
  if (data.code === 451) {
    await client.command('RSET');
    return data.code;
  }
  assert.equal(data.code, 354);
  const body = large ? Array.from({ length: 1100 }, () => LONG_LINE) : ['x'];
  for (const line of [`Subject: ${subject}`, '', ...body, '.']) client.write(line);
  return (await client.read(150_000)).code;
}

/**
 * send() once the disk answers again: until the server has seen the hung sync return (the fault's thread looks every
 * 10 ms, then the event loop gets to it, later on a loaded machine), the next message is still refused (451 at MAIL
 * FROM), as it should be; taken once it has. The number of the tries is not the test's business: each on a connection
 * of its own, as every refusal counts towards limits.maxErrors.
 */
async function sendOnceTaken(c: ClusterProcess, subject: string, large = false): Promise<number> {
  for (;;) {
    const client = await greeted(c);
    const code = await send(client, subject, large);
    await client.quit();
    if (code !== 451) return code;
  }
}

/** Files of the data folder whose name ends with `end`, in any folder below it. */
const filesEnding = (dir: string, end: string): string[] => (readdirSync(dir, { recursive: true }) as string[]).filter((n) => n.endsWith(end));

/**
 * The server the journal's test restarts (faults preloaded, none armed) goes on to serve the large message's and the
 * hold's tests (each hangs a sync of its own kind and waits until the disk is back and mail is taken again; each
 * leaves its spools as it found them but for a held message): a cluster's start and stop is much of a test's CPU.
 * Started by the first of them that runs, when the journal's test did not hand it on.
 */
let shared: { faults: ReturnType<typeof diskFaults>; dataDir: string; sink: Sink; c: ClusterProcess } | undefined;

test('the journal\'s disk stops answering (fdatasync hangs): the waiting message gets 451, as do the next, instead of no reply; the disk back, mail is taken and each 250 delivered once', { timeout: 300_000 }, async () => {
  const faults = diskFaults();
  const dataDir = join(mkdtempSync(join(tmpdir(), 'postern-hung-disk-')), 'data');
  const sink = await startSink({});
  let c = await start(faults.env, dataDir, sink);
  let passed = false;
  try {
    const [first, second] = [await greeted(c), await greeted(c)];
    assert.equal(await send(first, 'warm'), 250);
    faults.armFor('fdatasync-hang', '.seg');
    assert.equal(await send(first, 'hung1'), 451, 'a reply, and a refusal: the disk did not confirm the message');
    assert.equal(await send(second, 'hung2'), 451, 'a message ending while the disk still hangs is refused too');
    await c.waitFor('why, said at error', () => c.logs.some((l) => l.msg === 'spooling failed' && /has not confirmed the spool journal's last write/.test(JSON.stringify(l))));
    faults.disarm('fdatasync-hang');
    assert.equal(await sendOnceTaken(c, 'after'), 250, 'the disk answers again: mail is taken');
    await sink.waitFor(2, 90_000);
    for (const cl of [first, second]) await cl.quit();
    // A restart reads the journal anew: the refused records' bytes are there, listed as done, and stay undelivered.
    await c.stop();
    c = await start(faults.env, dataDir, sink);
    await c.waitFor('the queue runner started', () => c.logs.some((l) => l.msg === 'queue runner started'));
    await c.waitFor('nothing left in the spools', async () => (await spooled(c)).size === 0, 90_000);
    assert.deepEqual(sink.messages.map((m) => subjectOf(m.data)).sort(), ['after', 'warm']);
    passed = true;
    shared = { faults, dataDir, sink, c };
  } finally {
    faults.disarm('fdatasync-hang');
    if (!passed) {
      await c.stop();
      await sink.close();
    }
  }
});

async function sharedServer(): Promise<NonNullable<typeof shared>> {
  if (!shared) {
    const faults = diskFaults();
    const dataDir = join(mkdtempSync(join(tmpdir(), 'postern-hung-disk-')), 'data');
    const sink = await startSink({});
    shared = { faults, dataDir, sink, c: await start(faults.env, dataDir, sink) };
  }
  return shared;
}
after(async () => {
  shared?.faults.disarm('fdatasync-hang');
  await shared?.c.stop();
  await shared?.sink.close();
});

test('the sync of a large message\'s own file hangs: 451 instead of no reply, the file removed, nothing delivered; the next refused without a sync of its own; the disk back, the next is taken and delivered once', { timeout: 300_000 }, async () => {
  const { faults, dataDir, sink, c } = await sharedServer();
  const delivered = sink.messages.length; // the journal's test's, when it handed its server on
  const hungBefore = faults.hungCalls('fdatasync-hang');
  try {
    const client = await greeted(c);
    faults.armFor('fdatasync-hang', '.part');
    assert.equal(await send(client, 'hung', true), 451, 'a reply, and a refusal: the disk did not confirm the message');
    await c.waitFor('why, said at error', () => c.logs.some((l) => l.msg === 'spooling failed' && /has not confirmed the write of message \S+'s file/.test(JSON.stringify(l))));
    assert.deepEqual(filesEnding(dataDir, '.part'), [], 'its file is gone from incoming/');
    // While that sync hangs, holding a thread of libuv's pool, the next large message is refused without one of its own.
    assert.equal(await send(client, 'hung-too', true), 451);
    assert.equal(faults.hungCalls('fdatasync-hang') - hungBefore, 1, 'one sync hangs, not one per message');
    faults.disarm('fdatasync-hang');
    assert.equal(await sendOnceTaken(c, 'after', true), 250, 'the disk answers again: mail is taken');
    await sink.waitFor(delivered + 1, 90_000);
    await client.quit();
    await c.waitFor('nothing left in the spools', async () => (await spooled(c)).size === 0, 90_000);
    assert.deepEqual(sink.messages.slice(delivered).map((m) => subjectOf(m.data)), ['after']);
  } finally {
    faults.disarm('fdatasync-hang');
  }
});

test('the sync of a hold a data script asked for hangs: 451 instead of no reply, the message not kept; the disk back, the next held message is taken and kept on hold', { timeout: 300_000 }, async () => {
  const { faults, dataDir, sink, c } = await sharedServer();
  const delivered = sink.messages.length; // the earlier tests', when they ran on this server
  try {
    const client = await greeted(c);
    faults.armFor('fdatasync-hang', '.tmp'); // the hold is written through a temporary file beside it
    assert.equal(await send(client, 'held1'), 451, 'a reply, and a refusal: the disk did not confirm the hold');
    await c.waitFor('why, said at error', () => c.logs.some((l) => l.msg === 'spooling failed' && /has not confirmed the hold of message/.test(JSON.stringify(l))));
    faults.disarm('fdatasync-hang');
    assert.equal(await sendOnceTaken(c, 'held2'), 250, 'the disk answers again: mail is taken');
    await client.quit();
    await c.waitFor('one message in the spools, on hold', async () => (await spooled(c)).size === 1);
    assert.equal(filesEnding(dataDir, '.held').length >= 1, true, 'kept on hold');
    assert.deepEqual(sink.messages.slice(delivered), [], 'nothing delivered');
  } finally {
    faults.disarm('fdatasync-hang');
  }
});
