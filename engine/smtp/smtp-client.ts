/**
 * What the session policy and the message intake need of a connection. PosternConnection provides it;
 * they import this interface instead of the connection (no import cycles between smtp/ files).
 */
import type net from 'node:net';
import type { SMTPServerSession } from 'smtp-server';
import type { ConnectionState } from './connection-state.ts';
import type { SmtpReply } from './reply.ts';
import type { DecisionFacts, DecisionStage } from './decision-log.ts';
import type { TrustedIssuers } from '../certificates/index.ts';

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

