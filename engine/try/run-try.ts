/**
 * The order of a try: `tryHook` walks a session from the connection to the hook asked for (each hook
 * before it runs too, as on the listener), `runSessionFile` plays a session file. Both stop where a real
 * client would have to: after a refused connection, greeting or sender. The outcome (and exit code) is
 * a script error if any script call failed, else that of the first refused step, else hold if a message
 * was accepted on hold, else accept.
 */
import type { HookName } from '../sandbox/api/index.ts';
import { EXIT_CODES, type Outcome, type StepResult, type TrySession } from './try-session.ts';
import type { SessionCommand } from './session-file.ts';

export interface HookFlags {
  helo?: string;
  user?: string;
  password?: string;
  mechanism?: string;
  authzid?: string;
  from?: string;
  to?: string[];
  message?: Buffer;
}

export interface TryResult { steps: StepResult[]; outcome: Outcome; exitCode: number }

export function summarize(steps: StepResult[]): TryResult {
  const outcome: Outcome = steps.some((s) => s.outcome === 'error') ? 'error'
    : steps.find((s) => s.outcome === 'reject' || s.outcome === 'defer')?.outcome
    ?? (steps.some((s) => s.outcome === 'hold') ? 'hold' : 'accept');
  return { steps, outcome, exitCode: EXIT_CODES[outcome] };
}

/** Steps that end the session (or its transaction) when refused. */
const refused = (s: StepResult | null): boolean => s !== null && s.outcome !== 'accept' && s.outcome !== 'hold';

export async function tryHook(session: TrySession, hook: HookName, flags: HookFlags): Promise<TryResult> {
  const steps: StepResult[] = [];
  const take = (s: StepResult | null): boolean => { if (s) steps.push(s); return refused(s); };
  if (take(await session.connect()) || hook === 'connect') return summarize(steps);
  if (take(await session.starttls())) return summarize(steps);
  if (take(await session.helo(flags.helo ?? 'try.invalid')) || hook === 'helo') return summarize(steps);
  const mechanism = (flags.mechanism ?? (flags.password === undefined && session.state.certificate ? 'EXTERNAL' : 'PLAIN')).toUpperCase();
  if (hook === 'auth' || (flags.user !== undefined && flags.password !== undefined) || mechanism === 'EXTERNAL' && flags.mechanism) {
    if (take(await session.auth(mechanism, flags.user ?? '', flags.password ?? '', flags.authzid ?? '')) || hook === 'auth') return summarize(steps);
  } else if (flags.user !== undefined) {
    take(session.login(flags.user));
  }
  const to = flags.to ?? [];
  if (hook === 'predelivery') {
    if (!to.length) throw new Error('try predelivery needs at least one --to');
    take(await session.predelivery({ sender: flags.from ?? '', recipients: to, size: flags.message?.length }));
    return summarize(steps);
  }
  if (take(await session.mailFrom(flags.from ?? '')) || hook === 'mailfrom') return summarize(steps);
  if (!to.length) throw new Error(`try ${hook} needs at least one --to`);
  let accepted = 0;
  for (const rcpt of to) if (!take(await session.rcptTo(rcpt))) accepted++;
  if (hook === 'rcptto' || !accepted) return summarize(steps);
  take(await session.data(flags.message ?? Buffer.from('Subject: postern try\r\n\r\npostern try\r\n')));
  return summarize(steps);
}

export async function runSessionFile(session: TrySession, commands: readonly SessionCommand[]): Promise<TryResult> {
  const steps: StepResult[] = [];
  let result = await session.connect();
  steps.push(result);
  if (refused(result)) return summarize(steps);
  for (const c of commands) {
    switch (c.kind) {
      case 'helo': result = await session.helo(c.name, c.verb); break;
      case 'starttls': {
        const tls = await session.starttls();
        if (!tls) continue;
        result = tls;
        break;
      }
      case 'auth': result = await session.auth(c.mechanism, c.username, c.password, c.authzid); break;
      case 'mailfrom': result = await session.mailFrom(c.address, c.params); break;
      case 'rcptto': result = await session.rcptTo(c.address, c.params); break;
      case 'data': result = await session.data(c.message); break;
      case 'predelivery': result = await session.predelivery(); break;
      case 'quit': return summarize(steps);
    }
    steps.push(result);
    // A refused greeting or TLS ends the session, as a 421 or a dropped connection would. Not a HELO/EHLO the listener
    // found malformed (501: no name, two words, a control character): it reads the client's next command, a correct one.
    if (refused(result) && ((c.kind === 'helo' && !/^501 /.test(result.reply)) || c.kind === 'starttls' || /^421 /.test(result.reply))) break;
  }
  return summarize(steps);
}
