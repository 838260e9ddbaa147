/**
 * The logger handed to smtp-server. Postern logs what an administrator needs itself (listening, TLS,
 * authentication, every refusal with its reason, every accepted message), so smtp-server's own lines are
 * quieter: its per-connection info lines become debug, and so do its error lines — they are about a client
 * (a failed handshake, a reset socket, a failed reverse lookup), and the server's 'error' event that follows
 * is logged by Postern at info (engine/app/postern.ts). Errors lose their stack traces either way.
 */
import type { Logger } from './logger.ts';

type Method = (fields: Record<string, unknown>, message?: string, ...args: unknown[]) => void;

export interface SmtpServerLogger {
  trace: Method; debug: Method; info: Method; warn: Method; error: Method; fatal: Method;
}

export function smtpServerLogger(logger: Logger): SmtpServerLogger {
  const at = (level: 'trace' | 'debug' | 'info' | 'error'): Method => (fields, message, ...args) => {
    if (!logger.isLevelEnabled(level)) return;
    logger[level](withoutStack(withKnownCommand(fields)), message, ...args);
  };
  // error → debug: each such client error also reaches the server's 'error' event, which Postern logs at info.
  return { trace: at('trace'), debug: at('trace'), info: at('debug'), warn: at('info'), error: at('debug'), fatal: at('error') };
}

function withoutStack(fields: Record<string, unknown>): Record<string, unknown> {
  const err = fields?.err;
  if (!(err instanceof Error)) return fields;
  const { code, library, reason } = err as Error & { code?: string; library?: string; reason?: string };
  // Not under `err`: pino's error serializer would bring the stack back.
  const { err: _dropped, ...rest } = fields;
  return { ...rest, clientError: { message: err.message, code, library, reason } };
}

/** The commands smtp-server (or Postern in front of it) knows: the `command` field of its lines is one of these, or UNKNOWN. */
const KNOWN_COMMANDS = new Set(['HELO', 'EHLO', 'LHLO', 'MAIL', 'RCPT', 'DATA', 'BDAT', 'RSET', 'NOOP', 'QUIT', 'VRFY', 'EXPN', 'HELP',
  'AUTH', 'STARTTLS', 'XCLIENT', 'XFORWARD', 'WIZ', 'SHELL', 'KILL']);

/**
 * smtp-server's `C:` line (trace) names each command by its first word, upper-cased: for a line that is no
 * command, that is whatever the client sent — the base64 credentials of a client that sent them after its AUTH
 * was refused (pipelined, or out of step), upper-cased only, which a few thousand guesses at the letters' case
 * undo. Only a known command is named.
 */
function withKnownCommand(fields: Record<string, unknown>): Record<string, unknown> {
  const command = fields?.command;
  return typeof command !== 'string' || KNOWN_COMMANDS.has(command) ? fields : { ...fields, command: 'UNKNOWN' };
}
