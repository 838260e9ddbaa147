/**
 * The message bodies a running `data` hook may read (ctx.message.text()). The SMTP side opens one for the
 * length of the hook's call and closes it after; the script's context carries only an unguessable token,
 * so nothing is copied into the sandbox unless the script asks, and a script can reach no other message.
 */
import { randomFillSync } from 'node:crypto';

/** Most bytes one text() call copies into the sandbox. */
export const MAX_MESSAGE_TEXT_BYTES = 1024 * 1024;
/** What text() copies without an argument. */
export const DEFAULT_MESSAGE_TEXT_BYTES = 64 * 1024;

/** Reads up to `maxBytes` of a message's body (from its first byte). */
export type BodyReader = (maxBytes: number) => Buffer;

const open = new Map<string, BodyReader>();

/**
 * Tokens are 128 random bits from a pool refilled by the CSPRNG, as randomUUID() does, but encoded in one
 * step: randomUUID()'s string building allocated 0.6 KB per message (heap profile of bench (a)).
 */
const TOKEN_BYTES = 16;
const pool = Buffer.alloc(TOKEN_BYTES * 128);
let poolAt = pool.length;

function newToken(): string {
  if (poolAt === pool.length) {
    randomFillSync(pool);
    poolAt = 0;
  }
  const token = pool.toString('base64url', poolAt, poolAt + TOKEN_BYTES);
  poolAt += TOKEN_BYTES;
  return token;
}

/** Make a body readable by scripts until close(token). */
export function openMessageText(reader: BodyReader): string {
  const token = newToken();
  open.set(token, reader);
  return token;
}

export function closeMessageText(token: string): void {
  open.delete(token);
}

/**
 * A copy of an open body, as much of it as text() can ask for, readable after the call that opened it
 * closes: what a shadow script (engine/shadow/) reads, since it runs after the live call. null: not open.
 */
export function copyMessageText(token: unknown): BodyReader | null {
  const reader = typeof token === 'string' ? open.get(token) : undefined;
  if (!reader) return null;
  const copy = reader(MAX_MESSAGE_TEXT_BYTES);
  return (maxBytes) => copy.subarray(0, maxBytes);
}

/** The body text for a script: UTF-8 (invalid bytes become U+FFFD), at most `maxBytes` bytes of it. */
export function readMessageText(token: unknown, maxBytes: unknown): string {
  const reader = typeof token === 'string' ? open.get(token) : undefined;
  if (!reader) throw new Error('message.text(): the message is only readable while its data hook runs');
  const max = Number(maxBytes);
  if (!Number.isSafeInteger(max) || max < 1 || max > MAX_MESSAGE_TEXT_BYTES) {
    throw new RangeError(`message.text(): maxBytes must be a whole number from 1 to ${MAX_MESSAGE_TEXT_BYTES}`);
  }
  return reader(max).toString('utf8');
}
