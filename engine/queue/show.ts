/**
 * `postern queue show ID`: one message's envelope and delivery state for a person, as Postfix's postcat
 * shows a queue file (the CLI prints the message after it).
 */
import type { SpoolEnvelope, SpoolHold } from '../spool/envelope.ts';
import { clientText } from '../logging/logger.ts';

/** A client's or a script's text (a HELO name, a hold's reason) for the terminal, as the log writes it. */
const shown = (value: string): string => clientText(value, Infinity);

/** `deliveryOn`: the configuration has delivery on (without it the queue runner attempts nothing, ever). */
export function formatMessageReport(env: SpoolEnvelope, hold: SpoolHold | null, deliveryOn = true): string {
  const s = env.session;
  const lines = [
    `*** ENVELOPE RECORDS ${env.id} ***`,
    `message_size: ${env.size}`,
    `message_arrival_time: ${env.receivedAt}`,
    `sender: ${env.sender === '' ? '<> (null sender)' : env.sender}`,
    `client: ${s.remoteAddress} on listener ${s.listener}, helo ${s.helo === null || s.helo === undefined ? '(none)' : shown(s.helo)}`,
    `authenticated_user: ${s.authenticatedUser ?? '(none)'}`,
    `client_certificate: ${s.clientCertificate ? describeCertificate(s.clientCertificate) : '(none)'}`,
    `held: ${hold ? `yes, since ${hold.at ?? '?'}${hold.by ? ` by ${hold.by.user}${hold.by.sudoUser ? ` (sudo by ${hold.by.sudoUser})` : ''}` : ''}${hold.script ? ` by script ${hold.script.file}: ${shown(hold.script.reason)}` : ''} (postern queue release ${env.id})` : 'no'}`,
    `attempts: ${env.attempts}`,
    `next_attempt: ${hold ? 'none while held' : !deliveryOn ? 'none: delivery is off (no delivery section, or delivery.enabled: false)' : env.attempts ? env.nextAttemptAt : 'as soon as the queue runner gets to it (never attempted)'}`,
  ];
  for (const r of env.recipients) {
    lines.push(`recipient: ${r.address} (${r.status ?? 'pending'})${r.notify?.length ? ` notify=${r.notify.join(',')}` : ''}`);
    if (r.lastError) lines.push(`  last_error: ${r.lastError}`);
  }
  if (env.errors.length) {
    lines.push(`errors (last ${env.errors.length}, oldest first):`);
    for (const e of env.errors) lines.push(`  ${e}`);
  }
  return `${lines.join('\n')}\n`;
}

function describeCertificate(c: NonNullable<SpoolEnvelope['session']['clientCertificate']>): string {
  const trust = c.verified ? 'verified' : `not verified${c.verifyError ? `: ${c.verifyError}` : ''}`;
  return `${c.subject} (issuer ${c.issuer}; ${trust}; sha256 ${c.fingerprintSha256})`;
}
