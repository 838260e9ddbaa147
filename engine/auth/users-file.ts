/**
 * The users file: one `name:hash` per line (`#` comments), hashes made by `postern hash-password`.
 * Plaintext passwords are refused when loading.
 */
import { readInputFile, readProblem } from '../config/input-file.ts';
import { linesOf, slicer } from '../config/give-way.ts';
import { containsPrivateKey, privateKeyFileMessage, quoteToken } from '../certificates/key-material.ts';
import { readableHash } from './password-hash.ts';

export class UsersFileError extends Error {}

/**
 * A user's name as the file keys it, and as a login (AUTH PLAIN/LOGIN, the account page) is looked up: NFC and
 * lowercased, so `josé` typed on a Mac (decomposed, NFD) is the file's `josé`, and two lines that differ only by
 * case or normalization are one user given twice, not two accounts that look the same (RFC 4616 asks SASLprep).
 */
export const userKey = (name: string): string => name.normalize('NFC').toLowerCase();

export async function loadUsersFile(file: string): Promise<Map<string, string>> {
  let text: string;
  try {
    text = (await readInputFile(file)).toString('utf8');
  } catch (err) {
    throw new UsersFileError(`${file}: cannot read: ${readProblem(err)}`);
  }
  if (containsPrivateKey(text)) throw new UsersFileError(`${file}: ${privateKeyFileMessage('a users file')}`);
  const users = new Map<string, string>();
  // Line by line, giving way to the sessions (give-way.ts): a file of a million users is a second of work.
  const giveWay = slicer();
  for (const [raw, i] of linesOf(text)) {
    const turn = giveWay();
    if (turn) await turn;
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const colon = line.indexOf(':');
    const name = userKey(line.slice(0, colon).trim());
    const hash = line.slice(colon + 1).trim();
    if (colon <= 0 || !name) throw new UsersFileError(`${file}:${i}: expected "name:hash"`);
    if (!hash.startsWith('$argon2')) throw new UsersFileError(`${file}:${i}: ${quoteToken(name)}: not an argon2 hash (make one with: postern hash-password)`);
    // Cut short or mistyped in copying: that user could never log in, and nothing would say why.
    if (!readableHash(hash)) throw new UsersFileError(`${file}:${i}: ${quoteToken(name)}: not a readable argon2 hash (cut short in copying?): make one with: postern hash-password`);
    if (users.has(name)) throw new UsersFileError(`${file}:${i}: duplicate user ${quoteToken(name)}`);
    users.set(name, hash);
  }
  return users;
}
