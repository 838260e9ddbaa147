/**
 * The users file: one `name:hash` per line (`#` comments), hashes made by `postern hash-password`.
 * Plaintext passwords are refused when loading.
 */
import { readInputFile, readProblem } from '../config/input-file.ts';
import { containsPrivateKey, privateKeyFileMessage, quoteToken } from '../certificates/key-material.ts';

export class UsersFileError extends Error {}

export async function loadUsersFile(file: string): Promise<Map<string, string>> {
  let text: string;
  try {
    text = (await readInputFile(file)).toString('utf8');
  } catch (err) {
    throw new UsersFileError(`${file}: cannot read: ${readProblem(err)}`);
  }
  if (containsPrivateKey(text)) throw new UsersFileError(`${file}: ${privateKeyFileMessage('a users file')}`);
  const users = new Map<string, string>();
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (!line || line.startsWith('#')) return;
    const colon = line.indexOf(':');
    const name = line.slice(0, colon).trim().toLowerCase();
    const hash = line.slice(colon + 1).trim();
    if (colon <= 0 || !name) throw new UsersFileError(`${file}:${i + 1}: expected "name:hash"`);
    if (!hash.startsWith('$argon2')) throw new UsersFileError(`${file}:${i + 1}: ${quoteToken(name)}: not an argon2 hash (make one with: postern hash-password)`);
    if (users.has(name)) throw new UsersFileError(`${file}:${i + 1}: duplicate user ${quoteToken(name)}`);
    users.set(name, hash);
  });
  return users;
}
