/**
 * End of the SMTP transaction: stream DATA into the spool behind our Received header, run the data
 * hook, and commit durably. The 250 is only sent after commit() resolved.
 */
import type { Readable } from 'node:stream';
import type { SMTPServerDataStream, SMTPServerSession } from 'smtp-server';
import type { PosternConnection } from './postern-connection.ts';
import type { Runtime } from './runtime.ts';
import type { SessionPolicy } from './session-policy.ts';
import { SmtpReply, localError } from './reply.ts';
import { HeaderReader } from './header-reader.ts';
import { receivedClientPart, receivedHeaderWith } from './received-header.ts';
import { sharedConnectionFacts } from './script-context.ts';
import { summarizeCertificate } from '../certificates/index.ts';
import type { SpoolEnvelope } from '../spool/envelope.ts';
import { spoolIsFull } from './runtime.ts';

export async function receiveMessage(
  conn: PosternConnection, stream: SMTPServerDataStream, session: SMTPServerSession, runtime: Runtime, policy: SessionPolicy,
): Promise<string> {
  const st = conn.state;
  const id = st.transactionId ?? runtime.spool.newId();
  const writer = runtime.spool.create(id);
  const recipients = session.envelope.rcptTo.map((r) => r.address);
  let committed = false;
  try {
    writer.write(Buffer.from(receivedHeaderWith(keptReceivedClientPart(conn, session), {
      hostname: st.generation.config.hostname, queueId: id, recipients,
    })));
    const headers = new HeaderReader();
    const size = await drain(stream, (chunk) => {
      headers.push(chunk);
      writer.write(chunk);
    });
    if ((stream as { sizeExceeded?: boolean }).sizeExceeded) {
      // smtp-server answers 552 itself; just drop what we wrote.
      throw new SmtpReply(552, '5.3.4', 'Message size exceeds fixed maximum message size');
    }
    const reply = await policy.data(conn, session, size, headers.headers());
    if (reply) throw reply;
    const mailFrom = session.envelope.mailFrom;
    const envelope: SpoolEnvelope = {
      version: 1,
      id,
      receivedAt: new Date().toISOString(),
      sender: mailFrom ? mailFrom.address : '',
      recipients: session.envelope.rcptTo.map((r) => ({ address: r.address, ...(r.dsn?.notify ? { notify: r.dsn.notify } : {}) })),
      size: 0,
      session: {
        listener: st.listener.name,
        remoteAddress: conn.remoteAddress,
        helo: st.heloName,
        authenticatedUser: st.user,
        clientCertificate: st.certificate ? summarizeCertificate(st.certificate) : null,
      },
      attempts: 0,
      nextAttemptAt: new Date().toISOString(),
      errors: [],
    };
    if (spoolIsFull(runtime)) throw new SmtpReply(452, '4.3.1', 'Insufficient system storage');
    await writer.commit(envelope);
    committed = true;
    runtime.logger.info({ cid: conn.id, id, from: envelope.sender, to: recipients, size: writer.bytes }, 'message spooled');
    runtime.onSpooled?.(id);
    st.transactionId = null;
    const text = st.acceptText ?? '2.0.0 Ok';
    st.acceptText = null;
    return `${text}: queued as ${id}`;
  } catch (err) {
    if (!committed) try { writer.abort(); } catch { /* already gone */ }
    st.transactionId = null;
    if (err instanceof SmtpReply) throw err;
    if ((err as NodeJS.ErrnoException).code === 'ECONNECTION') throw err; // client went away; nobody to answer
    runtime.logger.error({ cid: conn.id, id, err }, 'spooling failed');
    throw localError(conn.id);
  }
}

/** The Received header's lines about the client, kept per connection while the facts they come from hold. */
function keptReceivedClientPart(conn: PosternConnection, session: SMTPServerSession): { lines: string; protocol: string } {
  const st = conn.state;
  const facts = sharedConnectionFacts(session, st);
  const kept = st.receivedClient;
  const clientHostname = conn.clientHostname || null;
  if (kept !== null && kept.facts === facts && kept.heloCommand === st.heloCommand && kept.clientHostname === clientHostname) return kept.part;
  const tls = facts.info.tls;
  const part = receivedClientPart({
    helo: st.heloName, heloCommand: st.heloCommand, clientHostname, remoteAddress: conn.remoteAddress,
    tls: tls ? { protocol: tls.protocol, cipher: tls.cipher } : null, state: st,
  });
  st.receivedClient = { facts, heloCommand: st.heloCommand, clientHostname, part };
  return part;
}

/**
 * Hand every chunk of `stream` to `take`; resolves with the byte count at its end. Plain events, not
 * `for await`: the async iterator cost a promise per chunk (perf: ~2% of a message's CPU). A `take` that
 * throws (disk full) stops the taking, not the reading: the client is still sending its message and
 * gets the error reply after it.
 */
function drain(stream: Readable, take: (chunk: Buffer) => void): Promise<number> {
  return new Promise((resolve, reject) => {
    let size = 0;
    let failure: unknown = null;
    let ended = false;
    stream.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (failure !== null) return;
      try { take(chunk); } catch (err) { failure = err; }
    });
    stream.once('end', () => {
      ended = true;
      if (failure === null) resolve(size); else reject(failure);
    });
    stream.once('error', reject);
    // 'close' follows every 'end': an Error built there anyway costs a stack trace per message (perf: ~3%).
    stream.once('close', () => { if (!ended) reject(new Error('the message stream closed before its end')); });
  });
}
