/**
 * MAIL FROM and RCPT TO judged by smtp-server's own command handlers, without a socket: for `postern try`, whose
 * replies must be the listener's. smtp-server answers much before Postern's policy sees the command (an address
 * that does not parse, a duplicate or valueless parameter, SIZE over the limit, a BODY, NOTIFY or ORCPT it does not
 * take, a nested MAIL, RCPT before MAIL, too many recipients): a try that skipped them said `250` where the listener
 * refuses. The handlers run here on a stand-in for the connection that holds what they read (the listener's options,
 * the session, TLS or not) and writes their reply into a capture; the policy is asked where smtp-server asks
 * onMailFrom / onRcptTo, and its reply goes out as PosternConnection sends it (postern-connection.ts, whose
 * overrides of the parser and of REQUIRETLS are made here too).
 */
import { createRequire } from 'node:module';
import type { SMTPConnection as SMTPConnectionClass } from 'smtp-server/lib/smtp-connection.js';
import type { SMTPServerAddress, SMTPServerOptions, SMTPServerSession } from 'smtp-server';
import type { Config } from '../config/schema.ts';
import { canonicalAddress, declaresUtf8, preparedPath } from './envelope-path.ts';
import { ENHANCED_CODE_PREFIX, SmtpReply } from './reply.ts';
import { reply } from './replies.ts';
import { catalogueReplyFor, refusalContext } from './smtp-server-replies.ts';
import { RecipientCount, refuseTooMany } from './recipient-count.ts';
import { parameterControlRefusal, unnamedParameterRefusal } from './parameter-controls.ts';

const requireCjs = createRequire(import.meta.url);
const { SMTPConnection } = requireCjs('smtp-server/lib/smtp-connection') as { SMTPConnection: typeof SMTPConnectionClass };
type Connection = SMTPConnectionClass;

/** The policy's decision on the parsed address: a refusal, the accepting reply, or null (the default 250). */
export type AskPolicy = (parsed: SMTPServerAddress) => Promise<SmtpReply | null>;

export interface AddressCommandReply { code: number; reply: string }

/** One session's stand-in connection: its recipient index lives as long as the transaction, as smtp-server's does. */
export class AddressCommands {
  readonly #conn: Connection;
  #reply: AddressCommandReply | null = null;
  #decided: SmtpReply | null = null;
  #ask: AskPolicy | null = null;
  #failure: { err: unknown } | null = null;
  readonly #options: SMTPServerOptions;
  readonly #session: SMTPServerSession;
  readonly #maxRecipients: number;
  /** RCPT commands accepted in this transaction, a recipient named again counted again (the listener's rule). */
  readonly #recipients = new RecipientCount();

  constructor(options: SMTPServerOptions, session: SMTPServerSession, secure: () => boolean, config: Config, maxRecipients: number) {
    const self = this;
    this.#options = options;
    this.#session = session;
    this.#maxRecipients = maxRecipients;
    const conn = Object.create(SMTPConnection.prototype) as Connection & Record<string, unknown>;
    const ask = (parsed: SMTPServerAddress, _session: SMTPServerSession, done: (err?: Error | null) => void): void => {
      self.#ask!(parsed).then((decided) => {
        self.#decided = decided;
        if (decided?.refuses) done(Object.assign(new Error(decided.message), { responseCode: decided.responseCode }));
        else done(null);
      }, (err: unknown) => {
        // Thrown to the caller, as the policy's own call would throw: no reply of smtp-server's stands for it.
        self.#failure = { err };
        done(Object.assign(new Error('policy failed'), { responseCode: 451 }));
      });
    };
    Object.assign(conn, {
      id: 'try', session, _rcptIndex: new Map<string, number>(),
      _server: { options: { ...options, maxRecipients }, logger: { error() {}, info() {}, debug() {} }, onMailFrom: ask, onRcptTo: ask },
      emitConnection() {},
      send(code: number, data: string, context?: string | false): void {
        const decided = self.#decided;
        if (decided !== null && decided.responseCode === code) {
          self.#reply = { code, reply: `${code} ${decided.message}` };
          return;
        }
        const named = catalogueReplyFor(code, data, config.hostname, 'checks');
        if (named) {
          self.#reply = { code, reply: `${code} ${named.message}` };
          return;
        }
        const own = refusalContext(code, context); // a refusal has an enhanced code, as PosternConnection sends it
        const enhanced = ENHANCED_CODE_PREFIX.test(data) || own === false ? '' : `${conn._getEnhancedStatusCode(code, own as string)} `;
        self.#reply = { code, reply: `${code} ${enhanced}${data}` };
      },
      // PosternConnection's: the address in the form scripts and rules see (envelope-path.ts).
      _parseAddressCommand(name: string, command: Buffer | string): ReturnType<Connection['_parseAddressCommand']> {
        const parsed = SMTPConnection.prototype._parseAddressCommand.call(conn, name, command);
        if (!parsed) return parsed;
        const rcpt = name.toUpperCase() === 'RCPT TO';
        const mail = rcpt ? session.envelope.mailFrom : parsed;
        const text = command.toString();
        return canonicalAddress(parsed, rcpt, !!mail && declaresUtf8(mail), !/[^\x00-\x7f]/.test(text), config) ? parsed : false;
      },
      // PosternConnection's: REQUIRETLS is offered nowhere, refused as any parameter not offered.
      _validateMailParams(parsed: SMTPServerAddress): ReturnType<Connection['_validateMailParams']> {
        const args = parsed.args as Record<string, unknown> | false | undefined;
        if (!args || args.REQUIRETLS === undefined) return SMTPConnection.prototype._validateMailParams.call(conn, parsed);
        const refusal = reply('parameterUnsupported', { parameter: 'REQUIRETLS' });
        self.#decided = refusal;
        return { code: refusal.responseCode, message: refusal.message, enhancedCode: null };
      },
    });
    Object.defineProperty(conn, 'secure', { get: secure });
    this.#conn = conn;
  }

  /** `MAIL FROM:<…> …` or `RCPT TO:<…> …` as the client sends it: the reply line the listener gives. */
  async run(verb: 'MAIL' | 'RCPT', command: string, ask: AskPolicy): Promise<AddressCommandReply> {
    this.#reply = null;
    this.#decided = null;
    this.#failure = null;
    this.#ask = ask;
    const path = preparedPath(Buffer.from(command));
    if (path instanceof SmtpReply) return { code: path.responseCode, reply: `${path.responseCode} ${path.message}` };
    const badParameter = parameterControlRefusal(path) ?? unnamedParameterRefusal(path);
    if (badParameter) return { code: badParameter.responseCode, reply: `${badParameter.responseCode} ${badParameter.message}` };
    if (verb === 'RCPT' && this.#recipients.full(this.#session, this.#maxRecipients)) {
      refuseTooMany(this.#conn);
      return this.#reply!;
    }
    const handler = verb === 'MAIL' ? SMTPConnection.prototype.handler_MAIL : SMTPConnection.prototype.handler_RCPT;
    await new Promise<void>((resolve) => handler.call(this.#conn, path, () => resolve()));
    const failure = this.#failure as { err: unknown } | null;
    if (failure) throw failure.err;
    if (verb === 'RCPT' && this.#reply!.code < 300) this.#recipients.accepted(this.#session);
    return this.#reply!;
  }

  /** The transaction ended (its message taken, or RSET): a fresh envelope, recipients counted afresh. */
  endTransaction(): void {
    this.#session.envelope = freshEnvelope(this.#options); // a new transaction: counted afresh (recipient-count.ts)
    (this.#conn as unknown as { _rcptIndex: Map<string, number> })._rcptIndex = new Map();
  }
}

/** An envelope as smtp-server starts each transaction with (its _resetSession): the parameter handlers write into it. */
export function freshEnvelope(options: SMTPServerOptions): SMTPServerSession['envelope'] {
  const envelope = { mailFrom: false, rcptTo: [], requireTLS: false, bodyType: '7bit', smtpUtf8: false } as unknown as SMTPServerSession['envelope'];
  if (!(options as { hideDSN?: boolean }).hideDSN) Object.assign(envelope, { dsn: { ret: null, envid: null } });
  return envelope;
}
