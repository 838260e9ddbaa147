/**
 * The check of a data hook's header edits (AcceptVerdict.headers), on the host, whatever the script
 * returned: nothing that could inject a line (CR, LF), put 8-bit bytes in a field name or break the
 * header's syntax gets through. A bad edit is a malformed verdict (checkVerdict turns this module's
 * HeaderEditError into a VerdictError): the hook fails closed.
 */
import type { HeaderEdit } from '../sandbox/api/index.ts';

export class HeaderEditError extends Error {}

export const MAX_HEADER_EDITS = 64;
/** RFC 5322 §2.1.1: a line is at most 998 characters; an added field is one line. */
const MAX_FIELD_BYTES = 998;
/** ftext (RFC 5322 §3.6.8): printable US-ASCII but `:`; 76 keeps `Name: ` within a 78-character line. */
const FIELD_NAME = /^[\x21-\x39\x3b-\x7e]{1,76}$/;
/**
 * Control characters other than tab (CR and LF among them), DEL, the C1 controls (NEL among them) and
 * U+2028/U+2029: readers that split lines the Unicode way (Python's str.splitlines()) break a field there.
 */
// eslint-disable-next-line no-control-regex
const CONTROL = /[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]/;

export function checkHeaderEdits(value: unknown): HeaderEdit[] {
  if (!Array.isArray(value)) throw new HeaderEditError('headers must be an array of edits');
  if (value.length > MAX_HEADER_EDITS) throw new HeaderEditError(`headers has ${value.length} edits, at most ${MAX_HEADER_EDITS} are allowed`);
  return value.map((edit, i) => checkEdit(edit, `headers[${i}]`));
}

function checkEdit(edit: unknown, at: string): HeaderEdit {
  if (typeof edit !== 'object' || edit === null || Array.isArray(edit)) throw new HeaderEditError(`${at} must be an object { op, name, value }`);
  const e = edit as Record<string, unknown>;
  const op = e.op;
  if (op !== 'add' && op !== 'set' && op !== 'remove') throw new HeaderEditError(`${at}.op must be "add", "set" or "remove", not ${JSON.stringify(op)}`);
  const allowed = op === 'remove' ? ['op', 'name'] : ['op', 'name', 'value'];
  for (const key of Object.keys(e)) if (!allowed.includes(key)) throw new HeaderEditError(`${at}: a ${op} edit has no ${JSON.stringify(key)}`);
  const name = e.name;
  if (typeof name !== 'string' || !FIELD_NAME.test(name)) {
    throw new HeaderEditError(`${at}.name must be 1 to 76 printable US-ASCII characters without ":" or spaces, not ${JSON.stringify(name)?.slice(0, 100)}`);
  }
  if (op === 'remove') return { op, name };
  const v = e.value;
  if (typeof v !== 'string') throw new HeaderEditError(`${at}.value must be a string`);
  if (CONTROL.test(v)) throw new HeaderEditError(`${at}.value (${name}) holds a line break (CR, LF, NEL, U+2028, U+2029) or another control character`);
  const bytes = Buffer.byteLength(name) + 2 + Buffer.byteLength(v);
  if (bytes > MAX_FIELD_BYTES) throw new HeaderEditError(`${at}: "${name}: …" is ${bytes} bytes, longer than one line (${MAX_FIELD_BYTES})`);
  return { op, name, value: v };
}
