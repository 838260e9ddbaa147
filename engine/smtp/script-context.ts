/** Builds the plain-data contexts that cross into the sandbox from smtp-server session + our state. */
import type { SMTPServerAddress, SMTPServerSession } from 'smtp-server';
import type { ConnectionInfo, EnvelopeAddress } from '../sandbox/api/index.ts';
import { GrowingList, KEPT_LIST_MIN, type ListView } from '../sandbox/index.ts';
import type { ConnectionState, FactsMemo, RecipientsMemo } from './connection-state.ts';
import { asciiDomain } from '../policy/domain-key.ts';

/**
 * The connection facts of the per-message hooks, built once per connection and again only when one of
 * the fields they come from changes (every such field is compared here, so a new one must be added).
 * A script call then copies nothing and builds no key: a message makes three calls with the same facts.
 */
export function sharedConnectionFacts(session: SMTPServerSession, state: ConnectionState): FactsMemo {
  const memo = state.factsMemo;
  if (memo !== null && memo.session === session && memo.remoteAddress === session.remoteAddress && memo.remotePort === session.remotePort
    && memo.secure === session.secure && memo.tlsOptions === session.tlsOptions
    && memo.servername === session.servername && memo.listener === state.listener && memo.helo === state.heloName
    && memo.user === state.user && memo.mechanism === state.mechanism && memo.tlsMode === state.tlsMode
    && memo.certificate === state.certificate && memo.identity === state.identity) return memo;
  const info = Object.freeze(connectionInfo(session, state));
  const fresh: FactsMemo = {
    session, remoteAddress: session.remoteAddress, remotePort: session.remotePort, secure: session.secure,
    tlsOptions: session.tlsOptions, servername: session.servername, listener: state.listener,
    helo: state.heloName, user: state.user, mechanism: state.mechanism, tlsMode: state.tlsMode, certificate: state.certificate,
    identity: state.identity, info, key: connectionKey(info),
  };
  state.factsMemo = fresh;
  return fresh;
}

export function connectionInfo(session: SMTPServerSession, state: ConnectionState): ConnectionInfo {
  const cipher = session.secure ? (session.tlsOptions as { name?: string; standardName?: string; version?: string } | false) : false;
  return {
    id: session.id,
    source: 'smtp',
    remoteAddress: session.remoteAddress,
    remotePort: session.remotePort,
    localAddress: session.localAddress,
    localPort: session.localPort,
    listener: state.listener.name,
    helo: state.heloName,
    auth: state.user ? { username: state.user, mechanism: state.mechanism ?? 'UNKNOWN' } : null,
    tls: cipher ? {
      protocol: cipher.version ?? '',
      cipher: cipher.standardName ?? cipher.name ?? '',
      sni: session.servername || null,
      mode: state.tlsMode ?? 'starttls',
    } : null,
    clientCertificate: state.certificate,
    certificateIdentity: state.identity.identity,
  };
}

/**
 * Changes whenever anything in `info` does (the id stands for the addresses, ports and listener, which
 * never change within a connection). The sandbox keeps one copy of a connection's facts per key in each
 * isolate, so a call copies only its own arguments across.
 */
export function connectionKey(info: ConnectionInfo): string {
  const { auth, tls, clientCertificate: cert } = info;
  return [
    info.id, info.helo ?? '', auth ? `${auth.mechanism}:${auth.username}` : '',
    tls ? `${tls.protocol}/${tls.cipher}/${tls.mode}/${tls.sni ?? ''}` : '',
    cert ? `${cert.fingerprint.sha256}/${cert.verified}/${cert.verifyError ?? ''}` : '', info.certificateIdentity ?? '',
  ].join('\n');
}

export function envelopeAddress(addr: SMTPServerAddress | false | undefined): EnvelopeAddress | null {
  if (!addr) return null;
  const at = addr.address.lastIndexOf('@');
  const params: Record<string, string | true> = {};
  const args = addr.args as Record<string, string | true> | false | undefined;
  // for…in, not Object.entries(): no arrays per address (smtp-server's args is a plain object literal).
  if (args) for (const k in args) params[k.toUpperCase()] = args[k]!;
  return {
    address: addr.address,
    localPart: at < 0 ? addr.address : addr.address.slice(0, at),
    domain: at < 0 ? '' : addr.address.slice(at + 1).toLowerCase(),
    asciiDomain: at < 0 ? '' : asciiDomain(addr.address.slice(at + 1)),
    params,
  };
}

/** ctx.transaction as it crosses: TransactionInfo, its recipients a view the sandbox sends long ones of as changes. */
export interface TransactionFacts { id: string; sender: EnvelopeAddress | null; recipients: ListView<EnvelopeAddress> }

/** `rcpt`: the recipient an rcptto call decides (not yet in the list; smtp-server may replace an entry with it). */
export function transactionInfo(session: SMTPServerSession, state: ConnectionState, rcpt?: SMTPServerAddress): TransactionFacts {
  return {
    id: state.transactionId ?? '',
    sender: envelopeAddress(session.envelope.mailFrom),
    recipients: recipientsView(session.envelope.rcptTo, state, rcpt),
  };
}

/**
 * The recipients so far, each made once: a RCPT's call costs the same however many came before it. Items are
 * appended as smtp-server appends them; a repeated address replaces its entry in smtp-server's list, which
 * only the last rcptto call's RCPT can have done since (found by address in a long list), and anything else (a
 * short list, the data call, a transaction without rcptto calls) compares every entry.
 */
function recipientsView(rcptTo: SMTPServerAddress[], state: ConnectionState, rcpt: SMTPServerAddress | undefined): ListView<EnvelopeAddress> {
  let memo = state.recipientsMemo;
  if (memo === null || memo.rcptTo !== rcptTo || memo.parsed.length > rcptTo.length) {
    memo = state.recipientsMemo = { rcptTo, parsed: [], list: new GrowingList(), index: null, pending: null };
  } else if (memo.pending !== null && rcpt !== undefined && memo.parsed.length >= KEPT_LIST_MIN) {
    if (memo.index === null) {
      memo.index = new Map();
      for (let i = 0; i < memo.parsed.length; i++) memo.index.set(memo.parsed[i]!.address.toLowerCase(), i);
    }
    const i = memo.index.get(memo.pending.address.toLowerCase());
    if (i !== undefined) refresh(memo, i);
  } else {
    for (let i = 0; i < memo.parsed.length; i++) refresh(memo, i);
  }
  for (let i = memo.parsed.length; i < rcptTo.length; i++) {
    const entry = rcptTo[i]!;
    memo.parsed.push(entry);
    memo.index?.set(entry.address.toLowerCase(), i);
    memo.list.push(envelopeAddress(entry)!);
  }
  memo.pending = rcpt ?? null;
  return memo.list.view();
}

function refresh(memo: RecipientsMemo, i: number): void {
  const entry = memo.rcptTo[i]!;
  if (entry === memo.parsed[i]) return;
  memo.parsed[i] = entry;
  memo.list.set(i, envelopeAddress(entry)!);
}
