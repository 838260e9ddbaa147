/**
 * A request's sender or recipient holding a character no address carries (envelope-path.ts: controls, format
 * characters such as the soft hyphen and the bidi overrides, unassigned code points, the others that draw nothing).
 * A listener refuses such a MAIL FROM or RCPT TO with 553 5.1.3 before any script sees it: every string compare of
 * a script or a table sees another address than the one a person, a log and a lenient next hop read (ce<U+00AD>o@
 * is ceo@). Postfix passes them on (smtputf8_enable) and delivers them as they are, so behind it a script refusing
 * ceo@ let ce<U+00AD>o@ through. Refused here at every state that names one, before any script. A domain has
 * been mapped through IDNA by then (request-context.ts, as a listener maps it): what is left in one is in a name
 * IDNA refuses, refused too.
 */
import { holdsNoAddressCharacter } from '../smtp/envelope-path.ts';
import { reply } from '../smtp/replies.ts';
import type { PolicyAction } from './actions.ts';

const refused = reply('invisibleInAddress');
const REFUSED: PolicyAction = Object.freeze({ action: `${refused.responseCode} ${refused.enhanced} ${refused.text}`, kind: 'reject', reason: refused.reason });

/** The refusal of a request whose sender or recipient holds such a character, or null. */
export function unreadableAddressRefusal(a: Record<string, string>): PolicyAction | null {
  return (a.sender && holdsNoAddressCharacter(a.sender)) || (a.recipient && holdsNoAddressCharacter(a.recipient)) ? REFUSED : null;
}
