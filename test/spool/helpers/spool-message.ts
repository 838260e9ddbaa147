/** Spool one message made of `chunks` through the writer's interface; resolves with its queue id once committed. */
import type { Spool } from '../../../engine/spool/spool.ts';
import type { SpoolEnvelope } from '../../../engine/spool/envelope.ts';

export async function spoolMessage(spool: Spool, chunks: Buffer[]): Promise<string> {
  const mid = spool.newId();
  const w = spool.create(mid);
  for (const c of chunks) w.write(c);
  const envelope: SpoolEnvelope = {
    version: 1, id: mid, receivedAt: new Date().toISOString(), sender: 'a@example.com', recipients: [{ address: 'b@example.com' }], size: 0,
    session: { listener: 'x', remoteAddress: '127.0.0.1', helo: null, authenticatedUser: null, clientCertificate: null },
    attempts: 0, nextAttemptAt: new Date().toISOString(), errors: [],
  };
  await w.commit(envelope);
  return mid;
}
