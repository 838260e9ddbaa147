/**
 * End of the SMTP transaction: stream DATA into the spool behind our Received header, run the data
 * hook, and commit durably, with the hook's header edits applied in the commit. Resolves with the 250,
 * which is only sent after commit() resolved; fails with the refusal (an SmtpReply) otherwise. The body is
 * never held for the hook: a script that reads it (ctx.message.text()) reads it back from the spool writer.
 */
import { messageAccepted, secondsSince } from '../metrics/metrics.ts';
import type { Readable } from 'node:stream';
import type { SMTPServerDataStream, SMTPServerSession } from 'smtp-server';
import type { SmtpClient } from './smtp-client.ts';
import type { Runtime } from './runtime.ts';
import type { SessionPolicy } from './session-policy.ts';
import { SmtpReply } from './reply.ts';
import { reply } from './replies.ts';
import { clientName } from './decision-log.ts';
import { HeaderReader } from './header-reader.ts';
import { editHeaderSection } from './header-edit.ts';
import type { HeaderEdit } from '../sandbox/api/index.ts';
import { receivedClientPart, receivedHeaderEnd, receivedHeaderStart } from './received-header.ts';
import { sharedConnectionFacts } from './script-context.ts';
import { summarizeCertificate } from '../certificates/index.ts';
import type { SpoolEnvelope } from '../spool/envelope.ts';
import type { SpoolWriter } from '../spool/spool.ts';
import { spoolIsFull } from './runtime.ts';
import { declaresUtf8 } from './envelope-path.ts';
import { hopLimitRefusal } from './hop-limit.ts';
import { RepeatedFailure } from '../logging/repeated-failure.ts';
import { scriptText } from '../logging/logger.ts';

const CRLF = Buffer.from('\r\n');

export async function receiveMessage(
  conn: SmtpClient, stream: SMTPServerDataStream, session: SMTPServerSession, runtime: Runtime, policy: SessionPolicy,
): Promise<SmtpReply> {
  const st = conn.state;
  const id = st.transactionId ?? runtime.spool.newId();
  const writer = runtime.spool.create(id, st.generation.config.spool.receivingMemoryBytes);
  const recipients = session.envelope.rcptTo.map((r) => r.address);
  let committed = false;
  try {
    // Our Received header: its start is kept per connection, only its end (id, recipient, date) is per message.
    const client = keptClient(conn, session, st.generation.config.hostname); // no command can change its facts before the end of DATA
    const receivedEnd = Buffer.from(receivedHeaderEnd({ queueId: id, recipients }));
    writer.write(client.receivedStart);
    writer.write(receivedEnd);
    const receivedBytes = client.receivedStart.length + receivedEnd.length;
    const maxSize = conn.maxMessageSize;
    const limits = st.listener.limits;
    const headers = new HeaderReader(limits.maxHeaderBytes, limits.maxHeaderFields, { keepChunks: false });
    // Over a limit, stop writing and drop what was written at once (the spool never holds more than the
    // limit), but read the rest of the message to its dot, as Postfix does: the client gets its 552 after it.
    const size = await drain(stream, (chunk, total) => {
      if (total > maxSize) throw refuseNow(writer, reply('messageTooBig'));
      if (total === chunk.length && (chunk[0] === 0x20 || chunk[0] === 0x09)) {
        // A first line that starts with a space or a tab is no field: right after our Received header it
        // would read as a continuation of it, written by the client. Such a message has no header section
        // (Exim reads it so): the empty line that ends ours goes first, and the client's lines are body.
        headers.push(CRLF);
        writer.write(CRLF);
      }
      if (!headers.push(chunk)) throw refuseNow(writer, headerRefusal(headers, limits));
      writer.write(chunk);
    });
    // Our Received field makes one more hop: past the limit the queue would bounce it as a loop, to a sender the
    // client may have forged. Refused now, as Postfix's cleanup does (`Error: too many hops`).
    const loop = hopLimitRefusal(headers.received);
    if (loop) throw loop;
    // The client's header section: after our Received header, up to the empty line (all of a message without one).
    const sectionBytes = headers.sectionBytes >= 0 ? headers.sectionBytes : size;
    const bodyAt = (): number => (headers.sectionBytes < 0 ? writer.bytes
      : receivedBytes + headers.bodyAt(writer.read(receivedBytes + sectionBytes, 1)[0]));
    // The fields are read back from the writer (the reader kept no chunks: see HeaderReader).
    const fields = (): Array<[string, string]> => headers.headers(writer.read(receivedBytes, sectionBytes));
    const decision = await policy.data(conn, session, id, size, fields, (max) => writer.read(bodyAt(), max));
    const decided = decision.reply;
    if (decided?.refuses) throw decided;
    const replace = editedSection(headers, decision.headerEdits, receivedBytes, sectionBytes, () => writer.read(receivedBytes, sectionBytes));
    const mailFrom = session.envelope.mailFrom;
    const now = new Date().toISOString();
    const envelope: SpoolEnvelope = {
      version: 1,
      id,
      receivedAt: now,
      sender: mailFrom ? mailFrom.address : '',
      recipients: session.envelope.rcptTo.map((r) => spooledRecipient(r)),
      ...spooledDsn(session.envelope.dsn),
      ...(mailFrom && declaresUtf8(mailFrom) ? { smtputf8: true as const } : {}),
      size: 0,
      session: client.spooled,
      attempts: 0,
      nextAttemptAt: now,
      errors: [],
    };
    const full = spoolIsFull(runtime);
    if (full) throw reply(full);
    // The client left while its message was decided on (a slow data script): no 250 can reach it, so it will send
    // the message again. Kept, it would be delivered twice, and counted and logged as accepted by no client.
    if (st.closed || conn._socket.destroyed) {
      runtime.logger.info({ cid: conn.id, id, client: conn.remoteAddress },
        `${id}: the client left before its message was acknowledged: not kept (nrcpt=${recipients.length}, size=${writer.bytes})`);
      throw Object.assign(new Error('the client left before the end of its message was answered'), { code: 'ECONNECTION' });
    }
    // Held before it is committed: once committed the queue may take it at once. A hold whose message then
    // fails to commit is left behind, harmless (its id is never used again), and removed at the next start.
    if (decision.hold) await runtime.spool.hold(id, { at: now, by: null, script: decision.hold });
    const commitStart = performance.now();
    await writer.commit(envelope, replace);
    committed = true;
    spoolingFailures(runtime).succeeded();
    messageAccepted(st.listener.name, writer.bytes, secondsSince(commitStart));
    // One line per accepted message, Postfix-style; the facts that are not in the text are fields. Built only
    // when it is logged; kept short (a longer line cost ~10% of a message's CPU in bench:ab).
    if (runtime.logger.isLevelEnabled('info')) {
      const cert = st.certificate;
      // A hold's reason is a script's text, which may quote the message (a Subject): written as its log lines are.
      const held = decision.hold ? { file: decision.hold.file, reason: scriptText(decision.hold.reason) } : undefined;
      runtime.logger.info({
        cid: conn.id, id, client: conn.remoteAddress, from: envelope.sender, size: writer.bytes, to: recipients, user: st.user ?? undefined, identity: st.identity.identity ?? undefined,
        certificate: cert ? cert.fingerprint.sha256 : undefined,
        held,
      }, `${id}: accepted from=<${envelope.sender}>, size=${writer.bytes}, nrcpt=${recipients.length}, client=${clientName(conn.clientHostname) ?? 'unknown'}[${conn.remoteAddress}] (message spooled${held ? `, held by ${held.file}: ${held.reason}` : ''})`);
    }
    runtime.onSpooled?.(id);
    st.transactionId = null;
    return decided ?? reply('queued', { id });
  } catch (err) {
    if (!committed) try { writer.abort(); } catch { /* already gone */ }
    st.transactionId = null;
    if (err instanceof SmtpReply) throw err;
    if ((err as NodeJS.ErrnoException).code === 'ECONNECTION') throw err; // client went away; nobody to answer
    const code = (err as NodeJS.ErrnoException).code;
    // EFBIG: a file of the spool would grow past the process's file size limit (Node ignores SIGXFSZ, so the
    // write fails instead of killing the worker); the journal starts a new segment at it, so it is the message.
    if (code === 'EFBIG') runtime.logger.error({ cid: conn.id, id, err }, 'spooling failed: the message is larger than the file size limit of this process (RLIMIT_FSIZE: ulimit -f, systemd LimitFSIZE=)');
    else spoolingFailures(runtime).failed(err, { cid: conn.id, id });
    // A full disk (or quota) is said as such, as at MAIL FROM under spool.minFreeBytes: the client retries later.
    if (code === 'ENOSPC' || code === 'EDQUOT') throw reply('spoolWriteFull');
    if (code === 'EROFS') throw reply('spoolReadOnly');
    throw reply('localError', { id: conn.id });
  }
}

/**
 * Spooling that fails for every message while its cause lasts (out of descriptors, a failing disk): the first failure
 * of a kind at error, the repeats at debug (each message's decision line still says it was refused), the first
 * message spooled again once at info. Per process, as its spool is.
 */
const spoolingFailureLogs = new WeakMap<Runtime, RepeatedFailure>();
function spoolingFailures(runtime: Runtime): RepeatedFailure {
  let f = spoolingFailureLogs.get(runtime);
  if (!f) spoolingFailureLogs.set(runtime, f = new RepeatedFailure(runtime.logger, 'spooling failed', 'spooling works again'));
  return f;
}

/** What the spool keeps about the submitting session (the predelivery hook's `session`). */
export function spooledSession(conn: Pick<SmtpClient, 'state' | 'remoteAddress'>): SpoolEnvelope['session'] {
  const st = conn.state;
  return {
    listener: st.listener.name,
    remoteAddress: conn.remoteAddress,
    helo: st.heloName,
    authenticatedUser: st.user,
    clientCertificate: st.certificate ? summarizeCertificate(st.certificate) : null,
  };
}

/**
 * The Received header's lines about the client and the envelope's session, kept per connection while the
 * facts they come from hold (the memo's facts cover listener, address, HELO, user and certificate). The
 * session is only read (serialized into each envelope), so one object serves every message.
 */
function keptClient(conn: SmtpClient, session: SMTPServerSession, hostname: string): NonNullable<SmtpClient['state']['receivedClient']> {
  const st = conn.state;
  const facts = sharedConnectionFacts(session, st);
  const kept = st.receivedClient;
  const clientHostname = conn.clientHostname || null;
  const mailFrom = session.envelope.mailFrom;
  const utf8 = !!mailFrom && declaresUtf8(mailFrom);
  if (kept !== null && kept.facts === facts && kept.heloCommand === st.heloCommand && kept.clientHostname === clientHostname
    && kept.remoteAddress === conn.remoteAddress && kept.hostname === hostname && kept.utf8 === utf8) return kept;
  const tls = facts.info.tls;
  const part = receivedClientPart({
    helo: st.heloName, heloCommand: st.heloCommand, clientHostname, remoteAddress: conn.remoteAddress,
    tls: tls ? { protocol: tls.protocol, cipher: tls.cipher } : null, state: st, utf8,
  });
  st.receivedClient = {
    facts, heloCommand: st.heloCommand, clientHostname, remoteAddress: conn.remoteAddress, hostname, utf8,
    receivedStart: unpooledBytes(receivedHeaderStart(part, hostname)), spooled: spooledSession(conn),
  };
  return st.receivedClient;
}

/**
 * The header section as spooled, when it is not as the client sent it: with the data hook's edits, and with the
 * empty line written before the body when the client's section was ended by a line that is no field
 * (HeaderReader.noEmptyLine), so that every next hop starts the body where the hook's ctx.message.text() did.
 */
function editedSection(headers: HeaderReader, edits: readonly HeaderEdit[] | null | undefined, at: number, length: number, section: () => Buffer): { at: number; length: number; bytes: Buffer } | undefined {
  if (!edits?.length && !headers.noEmptyLine) return undefined;
  const bytes = edits?.length ? editHeaderSection(section(), edits) : section();
  return { at, length, bytes: headers.noEmptyLine ? Buffer.concat([bytes, CRLF]) : bytes };
}

/** A buffer of its own: one kept for a connection's life must not hold a slab of Node's shared pool. */
function unpooledBytes(text: string): Buffer {
  const bytes = Buffer.allocUnsafeSlow(Buffer.byteLength(text));
  bytes.write(text);
  return bytes;
}

/** Why a header section was refused: a bare CR, a NUL, too many fields, or too many bytes. */
export function headerRefusal(headers: HeaderReader, limits: { maxHeaderBytes: number; maxHeaderFields: number }): SmtpReply {
  if (headers.bareCr) return reply('bareCrInHeader');
  if (headers.nul) return reply('nulInHeader');
  return headers.tooManyFields
    ? reply('tooManyHeaderFields', { n: String(limits.maxHeaderFields) })
    : reply('headerTooBig', { n: String(limits.maxHeaderBytes) });
}

function refuseNow(writer: SpoolWriter, refusal: SmtpReply): SmtpReply {
  writer.abort();
  return refusal;
}

/**
 * Hand every chunk of `stream` to `take`, with the byte count so far (the chunk included); resolves with
 * the byte count at its end. Plain events, not `for await`: the async iterator cost a promise per chunk
 * (perf: ~2% of a message's CPU). A `take` that throws (disk full, a limit passed) stops the taking, not
 * the reading: the client is still sending its message and gets the error reply after it.
 */
function drain(stream: Pick<Readable, 'on'>, take: (chunk: Buffer, total: number) => void): Promise<number> {
  return new Promise((resolve, reject) => {
    let size = 0;
    let failure: unknown = null;
    let ended = false;
    stream.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (failure !== null) return;
      try { take(chunk, size); } catch (err) { failure = err; }
    });
    // on(), not once(): each fires once per stream anyway, and once() wraps every listener (3 objects per message).
    stream.on('end', () => {
      ended = true;
      if (failure === null) resolve(size); else reject(failure);
    });
    stream.on('error', reject);
    // 'close' follows every 'end': an Error built there anyway costs a stack trace per message (perf: ~3%).
    stream.on('close', () => { if (!ended) reject(new Error('the message stream closed before its end')); });
  });
}

/** A recipient as spooled: its DSN NOTIFY and ORCPT with it, when RCPT TO had them. */
function spooledRecipient(r: { address: string; dsn?: { notify?: string[]; orcpt?: string } }): SpoolEnvelope['recipients'][number] {
  return { address: r.address, ...(r.dsn?.notify ? { notify: r.dsn.notify } : {}), ...(r.dsn?.orcpt ? { orcpt: r.dsn.orcpt } : {}) };
}

/** MAIL FROM's DSN RET and ENVID, when it had them. */
function spooledDsn(dsn: { ret?: string | null; envid?: string | null } | undefined): Pick<SpoolEnvelope, 'dsn'> {
  const ret = dsn?.ret === 'FULL' || dsn?.ret === 'HDRS' ? dsn.ret : undefined;
  const envid = dsn?.envid || undefined;
  return ret || envid ? { dsn: { ...(ret ? { ret } : {}), ...(envid ? { envid } : {}) } } : {};
}
