/**
 * Applies a data hook's checked header edits (engine/policy/header-edits.ts) to the raw header section of
 * a message. Fields that no edit touches keep their exact bytes (folding, line ends, case), so signatures
 * over them still verify; new fields are one line each, ended with CRLF.
 */
import type { HeaderEdit } from '../sandbox/api/index.ts';
import { fieldName } from './header-reader.ts';

interface Field {
  /** Lowercased name; null for a line that is not a field (kept as it is, never matched). */
  key: string | null;
  raw: Buffer;
}

/**
 * `section`: the header fields, the line break of the last one included, without the empty line that ends
 * the section. Returns the edited section, ended the same way.
 */
export function editHeaderSection(section: Buffer, edits: readonly HeaderEdit[]): Buffer {
  let fields = splitFields(section);
  const added: Field[] = [];
  for (const edit of edits) {
    const key = edit.name.toLowerCase();
    if (edit.op === 'remove') {
      fields = fields.filter((f) => f.key !== key);
      for (let i = added.length - 1; i >= 0; i--) if (added[i]!.key === key) added.splice(i, 1);
      continue;
    }
    const field: Field = { key, raw: Buffer.from(`${edit.name}: ${edit.value}\r\n`) };
    if (edit.op === 'add') {
      added.push(field);
      continue;
    }
    // set: in place of the first one of that name (added or received), the others go.
    const inAdded = added.findIndex((f) => f.key === key);
    const inFields = fields.findIndex((f) => f.key === key);
    fields = fields.filter((f) => f.key !== key);
    if (inAdded >= 0) {
      for (let i = added.length - 1; i >= 0; i--) if (added[i]!.key === key) added.splice(i, 1);
      added.splice(inAdded, 0, field);
    } else if (inFields >= 0) {
      fields.splice(inFields, 0, field);
    } else {
      added.push(field);
    }
  }
  return Buffer.concat([...added, ...fields].map((f) => f.raw));
}

/** The section's fields, each with its continuation lines and line breaks. */
function splitFields(section: Buffer): Field[] {
  const fields: Field[] = [];
  let start = 0;
  while (start < section.length) {
    let end = start;
    // A field runs to the line break before the next line that does not start with a space or a tab.
    for (;;) {
      const lf = section.indexOf(0x0a, end);
      end = lf < 0 ? section.length : lf + 1;
      const next = section[end];
      if (end >= section.length || (next !== 0x20 && next !== 0x09)) break;
    }
    let raw = section.subarray(start, end);
    if (raw[raw.length - 1] !== 0x0a) raw = Buffer.concat([raw, Buffer.from('\r\n')]); // a last line without its break
    const colon = raw.indexOf(0x3a);
    const lf = raw.indexOf(0x0a);
    // Decoded as the data hook's view decodes it (header-reader.ts), the name found by the same rule.
    const name = colon > 0 && (lf < 0 || colon < lf) ? raw.toString('utf8', 0, colon) : null;
    const key = name === null ? null : fieldName(name, name.length).toLowerCase();
    fields.push({ key, raw });
    start = end;
  }
  return fields;
}
