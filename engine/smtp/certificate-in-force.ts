/**
 * The certificate a listener serves, as a gauge. Its own module: the reloader sets it in every process, and the
 * queue process of `postern serve` (no listeners) does not load the SMTP server (engine/app/postern.ts).
 */
import { metrics } from '../metrics/metrics.ts';
import type { ListenerSetup } from './postern-server.ts';

/**
 * The certificate `setup` serves, as a gauge: renewed on disk but not in force (the reload refused, or never
 * made) it still runs out, and clients that verify it then fail every handshake while every check passes.
 */
export function certificateInForce(setup: ListenerSetup): void {
  if (setup.certificateNotAfter === null) metrics.tlsCertificateNotAfter.remove({ listener: setup.name });
  else metrics.tlsCertificateNotAfter.set({ listener: setup.name }, setup.certificateNotAfter);
}
