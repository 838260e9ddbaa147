/** Password hashes for the users file: argon2id (PHC string) via @node-rs/argon2. */
import { hash, parseOptions, verify } from '@node-rs/argon2';

export function hashPassword(password: string): Promise<string> {
  if (!password) throw new Error('refusing to hash an empty password');
  return hash(password);
}

// Real hashes of a random value, one per set of parameters, so an unknown user costs as much time as a known
// one: a users file brought from elsewhere (Dovecot's argon2 with its own memory and time costs) must not
// answer unknown names faster than its own.
const decoys = new Map<string, Promise<string>>();

function decoyLike(like: string | undefined): Promise<string> {
  let options: ReturnType<typeof parseOptions> | undefined;
  try {
    options = like ? parseOptions(like) : undefined;
  } catch { /* not a hash this library reads: the default parameters */ }
  const key = options ? [options.algorithm, options.version, options.memoryCost, options.timeCost, options.parallelism, options.outputLen].join(',') : 'default';
  let decoy = decoys.get(key);
  if (!decoy) {
    if (decoys.size >= 16) decoys.clear(); // a few sets of parameters in any real users file
    const { algorithm, version, memoryCost, timeCost, parallelism, outputLen } = options ?? {};
    decoy = hash(crypto.randomUUID(), options ? { algorithm, version, memoryCost, timeCost, parallelism, outputLen } : undefined);
    decoys.set(key, decoy);
  }
  return decoy;
}

/**
 * True only for a non-empty password matching `phc`. Unknown user: pass `phc` undefined, and `like` a hash of
 * the same users file, whose parameters the decoy takes. Whatever the outcome (unknown user, empty password,
 * wrong password) one verification runs: the time taken does not tell whether the account exists.
 */
export async function verifyPassword(phc: string | undefined, password: string, like?: string): Promise<boolean> {
  const ok = await verify(phc ?? await decoyLike(like), password).catch(() => false);
  return ok && phc !== undefined && password !== '';
}

/** A hash of `users` for verifyPassword's `like`: the parameters an unknown user's decoy is hashed with. */
export const someHash = (users: ReadonlyMap<string, string>): string | undefined => users.values().next().value;

/** Whether `phc` is an argon2 hash this library can read (a truncated or mistyped one matches no password, ever). */
export function readableHash(phc: string): boolean {
  try {
    parseOptions(phc);
    return true;
  } catch {
    return false;
  }
}
