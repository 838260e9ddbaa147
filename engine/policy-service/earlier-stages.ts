/**
 * The hooks of the stages before a request's own, decided first. Postfix's protocol_state names the SMTP command
 * being answered, not the restriction list that asked: with its default `smtpd_delay_reject = yes`, a
 * check_policy_service in smtpd_client_restrictions, smtpd_helo_restrictions or smtpd_sender_restrictions is asked
 * at RCPT, with protocol_state RCPT. Each request ran only the hook of its state, so a connect, helo or mailfrom
 * script never ran behind such a Postfix (nor behind the documented setup, the service in the recipient
 * restrictions): its reject became DUNNO, and the mail it refused was delivered. So a request is decided as a
 * listener decides the command: the connect, helo and mailfrom scripts first, each once per SMTP session (connect,
 * helo) or transaction (mailfrom) on this policy connection, whichever request asks first; the first refusal or
 * failure is the answer.
 */
import type { HookName, Verdict } from '../sandbox/api/index.ts';
import type { PolicyGeneration } from '../policy/generation.ts';
import { FAIL_CLOSED } from '../policy/verdict.ts';

/** The hooks decided before each state's own, in order (rcptto is not: DATA names at most one recipient). */
export const EARLIER_HOOKS: Readonly<Record<HookName, readonly HookName[]>> = {
  connect: [], helo: ['connect'], mailfrom: ['connect', 'helo'], rcptto: ['connect', 'helo', 'mailfrom'],
  data: ['connect', 'helo', 'mailfrom'], auth: [], predelivery: [],
};

/**
 * The states with no hook of their own at which Postfix still checks earlier stages' restriction lists (with
 * smtpd_delay_reject = yes, its default): VRFY (the client and helo lists, then the recipient list; no sender is
 * known) and ETRN (the client and helo lists, then the ETRN list). Answered DUNNO without them, a client the connect
 * script rejects had its VRFY answered (252, or 550 User unknown), and could harvest addresses.
 */
export const EARLIER_OF_HOOKLESS_STATE: Readonly<Record<string, readonly HookName[]>> = {
  VRFY: ['connect', 'helo'], ETRN: ['connect', 'helo'],
};

/**
 * What makes a stage's decision the same one: its SMTP session (the client's address and port), HELO (name, TLS),
 * transaction (the sender; its `instance` is compared apart, see StageVerdicts).
 */
export function stageKey(hook: HookName, a: Record<string, string>): string {
  const session = `${a.client_address ?? ''}\n${a.client_port ?? ''}\n${a.server_address ?? ''}\n${a.server_port ?? ''}`;
  if (hook === 'connect') return session;
  // A listener runs the helo script again at the EHLO after STARTTLS (the session starts over, RFC 3207 §4.2).
  if (hook === 'helo') return `${session}\n${a.helo_name ?? ''}\n${a.encryption_protocol ?? ''}`;
  return `${session}\n${a.sender ?? ''}`;
}

/**
 * Whether the request names its client's port, so that one SMTP session of a client can be told from the next.
 * Postfix before 3.0 sends no client_port, and XCLIENT PORT=[UNAVAILABLE] makes it `unknown`.
 */
export function sessionKnown(a: Record<string, string>): boolean {
  const port = a.client_port;
  return port !== undefined && port !== '' && port !== '0' && port.toLowerCase() !== 'unknown';
}

/**
 * The transaction a kept verdict belongs to (see StageVerdicts), or null when it must not be kept for later
 * requests: a transaction is mailfrom's own; connect and helo verdicts are kept per session, but a session whose
 * client port is unknown cannot be told from that client's next one on the same smtpd process (its policy
 * connection lives on): there they are kept per transaction, and a request naming none (EHLO, MAIL) runs them.
 */
export function stageInstance(hook: HookName, a: Record<string, string>): string | null {
  if (hook === 'mailfrom') return a.instance ?? '';
  if (sessionKnown(a)) return '';
  return a.instance ? a.instance : null;
}

/**
 * The verdicts of the earlier stages already decided on one policy connection (Postfix's smtpd keeps one per
 * process and serves one session at a time): the latest per hook. A failure is not kept: it is tried again.
 *
 * A transaction is told apart by Postfix's `instance`, which Postfix names only from the first RCPT on: at MAIL it
 * is empty (Postfix 3.7). So the mailfrom verdict of a MAIL request (no instance) is the one of the first request
 * of that session and sender naming an instance, which then owns it: compared by instance alone, the script ran
 * again at the first RCPT (smtpd_delay_reject = no, the service in the sender and recipient restrictions), and its
 * rate() counted every message twice. A request of no instance never takes a verdict kept for one.
 */
export class StageVerdicts {
  #generation: PolicyGeneration | null = null;
  readonly #kept = new Map<HookName, Kept>();

  /** `transaction`: the request's own `instance` (a session's verdict is not kept per instance, but see Kept.first). */
  get(generation: PolicyGeneration, hook: HookName, key: string, instance = '', transaction = ''): { verdict: Verdict | undefined } | null {
    if (generation !== this.#generation) return null;
    const kept = this.#kept.get(hook);
    if (!kept || kept.key !== key) return null;
    if (firstOfSession(transaction)) {
      if (kept.first === null) kept.first = transaction; // kept at this session's EHLO or MAIL, before its first RCPT
      else if (kept.first !== transaction) return null; // another session, from the same client address and port
    }
    if (kept.instance === '' && instance !== '') kept.instance = instance; // the MAIL's verdict, taken by its transaction
    return kept.instance === instance ? { verdict: kept.verdict } : null;
  }

  set(generation: PolicyGeneration, hook: HookName, key: string, verdict: Verdict | undefined, instance = '', transaction = ''): void {
    if (generation !== this.#generation) {
      this.#kept.clear();
      this.#generation = generation;
    }
    const first = transaction === '' ? null : firstOfSession(transaction) ? transaction : LATER;
    if (verdict === FAIL_CLOSED) this.#kept.delete(hook);
    else this.#kept.set(hook, { key, instance, verdict, first });
  }
}

interface Kept {
  key: string;
  instance: string;
  verdict: Verdict | undefined;
  /**
   * The instance of the first transaction of the session the verdict was decided in; null when decided before
   * any (the session's first request naming one takes it), LATER when decided in a later one. A client that
   * connects again from the same port (it may bind it) is another session with the same attributes: a
   * connect script limiting sessions with rate() ran at its first session only, and every next one was
   * accepted with that verdict. Postfix's instance ends in the transaction's number within its session
   * (`%x.%lx.%lx.%x`: process, time, number), 0 for the first: a first transaction's instance other than the
   * one the verdict was kept in starts another session.
   */
  first: string | null;
}

const LATER = '\n later';

/** Whether `instance` is the one of a session's first transaction (Postfix numbers them from 0, in hex). */
function firstOfSession(instance: string): boolean {
  return instance.endsWith('.0');
}
