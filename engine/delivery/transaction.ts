/**
 * One SMTP transaction to a destination: take a pooled connection or open one (next address, next MX
 * host on connection-level failures; plaintext retry when opportunistic TLS fails), send MAIL/RCPT/DATA
 * with nodemailer, and report a result per recipient. Bounded overall and per destination.
 */
import type { SMTPEnvelope } from 'nodemailer/lib/smtp-connection';
import type { DeliveryConfig } from '../config/schema.ts';
import type { Logger } from '../logging/logger.ts';
import { poolKey, type ConnectionInfo, type ConnectionPool, type PooledConnection } from './connection-pool.ts';
import type { DeliveryResolver } from './dns.ts';
import type { KeyedLimiter, Limiter } from './limiter.ts';
import type { ConnectionSecurity, OutboundTlsMaterial, TlsPolicy } from './outbound-tls.ts';
import { DeliveryFailure, outcomeForFailure, outcomeForReply, type RecipientOutcome } from './outcome.ts';
import type { NextHop } from './routing.ts';

/** Connection attempts per transaction (Postfix smtp_mx_address_limit). */
const MAX_CONNECT_TRIES = 5;

export interface DeliveryPlan {
  hops: NextHop[];
  tls: TlsPolicy;
}

export interface TransactionEnv {
  pool: ConnectionPool;
  resolver: DeliveryResolver;
  material: OutboundTlsMaterial;
  overall: Limiter;
  perDestination: KeyedLimiter;
  delivery: DeliveryConfig;
  /** The generation whose key material applies. */
  scope: object;
  heloName: string;
  log: Logger;
}

export interface Transaction {
  id: string;
  from: string;
  to: string[];
  message: Buffer;
  eightBit: boolean;
}

export interface TransactionResult {
  outcomes: RecipientOutcome[];
  /** The connection that carried the transaction, if one got that far. */
  connection: ConnectionInfo | null;
}

interface NodemailerError extends Error {
  code?: string;
  command?: string;
  response?: string;
  responseCode?: number;
  recipient?: string;
  rejectedErrors?: NodemailerError[];
}

export async function deliverTransaction(env: TransactionEnv, plan: DeliveryPlan, tx: Transaction): Promise<TransactionResult> {
  let last: DeliveryFailure | null = null;
  let tries = 0;
  for (const hop of plan.hops) {
    if (tries >= MAX_CONNECT_TRIES) break;
    let addresses: string[];
    let security: ConnectionSecurity;
    try {
      addresses = hop.addresses ?? await env.resolver.addresses(hop.host);
    } catch (err) {
      last = asFailure(err);
      continue;
    }
    try {
      security = await env.material.security(env.delivery, env.scope, plan.tls, hop.host, hop.implicitTls);
    } catch (err) {
      return everyone(tx, asFailure(err)); // a configuration problem: no other host would fare better
    }
    const destination = `${hop.host}:${hop.port}`;
    const releaseDestination = await env.perDestination.acquire(destination);
    const releaseOverall = await env.overall.acquire();
    try {
      const idle = env.pool.takeIdle(poolKey(hop.host, hop.port, security));
      if (idle) {
        const r = await sendOn(env, idle, tx);
        if (r !== 'retry') return r;
      }
      for (const address of addresses) {
        if (tries++ >= MAX_CONNECT_TRIES) break;
        env.pool.makeRoom(destination, env.delivery.perDestinationConcurrency);
        const endpoint = { host: hop.host, address, port: hop.port, security };
        const remote = `${hop.host}[${address}]:${hop.port}`;
        let pc: PooledConnection;
        try {
          pc = await env.pool.open(endpoint, connectOptions(env));
        } catch (err) {
          last = connectionFailure(err as NodemailerError, remote);
          const e = err as NodemailerError & { tlsStarted?: boolean };
          if (security.mode !== 'may' || security.secure || !(e.code === 'ETLS' || e.tlsStarted)) continue;
          // Opportunistic TLS failed: the same host in plaintext (Postfix does the same).
          env.log.info({ id: tx.id, remote, err: last.message }, 'TLS failed in may mode, retrying without TLS');
          try {
            pc = await env.pool.open({ ...endpoint, security: plaintext(security) }, connectOptions(env));
          } catch (err2) {
            last = connectionFailure(err2 as NodemailerError, remote);
            continue;
          }
        }
        const r = await sendOn(env, pc, tx);
        if (r === 'retry') { last = new DeliveryFailure(`${remote}: connection lost before MAIL FROM`, { permanent: false, enhanced: '4.4.2', remoteMta: remote }); continue; }
        return r;
      }
    } finally {
      releaseOverall();
      releaseDestination();
    }
  }
  return everyone(tx, last ?? new DeliveryFailure('no next hop could be reached', { permanent: false, enhanced: '4.4.1' }));
}

function connectOptions(env: TransactionEnv): { heloName: string; connectTimeoutMs: number; commandTimeoutMs: number } {
  return { heloName: env.heloName, connectTimeoutMs: env.delivery.connectTimeoutMs, commandTimeoutMs: env.delivery.commandTimeoutMs };
}

function plaintext(s: ConnectionSecurity): ConnectionSecurity {
  return { ...s, ignoreTLS: true, opportunisticTLS: false, requireTLS: false, key: `${s.key}|plaintext` };
}

/**
 * Run the transaction on `pc` and give the connection back to the pool. 'retry': the connection died
 * before the server saw any recipient (a pooled connection the server had closed), so nothing was sent.
 */
async function sendOn(env: TransactionEnv, pc: PooledConnection, tx: Transaction): Promise<TransactionResult | 'retry'> {
  const remote = pc.info.remote;
  const envelope: SMTPEnvelope = { from: tx.from, to: tx.to, size: tx.message.length, use8BitMime: tx.eightBit };
  try {
    const info = await pc.send(envelope, tx.message);
    env.pool.release(pc, true);
    const byRecipient = new Map<string, RecipientOutcome>();
    for (const e of (info.rejectedErrors ?? []) as NodemailerError[]) {
      if (e.recipient && e.response) byRecipient.set(e.recipient, outcomeForReply(e.recipient, e.response, remote));
    }
    for (const r of info.accepted) byRecipient.set(r, outcomeForReply(r, info.response, remote));
    return { connection: pc.info, outcomes: tx.to.map((r) => byRecipient.get(r) ?? outcomeForFailure(r, new DeliveryFailure(`${remote}: no reply for this recipient`, { permanent: false, remoteMta: remote }))) };
  } catch (err) {
    const e = err as NodemailerError;
    // nodemailer keeps the envelope of the transaction under way (our object, annotated); an older one
    // means ours never got as far as MAIL FROM.
    const current = (pc.conn as unknown as { _envelope?: unknown })._envelope;
    const pending = current === envelope ? envelope as SMTPEnvelope & { accepted?: string[]; rejectedErrors?: NodemailerError[] } : null;
    const sawRecipients = !!pending && ((pending.accepted?.length ?? 0) + (pending.rejectedErrors?.length ?? 0)) > 0;
    if (!e.responseCode && !sawRecipients && pc.messages > 1) {
      env.pool.release(pc, false);
      return 'retry';
    }
    const reusable = !!e.responseCode && (e.code === 'EENVELOPE' || e.code === 'EMESSAGE') && e.responseCode !== 421 && await pc.reset();
    env.pool.release(pc, reusable);
    return { connection: pc.info, outcomes: outcomesForError(tx.to, e, pending?.rejectedErrors ?? [], remote) };
  }
}

function outcomesForError(to: string[], e: NodemailerError, pendingRejected: NodemailerError[], remote: string): RecipientOutcome[] {
  if (e.responseCode && e.response && e.responseCode >= 400) {
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

/** A connection-level problem (refused, timeout, TLS, lost connection): always temporary. */
function connectionFailure(e: NodemailerError & { tlsStarted?: boolean }, remote: string): DeliveryFailure {
  if (e instanceof DeliveryFailure) return e;
  const reply = e.response && e.responseCode ? ` (${e.response.replace(/\s+/g, ' ')})` : '';
  const base = (e.message || String(e)).replace(/: \d{3}[ -].*$/s, '');
  const tls = e.code === 'ETLS' || !!e.tlsStarted;
  const enhanced = tls ? '4.7.5' : e.code === 'ETIMEDOUT' ? '4.4.2' : '4.4.1';
  const what = tls ? 'TLS failed' : e.command && e.command !== 'CONN' && e.command !== 'API' ? `${e.command} failed` : 'connection failed';
  return new DeliveryFailure(`${remote}: ${what}: ${base}${reply}`, { permanent: false, enhanced, remoteMta: remote });
}

function asFailure(err: unknown): DeliveryFailure {
  if (err instanceof DeliveryFailure) return err;
  return new DeliveryFailure((err as Error).message ?? String(err), { permanent: false });
}

function everyone(tx: Transaction, failure: DeliveryFailure): TransactionResult {
  return { connection: null, outcomes: tx.to.map((r) => outcomeForFailure(r, failure)) };
}
