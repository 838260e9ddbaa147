/**
 * Run as a process of its own: moves one message of a spool out of its journal as the queue process does, through
 * a reader's view of another process's journal (`node move-out.ts <spool root> <id>`), and prints whether it moved.
 * A test preloads disk faults into it to stop or kill it at a chosen system call.
 */
import { Spool } from '../../../engine/spool/spool.ts';

const [root, id] = process.argv.slice(2);
const spool = new Spool(root!);
process.stdout.write(`${String(await spool.moveOutOfJournal(id!))}\n`);
spool.close();
