/** Password hashes for the users file: argon2id (PHC string) via @node-rs/argon2. */
import { hash, verify } from '@node-rs/argon2';

export function hashPassword(password: string): Promise<string> {
  if (!password) throw new Error('refusing to hash an empty password');
  return hash(password);
}

// A real hash of a random value, so an unknown user costs as much time as a known one.
let decoy: Promise<string> | undefined;

/** True only for a non-empty password matching `phc`. Unknown user: pass `phc` undefined. */
export async function verifyPassword(phc: string | undefined, password: string): Promise<boolean> {
  if (!phc) {
    decoy ??= hash(crypto.randomUUID());
    await verify(await decoy, password || 'x').catch(() => false);
    return false;
  }
  if (!password) return false;
  try {
    return await verify(phc, password);
  } catch {
    return false;
  }
}
