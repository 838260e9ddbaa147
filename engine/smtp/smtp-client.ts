/**
 * What the session policy, the message intake and the decision log need of a connection, and what a
 * connection needs of its listener. PosternConnection and PosternServer provide them; the modules that
 * use them import these interfaces instead of each other (no import cycles between smtp/ files).
 */
import type net from 'node:net';
import type { SMTPServerSession } from 'smtp-server';
import type { ConnectionState } from './connection-state.ts';
import type { SmtpReply } from './reply.ts';
import type { DecisionFacts, DecisionStage } from './decision-log.ts';
import type { TrustedIssuers } from '../certificates/index.ts';
import type { Runtime } from './runtime.ts';
import type { SessionPolicy } from './session-policy.ts';

export interface SmtpClient {
  readonly id: string;
  readonly remoteAddress: string;
  readonly clientHostname: string | false;
  readonly secure: boolean;
  readonly session: SMTPServerSession;
  readonly state: ConnectionState;
  readonly _socket: net.Socket;
  /** The CAs of the listener, now (replaced on certificate rotation). */
  readonly trust: TrustedIssuers;
  /** The listener's maximum message size in bytes (Infinity: none). */
  readonly maxMessageSize: number;
  /**
   * Postern decided the reply to the command being answered: the next send() writes it, logs it when it
   * refuses, and closes the connection after it when it says so. Returns the refusal for smtp-server's
   * callback (null for an accept).
   */
  decide(stage: DecisionStage, reply: SmtpReply | null, facts?: DecisionFacts): SmtpReply | null;
}

/** What a connection uses of its listener. */
export interface ListenerHost {
  readonly runtime: Runtime;
  readonly policy: SessionPolicy;
  readonly greetingDelayMs: number;
  readonly trust: TrustedIssuers;
}
