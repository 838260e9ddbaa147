/**
 * Run as a process of its own: a worker's spool writer (`node refusing-writer.ts <spool root>`), holding the spool's
 * lock as a worker does. It spools one message and prints `{"acked":[id],"refused":[]}`; then at each line read on
 * stdin (the test arms a failing fdatasync in between) it spools one more and prints the same for it: refused, or
 * acknowledged after all (the fault may land on the background sync of the zeros written ahead). It exits when stdin
 * ends, releasing the lock.
 */
import { createInterface } from 'node:readline';
import { acquireDirectoryLock } from '../../../engine/spool/data-dir-lock.ts';
import { Spool } from '../../../engine/spool/spool.ts';
import type { SpoolEnvelope } from '../../../engine/spool/envelope.ts';

const [root] = process.argv.slice(2);
acquireDirectoryLock(root!);
const spool = new Spool(root!);
await spool.init();

async function spoolOne(subject: string): Promise<void> {
  const id = spool.newId();
  const w = spool.create(id);
  w.write(Buffer.from(`Subject: ${subject}\r\n\r\nbody\r\n`));
  const envelope: SpoolEnvelope = {
    version: 1, id, receivedAt: new Date().toISOString(), sender: 'a@example.com', recipients: [{ address: 'b@example.com' }], size: 0,
    session: { listener: 'x', remoteAddress: '127.0.0.1', helo: null, authenticatedUser: null, clientCertificate: null },
    attempts: 0, nextAttemptAt: new Date().toISOString(), errors: [],
  };
  const acked = await w.commit(envelope).then(() => true, () => false);
  process.stdout.write(`${JSON.stringify(acked ? { acked: [id], refused: [] } : { acked: [], refused: [id] })}\n`);
}

await spoolOne('first');
let n = 0;
for await (const _ of createInterface({ input: process.stdin })) await spoolOne(`m${n++}`);
spool.close();
