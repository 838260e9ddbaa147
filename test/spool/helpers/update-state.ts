/**
 * Run as a process of its own: records a delivery state for one message of a spool as the queue process does, through
 * a reader of another process's spool (`node update-state.ts <spool root> <id> <attempts>`), and prints `recorded`.
 * A test preloads disk faults into it to stop or kill it at a chosen system call.
 */
import { Spool } from '../../../engine/spool/spool.ts';

const [root, id, attempts] = process.argv.slice(2);
const spool = new Spool(root!);
await spool.updateState(id!, { attempts: Number(attempts), nextAttemptAt: new Date().toISOString(), recipients: [{ address: 'b@example.com' }], errors: [] });
process.stdout.write('recorded\n');
spool.close();
