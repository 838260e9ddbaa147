/** `postern hash-password`: stdin → argon2id hash on stdout. */
import { hashPassword } from '../auth/password-hash.ts';
import { text } from 'node:stream/consumers';

export async function hashPasswordCommand(): Promise<number> {
  const password = process.stdin.isTTY ? await typedUnseen('Password (not shown; end with Enter): ') : (await text(process.stdin)).replace(/\r?\n$/, '');
  if (password === null) return 130;
  if (!password) {
    process.stderr.write('postern: refusing to hash an empty password\n');
    return 1;
  }
  process.stdout.write(`${await hashPassword(password)}\n`);
  return 0;
}

/**
 * A line typed at the terminal without echoing it (as doveadm pw, htpasswd and passwd ask): echoed, the password
 * stayed on the screen, in the scrollback and in any recording of the session. Backspace takes back a character;
 * Ctrl-C (→ null) and Ctrl-D end it. Raw mode, so the terminal's own echo and line editing are off meanwhile.
 */
function typedUnseen(prompt: string): Promise<string | null> {
  const stdin = process.stdin;
  stdin.setRawMode(true); // before the prompt: what is typed as soon as it shows is not echoed either
  stdin.setEncoding('utf8');
  process.stderr.write(prompt);
  return new Promise((resolve) => {
    let typed = '';
    const end = (value: string | null): void => {
      stdin.off('data', onData);
      stdin.setRawMode(false);
      stdin.pause();
      process.stderr.write('\n');
      resolve(value);
    };
    const onData = (chunk: string): void => {
      for (const c of chunk) {
        if (c === '\r' || c === '\n' || c === '\u0004') return end(typed);
        if (c === '\u0003') return end(null);
        if (c === '\u007f' || c === '\b') typed = [...typed].slice(0, -1).join('');
        else typed += c;
      }
    };
    stdin.on('data', onData);
    stdin.resume();
  });
}
