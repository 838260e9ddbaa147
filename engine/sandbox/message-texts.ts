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

/**
 * The open bodies, in slots reused as they close (one per data hook running); a token is 128 random bits
 * followed by its slot's number, and names a body only while that slot holds the same token. Not a Map: one set and one delete per message rehashed its table every few messages, and a table that
 * reached the old generation kept closed readers — each holding its message's spool writer and chunks —
 * alive through scavenges.
 */
const slots: Array<{ token: string; reader: BodyReader | null }> = [];
const free: number[] = [];

/** The slot `token` names, if it is open. */
function slotOf(token: unknown): { token: string; reader: BodyReader | null } | null {
  if (typeof token !== 'string' || token.length <= RANDOM_CHARS) return null;
  const slot = slots[Number.parseInt(token.slice(RANDOM_CHARS), 36)];
  return slot !== undefined && slot.reader !== null && slot.token === token ? slot : null;
}

function find(token: unknown): BodyReader | null {
  return slotOf(token)?.reader ?? null;
}

/**
 * Tokens are 128 random bits from a pool refilled by the CSPRNG, as randomUUID() does, but encoded in one
 * step: randomUUID()'s string building allocated 0.6 KB per message (heap profile of bench (a)).
 */
const TOKEN_BYTES = 16;
const RANDOM_CHARS = 22; // base64url of TOKEN_BYTES
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

/**
 * The token of a data hook with no body to read: a Postfix policy request carries none (only its size). Never
 * an open body's (those are longer), so text() says why instead of the script meeting no ctx.message at all.
 */
export const NO_MESSAGE_BODY = 'none';

/** Make a body readable by scripts until close(token). */
export function openMessageText(reader: BodyReader): string {
  const at = free.pop() ?? slots.push({ token: '', reader: null }) - 1;
  const token = newToken() + at.toString(36);
  slots[at]!.token = token;
  slots[at]!.reader = reader;
  return token;
}

export function closeMessageText(token: string): void {
  const slot = slotOf(token);
  if (!slot) return;
  slot.reader = null;
  slot.token = '';
  free.push(Number.parseInt(token.slice(RANDOM_CHARS), 36));
}

/**
 * A copy of an open body, as much of it as text() can ask for, readable after the call that opened it
 * closes: what a shadow script (engine/shadow/) reads, since it runs after the live call. null: not open.
 */
export function copyMessageText(token: unknown): BodyReader | null {
  const reader = find(token);
  if (!reader) return null;
  const copy = reader(MAX_MESSAGE_TEXT_BYTES);
  return (maxBytes) => copy.subarray(0, maxBytes);
}

/** A line end the next hop would not read as the message has it: a CR without its LF, or an LF without its CR. */
const LONE_LINE_END = /\r(?!\n)|(?<!\r)\n/;

/**
 * The text with every line end CRLF, as delivery sends it (and DKIM signs it): a bare CR or bare LF is a line
 * end to the next hop, so it is one to the script too (a content check splitting at CRLF or LF would otherwise
 * read `text<CR>Content-Type: …` as one line that the next hop reads as two).
 */
function lineEndsAsSent(text: string): string {
  return LONE_LINE_END.test(text) ? text.replace(/\r\n|\r|\n/g, '\r\n') : text;
}

/** The body text for a script: UTF-8 (invalid bytes become U+FFFD), at most `maxBytes` bytes of it, line ends as sent. */
export function readMessageText(token: unknown, maxBytes: unknown): string {
  if (token === NO_MESSAGE_BODY) throw new Error('message.text(): a Postfix policy request carries no message body (ctx.connection.source is "postfix-policy")');
  const reader = find(token);
  if (!reader) throw new Error('message.text(): the message is only readable while its data hook runs');
  const max = Number(maxBytes);
  if (!Number.isSafeInteger(max) || max < 1 || max > MAX_MESSAGE_TEXT_BYTES) {
    throw new RangeError(`message.text(): maxBytes must be a whole number from 1 to ${MAX_MESSAGE_TEXT_BYTES}`);
  }
  return lineEndsAsSent(reader(max).toString('utf8'));
}
