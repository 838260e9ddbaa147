/**
 * `postern try HOOK …` and `postern try --session FILE`: run scripts against facts given on the command
 * line (engine/try/), print each step's context, verdict, script log lines, time and the reply line, and
 * exit 0 accept, 1 reject, 2 defer, 3 script error (or nothing could be tried), 4 accepted on hold.
 */
import { readFileSync } from 'node:fs';
import { createPrivateKey, X509Certificate, type KeyObject } from 'node:crypto';
import { loadStartConfig } from '../config/start-config.ts';
import { ConfigError } from '../config/config-error.ts';
import { GenerationError } from '../generation/build-generation.ts';
import { FAIL_CLOSED } from '../policy/verdict.ts';
import { withoutPassword } from '../policy/auth-password.ts';
import { HOOK_NAMES, isHookName } from '../sandbox/hooks.ts';
import type { HookName } from '../sandbox/api/index.ts';
import { TrySession, type StepResult } from '../try/try-session.ts';
import { encryptedKeyProblem } from '../certificates/index.ts';
import { readSessionFile } from '../try/session-file.ts';
import { runSessionFile, tryHook, type HookFlags, type TryResult } from '../try/run-try.ts';

/** The command line's options: the hook's own flags (the message as a file name) and the setting. */
export interface TryOptions extends Omit<HookFlags, 'message'> {
  config?: string;
  listener?: string;
  cert?: string;
  key?: string;
  ip?: string;
  header?: string[];
  message?: string;
  scripts?: string;
  session?: string;
  /** The AUTH password's file (its first line), `-` for stdin: unlike --password, not in the process's arguments. */
  passwordFile?: string;
  tls?: boolean;
  json?: boolean;
}

const CANNOT_TRY = 3;

export async function tryCommand(hook: string | undefined, opts: TryOptions): Promise<number> {
  if (!hook === !opts.session) return usage('give a hook (connect, helo, auth, mailfrom, rcptto, data, predelivery) or --session FILE, not both');
  if (hook && !isHookName(hook)) return usage(`unknown hook ${JSON.stringify(hook)} (expected one of ${HOOK_NAMES.join(', ')})`);
  if (opts.password !== undefined && opts.passwordFile !== undefined) return usage('give --password or --password-file, not both');
  let session: TrySession | null = null;
  try {
    const loaded = loadStartConfig({ configPath: opts.config });
    session = await TrySession.open(loaded, {
      listener: opts.listener, ip: opts.ip, tls: opts.tls, certificate: opts.cert ? credentials(opts.cert, opts.key) : null,
    }, opts.scripts);
    const result = opts.session
      ? await runSessionFile(session, readSessionFile(opts.session))
      : await tryHook(session, hook as HookName, {
        helo: opts.helo, user: opts.user, password: opts.passwordFile === undefined ? opts.password : passwordFrom(opts.passwordFile), mechanism: opts.mechanism, authzid: opts.authzid,
        from: opts.from, to: opts.to, message: message(opts),
      });
    process.stdout.write(opts.json ? `${JSON.stringify(asJson(session, result), null, 2)}\n` : asText(session, result, hook as HookName | undefined));
    return result.exitCode;
  } catch (err) {
    if (err instanceof GenerationError) for (const line of err.lines) process.stderr.write(`${line}\n`);
    else process.stderr.write(`postern try: ${err instanceof ConfigError ? err.message : (err as Error).message}\n`);
    return CANNOT_TRY;
  } finally {
    await session?.close();
  }
}

function usage(message: string): number {
  process.stderr.write(`postern try: ${message}\n`);
  return CANNOT_TRY;
}

/**
 * The certificate (and chain) and its key: a separate --key, or a key in the same PEM file. Checked here,
 * naming the file: OpenSSL would otherwise say only "wrong tag", or, for a key of another certificate,
 * send no certificate at all, and the try would run as if none was given.
 */
function credentials(certFile: string, keyFile: string | undefined): { cert: string; key: string | null } {
  const pem = readText(certFile);
  const key = keyFile ? readText(keyFile) : /-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]+?-----END [A-Z ]*PRIVATE KEY-----/.exec(pem)?.[0];
  const cert = pem.replace(/-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]+?-----END [A-Z ]*PRIVATE KEY-----\s*/g, '');
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
  } catch (err) {
    throw new Error(`${certFile}: not a PEM certificate (${(err as Error).message})`);
  }
  // Without a key: no handshake can present it; `openssl verify` gives the chain verdict (offline-verdict.ts).
  if (!key) return { cert, key: null };
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(key);
  } catch (err) {
    throw new Error(`${keyFile ?? certFile}: ${encryptedKeyProblem(key) ?? `not a PEM private key (${(err as Error).message})`}`);
  }
  if (!x509.checkPrivateKey(privateKey)) throw new Error(`${keyFile ?? certFile}: this private key is not the key of the certificate in ${certFile}`);
  return { cert, key };
}

const readText = (file: string): string => readBytes(file).toString('utf8');

function readBytes(file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new Error(`${file}: cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
}

/** The first line of `file` (`-`: stdin, fd 0). */
function passwordFrom(file: string): string {
  return readFileSync(file === '-' ? 0 : file, 'utf8').split(/\r?\n/)[0]!;
}

function message(opts: TryOptions): Buffer | undefined {
  if (opts.message) return readBytes(opts.message);
  if (!opts.header?.length) return undefined;
  return Buffer.from(`${opts.header.join('\r\n')}\r\n\r\npostern try\r\n`);
}

function asJson(session: TrySession, result: TryResult): object {
  return {
    listener: session.listener.name,
    outcome: result.outcome,
    exitCode: result.exitCode,
    steps: result.steps.map((s) => ({
      step: s.step, command: s.command, reply: s.reply, outcome: s.outcome, ...(s.held ? { held: s.held } : {}), logs: s.logs,
      calls: s.calls.map((c) => ({
        hook: c.hook, script: session.hasScript(c.hook), context: withoutPassword(c.hook, c.ctx), verdict: c.verdict === FAIL_CLOSED ? null : c.verdict ?? null, failure: c.failure, ms: round(c.seconds * 1000),
      })),
    })),
  };
}

function asText(session: TrySession, result: TryResult, hook: HookName | undefined): string {
  const out: string[] = [`listener ${session.listener.name} (tls ${session.listener.tls.mode}), connection ${session.connectionId}`];
  // A hook never reached (a built-in rule refused before it): every context is shown, the certificate's verdict among them.
  const reached = hook === undefined || result.steps.some((s) => s.step === hook);
  for (const s of result.steps) {
    out.push(`> ${s.command}`);
    // try HOOK shows the hook asked for in full; a session file shows every call.
    const detailed = !reached || hook === undefined || s.step === hook || s.outcome !== 'accept';
    for (const c of s.calls) {
      const own = session.hasScript(c.hook);
      out.push(own ? `  script ${c.hook} (${round(c.seconds * 1000)} ms)` : `  no ${c.hook} script: the built-in rules decide`);
      if (detailed) out.push(`  context: ${indent(JSON.stringify(withoutPassword(c.hook, c.ctx), null, 2))}`);
      if (own) out.push(`  verdict: ${verdictText(c)}`);
    }
    for (const l of s.logs) out.push(`  log ${l.level}${l.script ? ` ${l.script}` : ''}: ${l.msg}`);
    out.push(`< ${s.reply}`);
    // The client's 250 alone reads as delivered: a held message waits in the queue for `postern queue release`.
    if (s.held) out.push(`  held: by script ${s.held.file}: ${s.held.reason} (not delivered until postern queue release)`);
  }
  const lastStep = result.steps.at(-1);
  if (!reached && lastStep) {
    out.push(`(the ${hook} hook was not reached: the session stopped at ${lastStep.step})`);
  }
  out.push(`outcome: ${result.outcome} (exit ${result.exitCode})`);
  return `${out.join('\n')}\n`;
}

function verdictText(c: StepResult['calls'][number]): string {
  if (c.failure) return `script error (${c.failure.kind}) ${c.failure.file ?? ''}${c.failure.line ? `:${c.failure.line}` : ''}${c.failure.column ? `:${c.failure.column}` : ''}: ${c.failure.message} — fails closed`;
  if (c.verdict === undefined) return 'none (the built-in rule decides)';
  return JSON.stringify(c.verdict);
}

const indent = (text: string): string => text.replace(/\n/g, '\n  ');
const round = (ms: number): number => Math.round(ms * 100) / 100;
