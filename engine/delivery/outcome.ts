/**
 * What became of each recipient of a delivery attempt, and the classification of replies and errors
 * into delivered / temporary (retry later) / permanent (bounce now).
 */
import { withoutControls } from '../smtp/reply.ts';

export type RecipientStatus = 'delivered' | 'temporary' | 'permanent';

export interface RecipientOutcome {
  recipient: string;
  status: RecipientStatus;
  /** The remote reply ("550 5.1.1 …") or our own description of what went wrong. */
  reply: string;
  /** RFC 3463 status for the DSN, e.g. `5.1.1`. */
  enhanced: string;
  /** The next hop that gave `reply`, when one did (`host[address]:port`). */
  remoteMta: string | null;
  /** Whether `reply` came from a remote server (DSN Diagnostic-Code: smtp) rather than from us. */
  remoteReply: boolean;
  /** The next hop offered DSN and was given the recipient's DSN parameters: a success notice is its to send. */
  dsnPassedOn?: boolean;
  /**
   * Not tried: the destination (`host:port`) named here had every slot taken and as many transactions waiting
   * (KeyedLimiter.backlogged). Not a failure of the recipient: the queue runner sets the message aside until
   * that destination has room, without counting an attempt.
   */
  destinationBusy?: string;
  /**
   * Not tried either: this process was out of its own resources (descriptors, socket memory) before a packet left.
   * Not held against the message: the queue runner does not count such an attempt, nor bounce an old message on it.
   */
  ownShortage?: boolean;
}

/** A failure that applies to every recipient of a transaction. */
export class DeliveryFailure extends Error {
  readonly permanent: boolean;
  readonly enhanced: string;
  readonly remoteMta: string | null;
  readonly remoteReply: boolean;
  /** This process's own shortage (RecipientOutcome.ownShortage), not the next hop's failure. */
  readonly ownShortage: boolean;
  constructor(message: string, opts: { permanent: boolean; enhanced?: string; remoteMta?: string | null; remoteReply?: boolean; ownShortage?: boolean }) {
    super(message);
    this.name = 'DeliveryFailure';
    this.permanent = opts.permanent;
    this.enhanced = opts.enhanced ?? (opts.permanent ? '5.0.0' : '4.0.0');
    this.remoteMta = opts.remoteMta ?? null;
    this.remoteReply = opts.remoteReply ?? false;
    this.ownShortage = opts.ownShortage ?? false;
  }
}

const ENHANCED = /^([245])\.(\d{1,3})\.(\d{1,3})$/;

/** Split an SMTP reply ("550-5.1.1 a\n550 5.1.1 b") into its code, enhanced code and one-line text. */
export function parseReply(reply: string): { code: number; enhanced: string | null; text: string } {
  const lines = reply.split(/\r?\n/).filter((l) => l.length);
  const code = Number(/^(\d{3})/.exec(lines[0] ?? '')?.[1] ?? 0);
  const texts = lines.map((l) => l.replace(/^\d{3}[ -]?/, ''));
  const first = texts[0]?.split(' ')[0] ?? '';
  const m = ENHANCED.exec(first);
  const enhanced = m && code && m[1] === String(code)[0] ? first : null;
  const text = texts.map((t) => (enhanced && t.startsWith(enhanced) ? t.slice(enhanced.length).trim() : t.trim())).join(' ');
  return { code, enhanced, text };
}

/** Characters of a next hop's reply kept (a reply may be up to 1 MB: nodemailer's limit). */
const MAX_REPLY_CHARS = 1000;

/**
 * One line for logs, state files and DSNs: multi-line replies joined, control characters removed, at most
 * MAX_REPLY_CHARS (a single-line reply was kept whole: 1 MB in each log line, in the state file up to 20
 * times, in previousErrors, and in the bounce). The C1 ones and U+2028/U+2029 too: the next hop's operator
 * chose the text, and `postern queue list` prints it to a terminal (U+009B is CSI to xterm).
 */
export function oneLine(reply: string): string {
  const lines = reply.split(/\r?\n/).filter((l) => l.length);
  if (lines.length <= 1) return withoutControls((lines[0] ?? '').slice(0, MAX_REPLY_CHARS)).trim();
  const code = /^(\d{3})[ -]/.exec(lines[0]!)?.[1];
  const body = lines.map((l, i) => (i === 0 ? l.replace(/^(\d{3})-/, '$1 ') : code && l.startsWith(code) ? l.slice(4) : l)).join(' ');
  return withoutControls(body.slice(0, MAX_REPLY_CHARS)).trim();
}

/** Outcome of a recipient for an SMTP reply code (2xx delivered, 5xx permanent, anything else temporary). */
export function outcomeForReply(recipient: string, reply: string, remoteMta: string | null): RecipientOutcome {
  const r = parseReply(reply);
  const line = oneLine(reply);
  if (r.code >= 200 && r.code < 300) {
    return { recipient, status: 'delivered', reply: line, enhanced: r.enhanced ?? '2.0.0', remoteMta, remoteReply: true };
  }
  // 503 is a sequence error, not a verdict on the message (RFC 5321; nodemailer agrees).
  const permanent = r.code >= 500 && r.code < 600 && r.code !== 503;
  const enhanced = r.enhanced ?? (permanent ? '5.0.0' : '4.0.0');
  return { recipient, status: permanent ? 'permanent' : 'temporary', reply: line, enhanced, remoteMta, remoteReply: true };
}

export function outcomeForFailure(recipient: string, failure: DeliveryFailure): RecipientOutcome {
  return {
    recipient, status: failure.permanent ? 'permanent' : 'temporary', reply: failure.message, enhanced: failure.enhanced,
    remoteMta: failure.remoteMta, remoteReply: failure.remoteReply, ...(failure.ownShortage ? { ownShortage: true } : {}),
  };
}
