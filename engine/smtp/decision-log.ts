/**
 * One log line per refused or deferred command, in the spirit of Postfix's
 * `NOQUEUE: reject: RCPT from host[ip]: 554 5.7.1 <rcpt>: Relay access denied; from=<…> to=<…> proto=ESMTP helo=<…>`:
 * the message reads like Postfix's, the JSON fields carry the same facts for machines (client, stage,
 * reply, reason — and the script's file when a script decided —, certificate, identity, user). Info level:
 * a refusal is the server working, not failing.
 */
import { clientText, scriptText, type Logger } from '../logging/logger.ts';
import { boundedName } from '../certificates/describe.ts'; // not the index: it loads the X.509 library
import type { ConnectionState } from './connection-state.ts';
import { REPLIES } from './replies.ts';
import type { HookName } from '../sandbox/api/index.ts';

export type DecisionStage = 'CONNECT' | 'HELO' | 'AUTH' | 'MAIL' | 'RCPT' | 'DATA' | 'END-OF-MESSAGE' | (string & {});

/** The parts of a reply the line needs (an SmtpReply, or a reply smtp-server made itself). */
export interface LoggedReply { responseCode: number; enhanced: string; text: string; reason: string | undefined }

export interface DecisionFacts {
  /** Envelope sender so far (MAIL FROM), '' for the null sender, undefined before MAIL. */
  from?: string;
  /**
   * The recipient this decision is about (RCPT), or the transaction's recipients so far (at DATA, END-OF-MESSAGE,
   * and any refusal made within a transaction that is about no one recipient: the line names the first LOGGED_RECIPIENTS).
   */
  to?: string | readonly string[];
  /** Queue id, when the transaction has one. */
  id?: string | null;
  /** A RCPT over maxRecipients: which one since the last accepted message (not each has a line). */
  overLimit?: number;
}

/** The connection a refusal is about. */
export interface RefusedClient { readonly id: string; readonly remoteAddress: string; readonly clientHostname: string | false; readonly state: ConnectionState }

/**
 * The client's reverse-DNS name, or null when it has none: smtp-server then gives `[ip]` (or nothing, with
 * reverseDns off), which Postfix logs as `unknown[ip]`, never `[ip][ip]`.
 */
export function clientName(hostname: string | false | null): string | null {
  return hostname && hostname.charCodeAt(0) !== 0x5b /* [ */ ? hostname : null;
}

/** A script's decision names its hook (`script mailfrom: reject`, `script data failed (fail closed)`). */
const SCRIPT_REASON = /^script (\w+)[: ]/;

/** The file of the script whose verdict (or failure) this is, for the line's `script` field. */
function scriptFileOf(st: ConnectionState, reason: string | undefined): string | undefined {
  const hook = reason === undefined ? null : SCRIPT_REASON.exec(reason)?.[1];
  return hook ? st.generation.sandboxFor(st.listener).scriptFile(hook as HookName) : undefined;
}

/**
 * Recipients a DATA-stage line names (then `nrcpt=` says how many there were): all of maxRecipients' worth
 * made lines of ~50 KB, past the 4096 bytes a pipe writes at once, so the lines of the processes sharing
 * stdout could interleave. The queue id and the first recipients find the message.
 */
export const LOGGED_RECIPIENTS = 5;

/**
 * Called by PosternConnection.send() alone, as the reply is written. `sent` false: the client had left when the
 * decision came (a script still deciding, a spool commit): the line says so (`sent: false`, `(not sent: the client
 * had left)`), and the refusal is not counted in postern_smtp_refusals_total, which counts what clients got.
 */
/**
 * `unsent`: why the reply did not reach the client (it had left; tls.strict closed the connection instead), or null
 * when it was sent. The decision stands either way; the line says it was not sent (`sent: false`).
 */
export function logRefusal(log: Logger, conn: RefusedClient, stage: DecisionStage, reply: LoggedReply, facts: DecisionFacts = {}, unsent: string | null = null): void {
  const st = conn.state;
  const name = clientName(conn.clientHostname);
  const client = `${name ?? 'unknown'}[${conn.remoteAddress}]`;
  const to = facts.to === undefined ? undefined : typeof facts.to === 'string' ? facts.to : facts.to.slice(0, LOGGED_RECIPIENTS).join(',');
  const nrcpt = typeof facts.to === 'object' ? facts.to.length : undefined;
  // At RCPT, `to` is the recipient refused; the recipients so far (a list) are not what the reply is about.
  const address = stage === 'RCPT' ? (typeof facts.to === 'string' ? to : undefined) : stage === 'MAIL' ? facts.from : undefined;
  // Postfix names the address the reply is about, unless the reply text already starts with it.
  const subject = address !== undefined && !reply.text.startsWith('<') ? ` <${address}>:` : '';
  // The HELO name as the client wrote it (smtp-server refuses only controls in it): shown as clientText() shows it.
  const helo = st.heloName ? clientText(st.heloName) : st.heloName;
  // The reply's text may be a script's, quoting what a client sent (`reject('You are not ' + ctx.helo.name)`): written
  // as the log writes a script's own lines, not as the HELO name beside it had been left before it was escaped.
  const text = scriptText(reply.text);
  const parts = [
    facts.from !== undefined ? `from=<${facts.from}>` : null,
    to !== undefined ? `to=<${to}>` : null,
    nrcpt !== undefined ? `nrcpt=${nrcpt}` : null,
    `proto=${st.heloCommand === 'EHLO' ? 'ESMTP' : 'SMTP'}`,
    helo ? `helo=<${helo}>` : null,
    facts.overLimit !== undefined ? `over_limit=${facts.overLimit}` : null,
  ].filter(Boolean).join(' ');
  const verb = reply.responseCode >= 500 ? 'reject' : 'defer';
  log.info({
    cid: conn.id, id: facts.id ?? undefined, decision: verb, stage, client: conn.remoteAddress, clientName: name,
    listener: st.listener.name, sent: unsent === null ? undefined : false, code: reply.responseCode, enhanced: reply.enhanced, reply: text, reason: reply.reason,
    script: scriptFileOf(st, reply.reason),
    from: facts.from, to, nrcpt, helo, overLimit: facts.overLimit, user: st.user, identity: st.identity.identity,
    certificate: st.certificate ? { sha256: st.certificate.fingerprint.sha256, subject: boundedName(st.certificate.subject.dn), verified: st.certificate.verified } : null,
  }, `${facts.id ?? 'NOQUEUE'}: ${verb}: ${stage} from ${client}: ${reply.responseCode}${reply.enhanced ? ` ${reply.enhanced}` : ''}${subject} ${text}; ${parts}${unsent === null ? '' : ` (not sent: ${unsent})`}`);
}

/** smtp-server's refusals of a MAIL or RCPT parameter's value (SIZE, BODY, SMTPUTF8, RET, ENVID, NOTIFY, ORCPT, duplicates). */
const MAIL_RCPT_PARAMETER_ERROR = /^(Error: duplicate \S+ parameter|Error: \S+ parameter requires a value|Error: Bad message size syntax|Invalid (BODY|SMTPUTF8|RET) parameter|Error: NOTIFY|Error: Bad ORCPT parameter syntax)/;

/** Why smtp-server refused a command on its own: the Postern setting behind the refusal, where there is one. */
export function smtpServerReason(code: number, text: string, context: string | false | undefined): string {
  if (context === 'TOO_MANY_RECIPIENTS') return 'limits.maxRecipients';
  if (context === 'MESSAGE_TOO_BIG') return 'limits.maxMessageSize';
  if (code === REPLIES.authRequired.code && text === REPLIES.authRequired.text) return REPLIES.authRequired.reason;
  if (code === 421 && text.startsWith('Timeout')) return 'limits.socketTimeoutMs';
  if (code === 421 && text.endsWith('Command line too long')) return "a command line over smtp-server's length limit (closed)";
  // smtp-server's own fixed limits and checks, which no Postern setting moves: named, so nobody looks for one.
  if (code === 421 && text === 'Error: too many unauthenticated commands') return "auth.required: 10 commands before AUTH (smtp-server's fixed limit)";
  // Values smtp-server checks of the MAIL and RCPT parameters offered (its texts name the parameter, some the value).
  if (code === 501 && MAIL_RCPT_PARAMETER_ERROR.test(text)) return 'a MAIL or RCPT parameter given twice, without its value or with one its extension does not allow (RFC 1870, 1652, 6531, 3461)';
  if (code === 421 && text === 'HTTP requests not allowed') return 'an HTTP request line (a web page or scanner talking HTTP to the SMTP port): closed';
  return 'SMTP protocol rule (smtp-server)';
}
