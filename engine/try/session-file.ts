/**
 * A session file for `postern try --session`: the commands of one SMTP session, one per line, as a client
 * would send them (Exim's `-bh`). Blank lines and `#` comments (a line's, or its end after a space) are skipped;
 * the connection is implied.
 *
 *   EHLO laptop.example           HELO works too
 *   STARTTLS                      (TLS with the --cert given; implicit-TLS listeners need no line)
 *   AUTH PLAIN alice secret       PLAIN/LOGIN: username and password; AUTH EXTERNAL [authzid]
 *   MAIL FROM:<a@example.org> SIZE=1200
 *   RCPT TO:<b@example.net>
 *   DATA message.eml              a file (relative to the session file), or DATA alone followed by the
 *   Subject: hi                   message, ended by a line with a single dot
 *   .
 *   PREDELIVERY                   the predelivery hook for the message just sent
 *   QUIT
 */
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';

export type SessionCommand =
  | { kind: 'helo'; verb: 'HELO' | 'EHLO'; name: string; line: number }
  | { kind: 'starttls'; line: number }
  | { kind: 'auth'; mechanism: string; username: string; password: string; authzid: string; line: number }
  | { kind: 'mailfrom' | 'rcptto'; address: string; args: Record<string, string>; params: string; line: number }
  | { kind: 'data'; message: Buffer; line: number }
  | { kind: 'predelivery'; line: number }
  | { kind: 'quit'; line: number };

export class SessionFileError extends Error {
  constructor(file: string, line: number, message: string) { super(`${file}:${line}: ${message}`); this.name = 'SessionFileError'; }
}

export function readSessionFile(file: string): SessionCommand[] {
  const lines = readOrFail(file, () => `${file}: cannot be read`).toString('utf8').split(/\r?\n/);
  const out: SessionCommand[] = [];
  const fail = (line: number, message: string): never => { throw new SessionFileError(file, line, message); };
  for (let i = 0; i < lines.length; i++) {
    // A `#` after a space starts a comment on a command line too (`DATA message.eml   # the message`);
    // the lines of a message after DATA are taken as they are, below.
    const text = lines[i]!.replace(/(^|\s)#.*$/, '').trim();
    const line = i + 1;
    if (!text) continue;
    const [verb = '', ...rest] = text.split(/\s+/);
    switch (verb.toUpperCase()) {
      case 'EHLO': case 'HELO':
        // Without a name, or with more than one word: the listener's 501 5.5.4, which try gives as it does.
        out.push({ kind: 'helo', verb: verb.toUpperCase() as 'EHLO', name: rest.join(' '), line });
        break;
      case 'STARTTLS': out.push({ kind: 'starttls', line }); break;
      case 'AUTH': {
        const mechanism = (rest[0] ?? '').toUpperCase();
        if (mechanism === 'EXTERNAL') out.push({ kind: 'auth', mechanism, username: '', password: '', authzid: rest[1] ?? '', line });
        else if (rest.length === 3) out.push({ kind: 'auth', mechanism, username: rest[1]!, password: rest[2]!, authzid: '', line });
        else fail(line, 'expected AUTH PLAIN|LOGIN <username> <password>, or AUTH EXTERNAL [authzid]');
        break;
      }
      case 'MAIL': case 'RCPT': {
        const m = /^(MAIL\s+FROM|RCPT\s+TO)\s*:\s*<([^>]*)>(.*)$/i.exec(text);
        if (!m) fail(line, `expected ${verb.toUpperCase() === 'MAIL' ? 'MAIL FROM:<address>' : 'RCPT TO:<address>'} [PARAM=value …]`);
        const args: Record<string, string> = {};
        for (const p of m![3]!.trim().split(/\s+/).filter(Boolean)) {
          const eq = p.indexOf('=');
          args[(eq < 0 ? p : p.slice(0, eq)).toUpperCase()] = eq < 0 ? 'true' : p.slice(eq + 1);
        }
        // The parameters as written too: the listener's own checks read them so (a bare SMTPUTF8, SIZE=1 SIZE=2).
        out.push({ kind: verb.toUpperCase() === 'MAIL' ? 'mailfrom' : 'rcptto', address: m![2]!, args, params: m![3]!.trim(), line });
        break;
      }
      case 'DATA': {
        if (rest.length) {
          out.push({ kind: 'data', message: readOrFail(resolve(dirname(file), rest.join(' ')), () => `${file}:${line}: DATA ${rest.join(' ')}: cannot be read`), line });
          break;
        }
        const body: string[] = [];
        for (i++; i < lines.length && lines[i] !== '.'; i++) body.push(lines[i]!.startsWith('..') ? lines[i]!.slice(1) : lines[i]!);
        if (i >= lines.length) fail(line, 'DATA without its ending "." line');
        out.push({ kind: 'data', message: Buffer.from(`${body.join('\r\n')}\r\n`), line });
        break;
      }
      case 'PREDELIVERY': out.push({ kind: 'predelivery', line }); break;
      case 'QUIT': out.push({ kind: 'quit', line }); break;
      default: fail(line, `unknown command ${JSON.stringify(verb)}`);
    }
  }
  return out;
}

function readOrFail(path: string, where: () => string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new Error(`${where()} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
}
