/** `postern hash-password`: stdin → argon2id hash on stdout. */
import { hashPassword } from '../auth/password-hash.ts';
import { text } from 'node:stream/consumers';

export async function hashPasswordCommand(): Promise<number> {
  if (process.stdin.isTTY) process.stderr.write('Password (end with Enter, then Ctrl-D): ');
  const password = (await text(process.stdin)).replace(/\r?\n$/, '');
  if (!password) {
    process.stderr.write('postern: refusing to hash an empty password\n');
    return 1;
  }
  process.stdout.write(`${await hashPassword(password)}\n`);
  return 0;
}
