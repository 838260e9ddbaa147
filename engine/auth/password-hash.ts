/** Password hashes for the users file: argon2id (PHC string) via @node-rs/argon2. */
import { createRequire } from 'node:module';
import type * as Argon2 from '@node-rs/argon2';

// Its native binding is loaded by the first hash or check (~6 ms of CPU, with node:child_process, at each start of
// every process of `postern serve`, though most servers never check a password). A binding that cannot be loaded
// fails what asked for it with its error (verifyPassword rejects: the script's call fails closed), not a false.
let argon2: typeof Argon2 | undefined;
const library = (): typeof Argon2 => (argon2 ??= createRequire(import.meta.url)('@node-rs/argon2') as typeof Argon2);
const hash: typeof Argon2.hash = (...args) => library().hash(...args);
const verify: typeof Argon2.verify = (...args) => library().verify(...args);
const parseOptions: typeof Argon2.parseOptions = (phc) => library().parseOptions(phc);

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
  const { parseOptions } = library(); // a binding that cannot load is not a hash that cannot be read
  try {
    parseOptions(phc);
    return true;
  } catch {
    return false;
  }
}
