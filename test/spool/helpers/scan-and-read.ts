/**
 * Run as a process of its own: looks at a spool another process writes as the queue process does (a reader's view of
 * its journal: `node scan-and-read.ts <spool root>`), and prints as JSON the messages its scan found and those it
 * could then read for delivery. A test preloads disk faults into it to stop it at a chosen system call.
 */
import { Spool } from '../../../engine/spool/spool.ts';

const [root] = process.argv.slice(2);
const spool = new Spool(root!);
const found = (await spool.scan()).map((e) => e.id);
const readable: string[] = [];
for (const id of found) {
  try {
    await spool.readForDelivery(id, { hasState: false });
    readable.push(id);
  } catch { /* gone: not delivered */ }
}
process.stdout.write(`${JSON.stringify({ found, readable })}\n`);
spool.close();
