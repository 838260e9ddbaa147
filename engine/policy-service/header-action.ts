/**
 * A data hook's header edits as Postfix can apply them. access(5) allows one action per answer, and
 * `PREPEND headername: headervalue` is the only one that edits headers: it adds one header on top of the
 * message, and only before the content is received (Postfix ignores it, with a warning, in
 * smtpd_end_of_data_restrictions). So exactly one `add` at the DATA state becomes `PREPEND name: value`;
 * anything else (set, remove, two or more edits, END-OF-MESSAGE) cannot be said, and saying part of it
 * would deliver a message the script did not ask for: the caller answers the failure action (fail closed).
 * The edits were already checked by engine/policy/header-edits.ts (no CR/LF, a valid field name, one line).
 */
import type { HeaderEdit } from '../sandbox/api/index.ts';

/** The protocol_state at which Postfix applies a PREPEND of smtpd_data_restrictions. */
const PREPEND_STATE = 'DATA';

export function headerEditAction(protocolState: string, headers: readonly HeaderEdit[]): { prepend: string } | { error: string } {
  const state = protocolState.toUpperCase();
  if (state !== PREPEND_STATE) {
    return { error: `header edits at ${state || 'an unknown state'}: Postfix applies PREPEND only before the message content (check_policy_service in smtpd_data_restrictions, protocol_state DATA)` };
  }
  if (headers.length !== 1) {
    return { error: `${headers.length} header edits: a Postfix policy answer holds one action, so only one "add" edit (PREPEND) can be answered` };
  }
  const edit = headers[0]!;
  if (edit.op !== 'add') {
    return { error: `header edit "${edit.op}" ${edit.name}: Postfix's access(5) actions can only prepend a header (an "add" edit), not ${edit.op === 'set' ? 'replace' : 'remove'} one` };
  }
  return { prepend: `PREPEND ${edit.name}: ${edit.value}` };
}
