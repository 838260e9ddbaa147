/**
 * A connection of a listener that is no longer in the configuration in force: a reload removed it, and its port
 * stays bound until a restart. What the administrator asked for is that it take no more mail: 421 4.3.2, with the
 * decision line every refusal a client reads has (decision-log.ts) and its counts. No session runs: it would need the
 * listener's limits, scripts and TLS. A worker started again after the reload (it reads the edited file) has no such
 * listener at all, and still answers its connections so.
 */
import type { Socket } from 'node:net';
import type { Logger } from '../logging/logger.ts';
import { metrics, refusalCounted } from '../metrics/metrics.ts';
import { clientAddress } from '../addresses/socket-address.ts';
import { connectRefusalCounted } from './connection-refusals.ts';
import { reply } from './replies.ts';

export function refuseOnRemovedListener(logger: Logger, listener: string, socket: Socket): void {
  const refusal = reply('listenerRemoved');
  const client = clientAddress(socket);
  // No session, so no helo, user or certificate in the line.
  logger.info({
    decision: 'defer', stage: 'CONNECT', client, listener,
    code: refusal.responseCode, enhanced: refusal.enhanced, reply: refusal.text, reason: refusal.reason,
  }, `NOQUEUE: defer: CONNECT from unknown[${client}]: ${refusal.responseCode} ${refusal.enhanced} ${refusal.text}; proto=SMTP`);
  metrics.connections.inc({ listener });
  refusalCounted(listener, 'CONNECT', refusal.responseCode, refusal.reason);
  connectRefusalCounted(listener, refusal.reason);
  socket.on('error', () => undefined);
  socket.end(`${refusal.responseCode} ${refusal.message}\r\n`);
}
