/**
 * One SMTP transaction to a destination: take a pooled connection or open one (next address, next MX
 * host on connection-level failures; plaintext retry when opportunistic TLS fails), send MAIL/RCPT/DATA
 * with nodemailer, and report a result per recipient. Bounded overall and per destination. Recipients the
 * next hop refuses as too many for one transaction (RCPT 452, RFC 5321 §4.5.3.1.10) go in a following
 * transaction of the same attempt, on the same connection when it is still open.
 */
import type { SMTPEnvelope } from 'nodemailer/lib/smtp-connection';
import type { DeliveryConfig } from '../config/schema.ts';
import type { Logger } from '../logging/logger.ts';
import { EARLY_REPLY, poolKey, serverOf, type ConnectOptions, type ConnectionInfo, type ConnectionPool, type PooledConnection } from './connection-pool.ts';
import type { DeliveryResolver } from './dns.ts';
import type { KeyedLimiter, Limiter } from './limiter.ts';
import type { ConnectionSecurity, OutboundTlsMaterial, TlsPolicy } from './outbound-tls.ts';
import { DeliveryFailure, oneLine, outcomeForFailure, outcomeForReply, parseReply, type RecipientOutcome } from './outcome.ts';
import { recipientDomain, type NextHop } from './routing.ts';
import type { OwnAddress } from './own-listeners.ts';
import { signatureFields, type DkimKeys } from './dkim.ts';
import { DestinationSuspensions } from './suspensions.ts';
import { wireEnvelope } from './wire-envelope.ts';
import { passDsnOn, type TransactionDsn } from './dsn-params.ts';
import { malformedReply } from './malformed-replies.ts';
import { declareUtf8OnMailFrom } from './mail-from-utf8.ts';

/** Connection attempts per transaction (Postfix smtp_mx_address_limit). */
const MAX_CONNECT_TRIES = 5;
/**
 * Sessions per transaction (Postfix smtp_mx_session_limit): a next hop that failed it before the message leaves its
 * recipients to one more next hop at most, so that hosts that each let a reply time out (commandTimeoutMs) hold the
 * delivery slot twice that at most.
 */
const MAX_SESSIONS = 2;
/**
 * Next-hop names looked up per transaction. A domain's DNS chooses its MX set: thousands of names that do not
 * resolve (or whose lookups time out) made one transaction look up every one of them in turn, holding its
 * delivery slot for hours; the connection limit above counted only addresses actually tried.
 */
export const MAX_HOST_LOOKUPS = 10;
/**
 * SMTP transactions per delivery attempt of one plan when the next hop keeps answering RCPT with "too many
 * recipients": the first plus up to 99 following ones. Recipients left over wait for the next attempt.
 */
export const MAX_TRANSACTIONS = 100;

export interface DeliveryPlan {
  hops: NextHop[];
  tls: TlsPolicy;
  /** Names of the `delivery.dkim` keys that sign the message, one signature each, in this order; none: unsigned. */
  dkim?: readonly string[];
}

export interface TransactionEnv {
  pool: ConnectionPool;
  resolver: DeliveryResolver;
  material: OutboundTlsMaterial;
  dkim: DkimKeys;
  overall: Limiter;
  perDestination: KeyedLimiter;
  /** Destinations that could not be reached lately: their mail is deferred without a connection. */
  suspensions: DestinationSuspensions;
  delivery: DeliveryConfig;
  /** The generation whose key material applies. */
  scope: object;
  heloName: string;
  /** This server's own listeners (own-listeners.ts): a next hop among them is a mail loop. */
  own?: OwnAddress;
  /**
   * The name this server's listeners greet with (`hostname`): a next hop that gives it in its EHLO reply is this
   * server reached another way (a port forward, a balancer, NAT), a mail loop. Unset: not checked.
   */
  ownName?: string;
  log: Logger;
}

export interface Transaction {
  id: string;
  from: string;
  to: string[];
  message: Buffer;
  /** Sent before `message`: its DKIM-Signature fields (signed, `message` is the one they sign). */
  prefix?: Buffer;
  eightBit: boolean;
  /** An SMTPUTF8 message whose header holds UTF-8: it needs SMTPUTF8 whatever its addresses (wire-envelope.ts). */
  utf8Header: boolean;
  /** DSN parameters to pass on to a next hop that offers DSN. */
  dsn?: TransactionDsn;
  /**
   * The message signed, by DKIM key names, shared by the transactions of one attempt: each signing is a whole copy,
   * held while its transaction waits for a slot (a large list post to many domains held one per domain).
   */
  signed?: Map<string, Promise<{ fields: Buffer; message: Buffer }>>;
}

export interface TransactionResult {
  /** One per recipient of the transaction, in its order. */
  outcomes: RecipientOutcome[];
  /** The connection that carried the (last) transaction, if one got that far. */
  connection: ConnectionInfo | null;
  /**
   * The SMTP transactions this took, each with the outcomes settled in it: more than one when the next hop
   * limited the recipients per transaction (452 4.5.3).
   */
  transactions: Array<{ outcomes: RecipientOutcome[]; connection: ConnectionInfo | null }>;
}

/** One SMTP transaction (or the failure to get one going). */
interface Round {
  outcomes: RecipientOutcome[];
  connection: ConnectionInfo | null;
  /** Recipients refused at RCPT as too many for one transaction (isTooManyRecipients). */
  tooMany: string[];
  /** The message went through for some recipient: a following transaction can make progress. */
  delivered: boolean;
  /** The next hop that carried it, tried first for a following transaction. */
  hop?: NextHop;
  /** The transaction failed before the message's final dot went out: the next hop has no copy of it. */
  beforeMessage?: boolean;
}

interface NodemailerError extends Error {
  code?: string;
  command?: string;
  response?: string;
  responseCode?: number;
  recipient?: string;
  rejectedErrors?: NodemailerError[];
}

/**
 * Deliver `tx` under `plan`: one SMTP transaction, then, while the next hop refuses recipients as too many
 * for one transaction (RFC 5321 §4.5.3.1.10) and delivered others, the refused ones in a following
 * transaction — at most MAX_TRANSACTIONS in all. Other RCPT refusals stay per-recipient results.
 */
export async function deliverTransaction(env: TransactionEnv, plan: DeliveryPlan, unsigned: Transaction): Promise<TransactionResult> {
  let tx = unsigned;
  if (plan.dkim?.length) {
    // Signed once per attempt and plan; a key that cannot be read or used is a configuration problem: retry later.
    try {
      const names = JSON.stringify(plan.dkim);
      let signed = unsigned.signed?.get(names);
      if (!signed) {
        signed = Promise.all(plan.dkim.map((name) => env.dkim.key(env.delivery, env.scope, name))).then((keys) => signatureFields(unsigned.message, keys));
        unsigned.signed?.set(names, signed);
      }
      const { fields, message } = await signed;
      tx = { ...unsigned, prefix: fields, message };
    } catch (err) {
      const { outcomes } = everyone(unsigned, asFailure(err));
      return { outcomes, connection: null, transactions: [{ outcomes, connection: null }] };
    }
  }
  const settled = new Map<string, RecipientOutcome>();
  const transactions: TransactionResult['transactions'] = [];
  let connection: ConnectionInfo | null = null;
  let current = tx;
  let currentPlan = plan;
  for (let n = 1; ; n++) {
    const round = await transactionOnce(env, currentPlan, current);
    connection = round.connection ?? connection;
    const carry = new Set(round.delivered && n < MAX_TRANSACTIONS ? round.tooMany : []);
    const tooMany = new Set(round.tooMany);
    // A 552 5.5.3 that is not followed up is still only a limit on this transaction (RFC 5321 §4.5.3.1.10).
    const final = round.outcomes.filter((o) => !carry.has(o.recipient)).map((o) => (tooMany.has(o.recipient) ? temporary(o) : o));
    for (const o of final) settled.set(o.recipient, o);
    transactions.push({ outcomes: final, connection: round.connection });
    const first = round.outcomes.find((o) => tooMany.has(o.recipient));
    if (!carry.size) {
      if (tooMany.size) {
        env.log.warn({ id: tx.id, to: [...tooMany], relay: round.connection?.remote ?? null, reply: first?.reply, transactions: n },
          `too many recipients for one transaction, and no progress or ${MAX_TRANSACTIONS} transactions: ${tooMany.size} wait for the next attempt`);
      }
      break;
    }
    const to = current.to.filter((r) => carry.has(r));
    env.log.info({ id: tx.id, to, relay: round.connection?.remote ?? null, reply: first?.reply, transaction: n },
      `too many recipients for one transaction: ${to.length} more in transaction ${n + 1}`);
    current = { ...tx, to };
    const hop = round.hop;
    if (hop) currentPlan = { ...plan, hops: [hop, ...plan.hops.filter((h) => h !== hop)] };
  }
  return {
    outcomes: tx.to.map((r) => settled.get(r) ?? outcomeForFailure(r, new DeliveryFailure('no result for this recipient', { permanent: false }))),
    connection,
    transactions,
  };
}

/** One transaction: a pooled connection or a new one (next address, next host on connection failures). */
async function transactionOnce(env: TransactionEnv, plan: DeliveryPlan, all: Transaction): Promise<Round> {
  let tx = all;
  // Outcomes from next hops that failed the transaction before the message (nextHopMayTry): the ones they failed
  // temporarily are tried at the next address or MX host; the last word on each recipient is kept for the result.
  const earlier = new Map<string, RecipientOutcome>();
  let last: DeliveryFailure | null = null;
  // The last failure of the hosts before this one (not of this host's other addresses: that host's limits are its own).
  let hostBeforeFailed: DeliveryFailure | null = null;
  const result = (r: Round, hop?: NextHop): Round => withEarlier(all, earlier, hop ? { ...r, hop } : r, hostBeforeFailed);
  let sessions = 0;
  let tries = 0;
  let lookups = 0;
  for (const [index, hop] of plan.hops.entries()) {
    hostBeforeFailed = last;
    if (tries >= MAX_CONNECT_TRIES) break;
    const destination = `${hop.host}:${hop.port}`;
    const suspended = env.suspensions.failure(destination);
    if (suspended) { last = DestinationSuspensions.deferral(destination, suspended); continue; }
    let addresses: string[];
    let security: ConnectionSecurity;
    try {
      if (!hop.addresses && lookups++ >= MAX_HOST_LOOKUPS) break;
      addresses = hop.addresses ?? await env.resolver.addresses(hop.host);
    } catch (err) {
      last = asFailure(err);
      continue;
    }
    if (env.own && addresses.some((a) => env.own!(a, hop.port))) {
      // Ourselves: this hop and the ones after it (no better than we are) would only send it back here. As the
      // best one it is a loop (bounced, as Postfix does); behind better ones we are their backup: it waits for them.
      if (index > 0) break;
      return result(everyone(tx, new DeliveryFailure(`mail for ${recipientDomain(tx.to[0] ?? '')} loops back to myself (${hop.host}[${addresses.find((a) => env.own!(a, hop.port))}]:${hop.port})`, { permanent: true, enhanced: '5.4.6' })));
    }
    try {
      security = await env.material.security(env.delivery, env.scope, plan.tls, hop.host, hop.implicitTls);
    } catch (err) {
      return result(everyone(tx, asFailure(err))); // a configuration problem: no other host would fare better
    }
    // A backlog already waits for this destination (a slow one): waiting behind it would hold the queue
    // runner's slot, which other destinations' mail needs (the runner sets this message aside instead).
    if (env.perDestination.backlogged(destination)) {
      // Unless a next hop already answered in this transaction (earlier): then it was an attempt, its replies the
      // deferral's. Marked busy (not tried), they were set aside uncounted and unrecorded, never bounced at
      // maxAgeHours however long a greylisting first MX deferred them while its backup had a backlog.
      if (!earlier.size) return result(busy(tx, destination));
      continue;
    }
    const releaseDestination = await env.perDestination.acquire(destination);
    const releaseOverall = await env.overall.acquire(tx.id); // taking turns with the other messages waiting (limiter.ts)
    // Every connection to this destination failed before it was in session, none over TLS: it is unreachable.
    let unreachable: DeliveryFailure | null = null;
    let otherFailure = false;
    // This host greeted with our own name behind better hosts: we are their backup (see the address check above).
    let backupOfBetter = false;
    try {
      // Suspended while this waited for its slot: an attempt ahead of it found the destination dead.
      const meanwhile = env.suspensions.failure(destination);
      if (meanwhile) { last = DestinationSuspensions.deferral(destination, meanwhile); continue; }
      const idle = env.pool.takeIdle(poolKey(hop.host, hop.port, security));
      // An address whose session just failed the transaction before the message: it would say the same again.
      let answered: string | null = null;
      if (idle) {
        const r = await sendOn(env, idle, tx);
        if (r !== 'retry') {
          const rest = ++sessions < MAX_SESSIONS ? nextHopMayTry(r) : [];
          if (!rest.length) return result(r, hop);
          tx = goOn(tx, r, rest, earlier);
          otherFailure = true; // it answered: reachable, whatever its other addresses do
          answered = idle.server;
        }
      }
      for (const address of addresses) {
        if (answered === serverOf(address, hop.port)) continue;
        if (tries++ >= MAX_CONNECT_TRIES) break;
        env.pool.makeRoom(destination, env.delivery.perDestinationConcurrency);
        const endpoint = { host: hop.host, address, port: hop.port, security };
        const remote = `${hop.host}[${address}]:${hop.port}`;
        let pc: PooledConnection;
        try {
          pc = await env.pool.open(endpoint, connectOptions(env));
          env.suspensions.lift(destination);
        } catch (err) {
          const own = ownResourceFailure(err, remote);
          if (own) {
            // Nothing reached the next hop: not its failure (no suspension), and no other address would do better.
            last = own;
            otherFailure = true;
            break;
          }
          last = connectionFailure(err as NodemailerError, remote, security.clientCertificate);
          const e = err as NodemailerError & { tlsStarted?: boolean };
          const tlsFailed = e.code === 'ETLS' || !!e.tlsStarted || e.command === 'STARTTLS';
          // Unreachable is no connection or no reply: a next hop that answers, even to refuse (421 for want of a
          // client certificate, say), or whose TLS does not suit our policy, may take other mail, or this one later.
          // But a refusal in plaintext at the greeting, before anything of ours was said, refuses every message
          // alike (Postfix: "refused to talk to me"): unless a connection of ours to it is in session, or closed by
          // us but not yet gone (then it is a limit on connections, and the mail goes on over the open ones, or once
          // the closed one has gone), it is as unreachable. Connected to once
          // per message, a host that came back from an outage saying 421 got one connection for each message queued.
          // One of ours still waiting for its greeting (a host that pauses before it greets) tells by that greeting.
          const server = serverOf(address, hop.port);
          // A reply not in SMTP's form (malformed-replies.ts: a greeting or EHLO reply without a code, or with mixed codes)
          // came from a host that answered: a protocol error of that host (Postfix), deferred and the next one tried,
          // not the destination unreachable.
          if (refusedGreeting(e, security) && !tlsFailed && env.pool.presentCount(destination, server) === 0
            && !(await env.pool.greetedElsewhere(destination, server)) && env.pool.presentCount(destination, server) === 0) unreachable = last;
          else if (tlsFailed || e.code === 'EDNS' || e.responseCode || malformedReply(e.response)) otherFailure = true;
          else unreachable = last;
          if (security.mode !== 'may' || security.secure || !tlsFailed) continue;
          // Opportunistic TLS failed: the same host in plaintext (Postfix does the same).
          env.log.info({ id: tx.id, remote, err: last.message }, 'TLS failed in may mode, retrying without TLS');
          try {
            pc = await env.pool.open({ ...endpoint, security: plaintext(security) }, connectOptions(env));
          } catch (err2) {
            last = connectionFailure(err2 as NodemailerError, remote);
            continue;
          }
        }
        if (greetsAsUs(env, pc)) {
          env.pool.quit(pc);
          if (index > 0) { backupOfBetter = true; break; }
          return result(everyone(tx, new DeliveryFailure(`mail for ${recipientDomain(tx.to[0] ?? '')} loops back to myself (${remote} greets as ${pc.info.greetsAs}, this server's hostname)`, { permanent: true, enhanced: '5.4.6' })));
        }
        const r = await sendOn(env, pc, tx);
        if (r === 'retry') { last = new DeliveryFailure(`${remote}: connection lost before MAIL FROM`, { permanent: false, enhanced: '4.4.2', remoteMta: remote }); continue; }
        const rest = ++sessions < MAX_SESSIONS ? nextHopMayTry(r) : [];
        if (!rest.length) return result(r, hop);
        tx = goOn(tx, r, rest, earlier);
        otherFailure = true; // it answered: reachable, whatever its other addresses do
        env.log.info({ id: tx.id, to: rest, remote, reply: r.outcomes.find((o) => rest.includes(o.recipient))?.reply },
          `${remote} failed the transaction before the message: ${rest.length} recipient(s) go on to the next address or MX host`);
      }
      if (unreachable && !otherFailure) suspend(env, destination, unreachable);
    } finally {
      releaseOverall();
      releaseDestination();
    }
    if (backupOfBetter) break;
  }
  // What a next hop said to a recipient it failed before the message tells more than a later host's failure to connect.
  const fallback = everyone(tx, last ?? new DeliveryFailure('no next hop could be reached', { permanent: false, enhanced: '4.4.1' }));
  return withEarlier(all, earlier, { ...fallback, outcomes: fallback.outcomes.map((o) => earlier.get(o.recipient) ?? o) }, null);
}

/**
 * Whether the next hop of `pc` named itself, in its EHLO reply, as this server's listeners name themselves: this
 * server reached by an address and port not its own (a port forward, a balancer in front of it, NAT), where
 * own-listeners.ts cannot tell. As Postfix ("host … replied to HELO/EHLO with my own hostname"). Not for a name of
 * one label (`localhost`, the default): many hosts use it for themselves.
 */
function greetsAsUs(env: TransactionEnv, pc: PooledConnection): boolean {
  const ours = env.ownName;
  return !!ours && ours.includes('.') && pc.info.greetsAs?.toLowerCase() === ours.toLowerCase();
}

/**
 * The recipients `r` failed temporarily before the message went out (a 4xx or 421 to MAIL FROM, RCPT TO or DATA,
 * the connection lost before the final dot), when nothing of it was delivered: the next address or MX host may take
 * them in the same attempt (RFC 5321 §5.1; Postfix keeps such recipients for the next MX host). None after the
 * final dot (a verdict on the message, or no verdict: that next hop may have it), and none refused as too many
 * for one transaction (a limit of that transaction, followed up by deliverTransaction).
 */
function nextHopMayTry(r: Round): string[] {
  if (!r.beforeMessage || r.delivered || r.tooMany.length) return [];
  return r.outcomes.filter((o) => o.status === 'temporary' && !o.destinationBusy && !o.ownShortage).map((o) => o.recipient);
}

/** Keep `r`'s outcomes in `earlier` and go on with the recipients `rest` only. */
function goOn(tx: Transaction, r: Round, rest: string[], earlier: Map<string, RecipientOutcome>): Transaction {
  for (const o of r.outcomes) earlier.set(o.recipient, o);
  return { ...tx, to: tx.to.filter((t) => rest.includes(t)) };
}

/**
 * `r`, a round for some of `all`'s recipients, with the outcomes `earlier` next hops gave the others, in `all`'s order.
 * An earlier next hop's temporary failure (its reply in `earlier`, or `failedBefore`: a connection that failed, a
 * 4xx to EHLO) stands against a later one's permanent failure that is our own judgement of that host (no 8BITMIME or
 * SMTPUTF8, a SIZE below the message: not a reply of it). That failure bounced mail a greylisting or briefly
 * unreachable first MX would have taken at the retry, for want of what only its backup lacked.
 */
function withEarlier(all: Transaction, earlier: Map<string, RecipientOutcome>, r: Round, failedBefore: DeliveryFailure | null): Round {
  const temporaryBefore = failedBefore && !failedBefore.permanent ? failedBefore : null;
  if (!earlier.size && !temporaryBefore) return r;
  const now = new Map(r.outcomes.map((o) => [o.recipient, o]));
  const last = (t: string): RecipientOutcome => {
    const o = now.get(t);
    if (!o) return earlier.get(t)!;
    const before = earlier.get(t) ?? (temporaryBefore ? outcomeForFailure(t, temporaryBefore) : undefined);
    return before?.status === 'temporary' && o.status === 'permanent' && !o.remoteReply ? before : o;
  };
  return { ...r, outcomes: all.to.map(last) };
}

/**
 * Suspend `destination` until the first retry delay has passed: the messages queued for it are deferred
 * without each waiting out a connection of its own (they come back at their own retry times, by which the
 * suspension is over and one of them tries again).
 */
function suspend(env: TransactionEnv, destination: string, failure: DeliveryFailure): void {
  const ms = Math.round(env.delivery.retrySchedule[0]! * 1000);
  if (env.suspensions.suspend(destination, failure, ms)) {
    env.log.warn({ destination, err: failure.message, seconds: ms / 1000 },
      `${destination}: delivery temporarily suspended for ${ms / 1000} s: ${failure.message}`);
  }
}

/**
 * Errors of this process's or the system's own resources at connect (socket() or connect() failing before a packet
 * left): out of descriptors (a leak, a flood of inbound connections), of kernel memory or socket buffers. Taken for
 * the next hop being unreachable, they suspended it for the first retry delay, and each deferral named it.
 */
const OWN_RESOURCE_ERRORS = new Set(['EMFILE', 'ENFILE', 'ENOBUFS', 'ENOMEM']);

/** A local failure to connect to `remote` (OWN_RESOURCE_ERRORS), as the deferral's reason; null for any other. */
function ownResourceFailure(err: unknown, remote: string): DeliveryFailure | null {
  const e = err as NodemailerError & { originalCode?: string };
  // nodemailer puts its own code (ESOCKET) in place of the system's and keeps that as originalCode.
  const code = [e.originalCode, e.code].find((c) => c !== undefined && OWN_RESOURCE_ERRORS.has(c));
  if (!code) return null;
  return new DeliveryFailure(`${remote}: not connected: this process is out of resources (${code}: ${code === 'EMFILE' || code === 'ENFILE' ? 'too many open files' : 'no memory for the socket'}); not a failure of the next hop`,
    { permanent: false, enhanced: '4.3.0', remoteMta: null, ownShortage: true });
}

/** The next hop's greeting was a 4yz or 5yz reply, on a connection that was not TLS from its start (no certificate of ours seen). */
function refusedGreeting(e: NodemailerError, security: ConnectionSecurity): boolean {
  return e.command === 'CONN' && !!e.responseCode && e.responseCode >= 400 && !security.secure;
}

function connectOptions(env: TransactionEnv): ConnectOptions {
  const d = env.delivery;
  return { heloName: env.heloName, connectTimeoutMs: d.connectTimeoutMs, commandTimeoutMs: d.commandTimeoutMs, endOfDataTimeoutMs: d.endOfDataTimeoutMs };
}

function plaintext(s: ConnectionSecurity): ConnectionSecurity {
  return { ...s, ignoreTLS: true, opportunisticTLS: false, requireTLS: false, key: `${s.key}|plaintext` };
}

/**
 * Run the transaction on `pc` and give the connection back to the pool. 'retry': the connection died
 * before the server saw any recipient (a pooled connection the server had closed), so nothing was sent.
 * Only what the next hop's EHLO reply allows is sent (wire-envelope.ts); the rest fails here.
 */
async function sendOn(env: TransactionEnv, pc: PooledConnection, tx: Transaction): Promise<Round | 'retry'> {
  const extensions = (pc.conn as unknown as { _supportedExtensions?: string[] })._supportedExtensions ?? [];
  const wire = wireEnvelope(tx, { eightBitMime: extensions.includes('8BITMIME'), smtputf8: extensions.includes('SMTPUTF8') }, pc.info.remote);
  if (!wire.to.length) {
    env.pool.release(pc, true); // nothing was sent on it
    return { connection: pc.info, outcomes: wire.refused, tooMany: [], delivered: false };
  }
  declareUtf8OnMailFrom(pc.conn, wire.declareUtf8);
  const dsn = passDsnOn(pc.conn, tx.dsn, (sent) => tx.dsn?.recipients.get(wire.queued.get(sent)?.[0] ?? ''));
  const r = await sendWire(env, pc, { ...tx, from: wire.from, to: wire.to }, dsn.mailFrom);
  if (r === 'retry') return r;
  // A next hop that offers DSN took each recipient's NOTIFY: its notices are its own to send, not ours.
  if (dsn.offered) r.outcomes = r.outcomes.map((o) => ({ ...o, dsnPassedOn: true }));
  if (!wire.refused.length && wire.to.every((w, i) => w === tx.to[i])) return r;
  // Back to the recipients as queued.
  const byRecipient = new Map(wire.refused.map((o) => [o.recipient, o]));
  for (const o of r.outcomes) for (const q of wire.queued.get(o.recipient) ?? []) byRecipient.set(q, { ...o, recipient: q });
  return {
    ...r,
    outcomes: tx.to.map((q) => byRecipient.get(q)!),
    tooMany: r.tooMany.flatMap((w) => wire.queued.get(w) ?? []),
  };
}

async function sendWire(env: TransactionEnv, pc: PooledConnection, tx: Transaction, mailDsn?: { ret?: string; envid?: string }): Promise<Round | 'retry'> {
  const remote = pc.info.remote;
  const envelope: SMTPEnvelope = { from: tx.from, to: tx.to, size: (tx.prefix?.length ?? 0) + tx.message.length, use8BitMime: tx.eightBit, ...(mailDsn ? { dsn: mailDsn } : {}) };
  try {
    const info = await pc.send(envelope, tx.message, tx.prefix);
    if (info.accepted.length && !isVerdict(info.response)) {
      // nodemailer takes any reply starting with "2" for success; one that is no reply code ("2xx", "25")
      // says nothing: retried, and it may then arrive twice. (markMalformedReplies hands such a reply on without
      // its "2" already: this stays for any other way one might get here.)
      env.pool.release(pc, false);
      return mayHaveIt(pc, tx, `${remote}: malformed reply to the end of the message (${oneLine(info.response)})`);
    }
    env.pool.release(pc, true);
    const byRecipient = new Map<string, RecipientOutcome>();
    const tooMany: string[] = [];
    for (const e of (info.rejectedErrors ?? []) as NodemailerError[]) {
      if (!e.recipient || !e.response) continue;
      byRecipient.set(e.recipient, outcomeForReply(e.recipient, e.response, remote));
      if (isTooManyRecipients(e)) tooMany.push(e.recipient);
    }
    for (const r of info.accepted) byRecipient.set(r, outcomeForReply(r, info.response, remote));
    return {
      connection: pc.info,
      outcomes: tx.to.map((r) => byRecipient.get(r) ?? outcomeForFailure(r, new DeliveryFailure(`${remote}: no reply for this recipient`, { permanent: false, remoteMta: remote }))),
      tooMany: tooMany.filter((r) => tx.to.includes(r)),
      delivered: info.accepted.some((r) => byRecipient.get(r)?.status === 'delivered'),
    };
  } catch (err) {
    const e = err as NodemailerError;
    // A next hop that lets a reply time out (a dripping or stalled host) would hold every message queued for it for as long.
    if (e.code === 'ETIMEDOUT') {
      suspend(env, pc.destination, new DeliveryFailure(`${remote}: timed out in session (${e.message})`, { permanent: false, enhanced: '4.4.2', remoteMta: remote }));
    }
    // nodemailer keeps the envelope of the transaction under way (our object, annotated); an older one
    // means ours never got as far as MAIL FROM.
    const current = (pc.conn as unknown as { _envelope?: unknown })._envelope;
    const pending = current === envelope ? envelope as SMTPEnvelope & { accepted?: string[]; rejectedErrors?: NodemailerError[] } : null;
    const sawRecipients = !!pending && ((pending.accepted?.length ?? 0) + (pending.rejectedErrors?.length ?? 0)) > 0;
    if (!e.responseCode && !sawRecipients && pc.messages > 1) {
      env.pool.release(pc, false);
      return 'retry';
    }
    if (e.code === EARLY_REPLY) {
      // A 2yz before our final dot: no verdict. The next hop may keep what it read of the message, so it is deferred.
      env.pool.release(pc, false);
      return mayHaveIt(pc, tx, `${remote}: replied ${oneLine(e.response ?? '')} before the end of the message was sent (replies out of step)`);
    }
    if (pc.endOfDataSent && !(e.responseCode && e.response && isVerdict(e.response))) {
      // The whole message went out and no verdict came (reset, timeout, a reply that is no 2yz/4yz/5yz
      // reply code, as "354" or garbage): the next hop may have taken it.
      env.pool.release(pc, false);
      return mayHaveIt(pc, tx, e.response
        ? `${remote}: malformed reply to the end of the message (${oneLine(malformedReply(e.response) ?? e.response)})`
        : `${remote}: lost connection after the end of the message, before its reply (${e.message})`);
    }
    // A refusal read while the message was still going out (sent before its end): an RSET now went onto the socket
    // inside the message's data, and its reply was awaited from a next hop reading it as a line of the message. Such
    // a connection is closed instead, before the final dot (the next hop then has no copy).
    const refusedMidMessage = e.code === 'EMESSAGE' && !pc.endOfDataSent;
    const reusable = !!e.responseCode && (e.code === 'EENVELOPE' || e.code === 'EMESSAGE') && e.responseCode !== 421 && !refusedMidMessage && await pc.reset();
    env.pool.release(pc, reusable);
    const rejected = e.command === 'MAIL FROM' ? [] : e.rejectedErrors ?? pending?.rejectedErrors ?? [];
    const tooMany = rejected.filter((re) => re.recipient && tx.to.includes(re.recipient) && isTooManyRecipients(re)).map((re) => re.recipient!);
    return { connection: pc.info, outcomes: outcomesForError(tx.to, e, pending?.rejectedErrors ?? [], remote), tooMany, delivered: false, beforeMessage: !pc.endOfDataSent };
  }
}

/** Every recipient deferred after the whole message went out without a verdict on it: it may arrive twice. */
function mayHaveIt(pc: PooledConnection, tx: Transaction, what: string): Round {
  const remote = pc.info.remote;
  const f = new DeliveryFailure(`${what}: the next hop may have it, so it may be delivered more than once`, { permanent: false, enhanced: '4.4.2', remoteMta: remote });
  return { connection: pc.info, outcomes: tx.to.map((r) => outcomeForFailure(r, f)), tooMany: [], delivered: false };
}

/** A reply that is a verdict on a message: a 2yz, 4yz or 5yz reply code (RFC 5321 §4.2), first line. */
function isVerdict(reply: string): boolean {
  return /^[245]\d\d(?:[ -]|\r?\n|$)/.test(reply);
}

function outcomesForError(to: string[], e: NodemailerError, pendingRejected: NodemailerError[], remote: string): RecipientOutcome[] {
  if (e.code === 'EPROTOCOL' && e.command === 'DATA' && e.response) {
    // A 2yz to DATA (connection-pool.ts): nothing was sent; recipients refused at RCPT keep their replies.
    const f = new DeliveryFailure(`${remote}: ${oneLine(e.response)} in reply to DATA command, not a go-ahead (354): the message was not sent`,
      { permanent: false, enhanced: '4.5.0', remoteMta: remote });
    const refused = new Map(pendingRejected.filter((re) => re.recipient && re.response).map((re) => [re.recipient!, outcomeForReply(re.recipient!, re.response!, remote)]));
    return to.map((r) => refused.get(r) ?? outcomeForFailure(r, f));
  }
  // Every recipient refused: each keeps its own reply, also when the last one had no code to give the error (malformed-replies.ts).
  if (e.response && ((e.responseCode && e.responseCode >= 400) || (e.code === 'EENVELOPE' && e.command === 'RCPT TO'))) {
    const byRecipient = new Map<string, RecipientOutcome>();
    // A refused MAIL FROM is the answer for everyone (pipelined RCPTs then only got 503 "need MAIL").
    if (e.command !== 'MAIL FROM') {
      for (const re of e.rejectedErrors ?? pendingRejected) {
        if (re.recipient && re.response) byRecipient.set(re.recipient, outcomeForReply(re.recipient, re.response, remote));
      }
    }
    return to.map((r) => byRecipient.get(r) ?? outcomeForReply(r, e.response!, remote));
  }
  if (e.code === 'EMESSAGE' && !e.responseCode) {
    const f = new DeliveryFailure(`${remote}: ${e.message}`, { permanent: true, enhanced: '5.3.4', remoteMta: remote });
    return to.map((r) => outcomeForFailure(r, f));
  }
  const f = connectionFailure(e, remote);
  return to.map((r) => outcomeForFailure(r, f));
}

/**
 * A connection-level problem (refused, timeout, TLS, lost connection): always temporary. A TLS failure names the
 * client certificate offered (and says if it has expired): a next hop that refuses one often only closes the
 * connection, right after the handshake, and nothing else would tell the administrator which one it saw.
 */
function connectionFailure(e: NodemailerError & { tlsStarted?: boolean }, remote: string, certificate?: ConnectionSecurity['clientCertificate']): DeliveryFailure {
  if (e instanceof DeliveryFailure) return e;
  if (e.response && e.responseCode && e.command !== 'STARTTLS') {
    // The server refused the session (greeting, EHLO, after the handshake): its own reply says why. Temporary
    // here, as Postfix's smtp_skip_5xx_greeting: another host or a later attempt may do better.
    const response = oneLine(e.response);
    const code = /^\d{3}[ -]([245])\.(\d{1,3}\.\d{1,3})\b/.exec(response);
    const at = e.command && e.command !== 'CONN' && e.command !== 'API' ? ` after ${e.command}` : '';
    return new DeliveryFailure(`${remote}: refused${at}: ${response}`, { permanent: false, enhanced: code ? `4.${code[2]}` : '4.4.1', remoteMta: remote });
  }
  // The next hop's words, whether a reply or in nodemailer's message: one bounded line, no control characters.
  const malformed = malformedReply(e.response);
  // A greeting not in SMTP's form: nodemailer's "Invalid greeting. response=…" was logged as a connection that failed.
  if (malformed && e.command === 'CONN') {
    return new DeliveryFailure(`${remote}: protocol error: malformed greeting (${oneLine(malformed)})`, { permanent: false, enhanced: '4.5.0', remoteMta: remote });
  }
  const reply = e.response && e.responseCode ? ` (${oneLine(e.response)})` : malformed ? ` (${oneLine(malformed)})` : '';
  const base = oneLine(withoutOpensslFrame((e.message || String(e)).replace(/: \d{3}[ -].*$/s, '').replace(/: malformed reply \(.*$/s, '')));
  const tls = e.command === 'STARTTLS' || e.code === 'ETLS' || !!e.tlsStarted;
  const enhanced = tls ? '4.7.5' : e.code === 'ETIMEDOUT' ? '4.4.2' : '4.4.1';
  const what = tls ? 'TLS failed' : e.command && e.command !== 'CONN' && e.command !== 'API' ? `${e.command} failed` : 'connection failed';
  const expired = certificate && certificate.notAfter.getTime() < Date.now() ? `, which expired on ${certificate.notAfter.toISOString()}` : '';
  const offered = tls && certificate ? ` (client certificate ${JSON.stringify(certificate.name)}${expired})` : '';
  return new DeliveryFailure(`${remote}: ${what}: ${base}${reply}${offered}`, { permanent: false, enhanced, remoteMta: remote });
}

/**
 * OpenSSL's error string, `40FD…:error:0A000410:SSL routines:ssl3_read_bytes:ssl/tls alert handshake failure:
 * ../deps/openssl/…/rec_layer_s3.c:918:SSL alert number 40`, as its reason and alert: the rest (a thread id, a
 * function and a source file of Node's build) tells the administrator or a bounce's reader nothing.
 */
function withoutOpensslFrame(message: string): string {
  return message.replace(/\b[0-9A-F]+:error:[0-9A-F]+:[^:]*:[^:]*:([^:]+):[^\s:]+:\d+:(SSL alert number \d+)?/g,
    (_all, reason: string, alert?: string) => (alert ? `${reason} (${alert})` : reason));
}

function asFailure(err: unknown): DeliveryFailure {
  if (err instanceof DeliveryFailure) return err;
  return new DeliveryFailure((err as Error).message ?? String(err), { permanent: false });
}

/** Nothing tried: `destination`'s slots and its waiting line are full (RecipientOutcome.destinationBusy). */
function busy(tx: Transaction, destination: string): Round {
  const failure = new DeliveryFailure(`${destination}: every delivery slot of this destination is busy and as many transactions wait for one`, { permanent: false, enhanced: '4.4.5', remoteMta: null });
  return { ...everyone(tx, failure), outcomes: tx.to.map((r) => ({ ...outcomeForFailure(r, failure), destinationBusy: destination })) };
}

function everyone(tx: Transaction, failure: DeliveryFailure): Round {
  return { connection: null, outcomes: tx.to.map((r) => outcomeForFailure(r, failure)), tooMany: [], delivered: false };
}

/**
 * A RCPT refused because the transaction has too many recipients (RFC 5321 §4.5.3.1.10): 452 with 4.5.3 or
 * without an enhanced code, and 552 5.5.3, which the RFC tells clients to treat the same way. A 452 with
 * another enhanced code (4.2.2 mailbox full, 4.3.1 out of storage) is an ordinary temporary failure.
 */
export function isTooManyRecipients(e: { command?: string; response?: string }): boolean {
  if (e.command !== 'RCPT TO' || !e.response) return false;
  const r = parseReply(e.response);
  if (r.code === 452) return r.enhanced === null || r.enhanced === '4.5.3';
  return r.code === 552 && r.enhanced === '5.5.3';
}

function temporary(o: RecipientOutcome): RecipientOutcome {
  return o.status === 'permanent' ? { ...o, status: 'temporary', enhanced: o.enhanced.replace(/^5/, '4') } : o;
}
