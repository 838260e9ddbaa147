/**
 * The configuration reference, read from the schema: every key with its type, default and description.
 * `postern config describe` prints it; docs/configuration.md holds it as generated tables, one per section,
 * between marker comments (regenerate with `npm run docs:config`; test/config/describe.test.ts compares).
 *
 * The schema goes through z.toJSONSchema (input side: defaults shown, defaulted keys optional) and that
 * JSON Schema is walked. Beyond .describe(), schema.ts may give a key .meta() hints for the reference:
 * `format` (what a string is: path, address:port, …), `unit` (ms, bytes) and `defaultText` (a default the
 * schema cannot state, e.g. one computed from other keys).
 */
import { readFile, writeFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from './zod.ts';
import { configSchema } from './schema.ts';

export const CONFIGURATION_DOC = resolve(dirname(fileURLToPath(import.meta.url)), '../../docs/configuration.md');
export const REGENERATE_COMMAND = 'npm run docs:config';

export interface ConfigKey {
  /** Dotted path; `[]` marks list items and `<name>` the keys of a map, e.g. `listeners[].tls.mode`. */
  path: string;
  /** Markdown (code spans for literals); `|` unescaped. */
  type: string;
  default: string;
  required: boolean;
  description: string;
}

type JsonSchema = {
  type?: string; properties?: Record<string, JsonSchema>; required?: string[]; items?: JsonSchema;
  additionalProperties?: JsonSchema | boolean; anyOf?: JsonSchema[]; enum?: unknown[]; const?: unknown;
  default?: unknown; description?: string; format?: string; unit?: string; defaultText?: string;
  minimum?: number; maximum?: number; exclusiveMinimum?: number; minItems?: number;
};

export function configJsonSchema(schema: z.ZodType = configSchema): Record<string, unknown> {
  return z.toJSONSchema(schema, { io: 'input' });
}

/** Every key of the schema, parents before their children, in schema order. */
export function configKeys(schema: z.ZodType = configSchema): ConfigKey[] {
  const out: ConfigKey[] = [];
  const seen = new Set<string>();
  // `form`: inside one form of a union (route: smarthost or mx), where "required" holds for that form only.
  const visit = (node: JsonSchema, path: string, form: boolean): void => {
    for (const [name, child] of Object.entries(node.properties ?? {})) {
      const at = path ? `${path}.${name}` : name;
      if (seen.has(at)) continue; // the same key in two forms of a union: the first form's
      seen.add(at);
      const required = node.required?.includes(name) ?? false;
      out.push({
        path: at,
        type: typeOf(child),
        default: defaultOf(child, required, form),
        required,
        description: child.description?.trim() ?? '',
      });
      visitChildren(child, at, form);
    }
  };
  const visitChildren = (node: JsonSchema, path: string, form: boolean): void => {
    if (node.properties) visit(node, path, form);
    if (node.items && typeof node.items === 'object') visitChildren(node.items, `${path}[]`, form);
    if (node.additionalProperties && typeof node.additionalProperties === 'object') visitChildren(node.additionalProperties, `${path}.<name>`, form);
    for (const variant of node.anyOf ?? []) visitChildren(variant, path, true);
  };
  visit(configJsonSchema(schema) as JsonSchema, '', false);
  return out;
}

/** Keys a reader would be left guessing about: every key needs a description. */
export function undescribedKeys(keys: ConfigKey[] = configKeys()): string[] {
  return keys.filter((k) => !k.description).map((k) => k.path);
}

const code = (value: unknown): string => `\`${typeof value === 'string' ? value : JSON.stringify(value)}\``;

/** An object inside a union or a map is shown by its keys: `{ cert, key }`. */
const inline = (node: JsonSchema): string => (node.properties ? `\`{ ${Object.keys(node.properties).join(', ')} }\`` : typeOf(node));

function typeOf(node: JsonSchema): string {
  if (node.anyOf) return node.anyOf.map(inline).join(' or ');
  if (node.const !== undefined) return code(node.const);
  if (node.enum) return node.enum.map(code).join(' | ');
  const unit = node.unit ? `, ${node.unit}` : '';
  switch (node.type) {
    case 'string': return node.format ?? 'string';
    case 'integer':
    case 'number': return `${node.type}${range(node)}${unit}`;
    case 'array': {
      const items = node.items ?? {};
      const least = node.minItems ? `, at least ${node.minItems}` : '';
      if (items.enum) return `list of ${items.enum.map(code).join(', ')}${least}`;
      if (items.properties) return `list${least}`;
      if (items.unit && (items.type === 'number' || items.type === 'integer')) return `list of ${items.unit} (${range(items).trim()})${least}`;
      const of = typeOf(items);
      return /^[\w:-]+$/.test(of) ? `${of}[]${least}` : `list of ${of}${least}`;
    }
    case 'object':
      if (node.additionalProperties && typeof node.additionalProperties === 'object') return `map name → ${inline(node.additionalProperties)}`;
      return 'object';
    default: return node.type ?? 'any';
  }
}

/** ` 1–64`, ` ≥ 0`, ` > 0`; zod's safe-integer bounds are left out. */
function range(node: JsonSchema): string {
  const bound = (n: number | undefined): number | undefined => (n === undefined || Math.abs(n) >= Number.MAX_SAFE_INTEGER ? undefined : n);
  const max = bound(node.maximum);
  let min = bound(node.minimum);
  let strict = false;
  if (node.exclusiveMinimum !== undefined) {
    if (node.type === 'integer') min = node.exclusiveMinimum + 1;
    else { min = node.exclusiveMinimum; strict = true; }
  }
  if (min !== undefined && max !== undefined) return ` ${min}–${max}`;
  if (min !== undefined) return ` ${strict ? '>' : '≥'} ${min}`;
  if (max !== undefined) return ` ≤ ${max}`;
  return '';
}

function defaultOf(node: JsonSchema, required: boolean, form: boolean): string {
  if (node.defaultText) return node.defaultText;
  if (node.default === undefined) return required ? `**required**${form ? ' in this form' : ''}` : '—';
  if (node.properties && isEmptyObject(node.default)) return 'its keys\' defaults';
  const shown = code(flow(node.default));
  const mib = 1024 * 1024;
  if (node.unit === 'bytes' && typeof node.default === 'number' && node.default % mib === 0) return `${shown} (${node.default / mib} MiB)`;
  return shown;
}

const isEmptyObject = (v: unknown): boolean => typeof v === 'object' && v !== null && !Array.isArray(v) && Object.keys(v).length === 0;

/** A default in YAML flow style, as it would be written in postern.yaml. */
function flow(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(flow).join(', ')}]`;
  if (typeof value === 'object' && value !== null) {
    const entries = Object.entries(value);
    return entries.length ? `{ ${entries.map(([k, v]) => `${k}: ${flow(v)}`).join(', ')} }` : '{}';
  }
  return typeof value === 'string' ? value : JSON.stringify(value);
}

// ---- docs/configuration.md sections

export interface DocSection {
  /** Path prefix of the keys in this section's table ('' = top level). */
  root: string;
  /** Where the section's heading is, for links from the parent table. */
  anchor: string;
}

/** One table per section; a key belongs to the section with the longest root that contains it. */
export const DOC_SECTIONS: DocSection[] = [
  { root: '', anchor: '#top-level' },
  { root: 'listeners[]', anchor: '#listeners' },
  { root: 'listeners[].tls', anchor: '#listenerstls' },
  { root: 'listeners[].auth', anchor: '#listenersauth' },
  { root: 'listeners[].certificateIdentity', anchor: '#listenerscertificateidentity' },
  { root: 'listeners[].limits', anchor: '#listenerslimits' },
  { root: 'tables.<name>', anchor: '#tables' },
  { root: 'sandbox', anchor: '#sandbox' },
  { root: 'log', anchor: '#log' },
  { root: 'delivery', anchor: '#delivery-keys' },
];

const inside = (path: string, root: string): boolean => root === '' || path.startsWith(`${root}.`) || path.startsWith(`${root}[]`);

function sectionOf(path: string, sections: DocSection[]): DocSection {
  let best: DocSection | undefined;
  for (const s of sections) if (inside(path, s.root) && (!best || s.root.length > best.root.length)) best = s;
  if (!best) throw new Error(`no section holds ${path}`);
  return best;
}

/** The section a key opens (`listeners` opens `listeners[]`), if any. */
function sectionOpenedBy(path: string, sections: DocSection[]): DocSection | undefined {
  return sections.find((s) => s.root === path || s.root === `${path}[]` || s.root === `${path}.<name>`);
}

const sentence = (text: string): string => (!text || /[.!?:)]$/.test(text) ? text : `${text}.`);
const cell = (text: string): string => text.replace(/\|/g, '\\|').replace(/\n+/g, ' ');

export function sectionTable(section: DocSection, keys: ConfigKey[] = configKeys(), sections: DocSection[] = DOC_SECTIONS): string {
  const rows = keys.filter((k) => sectionOf(k.path, sections) === section).map((k) => {
    const name = section.root ? k.path.slice(section.root.length + 1) : k.path;
    const opened = sectionOpenedBy(k.path, sections);
    const description = opened ? `${sentence(k.description)} See [\`${opened.root}\`](${opened.anchor}).`.trim() : k.description;
    return `| \`${name}\` | ${cell(k.type)} | ${cell(k.default)} | ${cell(description)} |`;
  });
  return ['| key | type | default | what it does |', '|---|---|---|---|', ...rows].join('\n');
}

const BEGIN = (root: string): string =>
  `<!-- BEGIN config-reference ${root || '(top level)'}: generated from engine/config/schema.ts by \`${REGENERATE_COMMAND}\`; do not edit -->`;
const END = (root: string): string => `<!-- END config-reference ${root || '(top level)'} -->`;

/** Every section's table under its own heading: what `postern config describe --markdown` prints. */
export function referenceMarkdown(keys: ConfigKey[] = configKeys()): string {
  return DOC_SECTIONS.map((s) => `## ${s.root ? `\`${s.root}\`` : 'Top level'}\n\n${sectionTable(s, keys)}\n`).join('\n');
}

/** `doc` with each section's generated block replaced by a fresh table; throws when a block is missing or doubled. */
export function updateDocument(doc: string, keys: ConfigKey[] = configKeys()): string {
  let out = doc;
  for (const section of DOC_SECTIONS) {
    const begin = BEGIN(section.root);
    const end = END(section.root);
    const start = out.indexOf(begin);
    const stop = out.indexOf(end, start);
    if (start === -1 || stop === -1) throw new Error(`docs: no generated block for ${section.root || 'the top level'} (${begin} … ${end})`);
    if (out.indexOf(begin, start + 1) !== -1) throw new Error(`docs: two generated blocks for ${section.root || 'the top level'}`);
    out = `${out.slice(0, start)}${begin}\n\n${sectionTable(section, keys)}\n\n${out.slice(stop)}`;
  }
  const stray = out.match(/<!-- BEGIN config-reference (.*?):/g)?.length ?? 0;
  if (stray !== DOC_SECTIONS.length) throw new Error(`docs: ${stray} generated blocks, expected ${DOC_SECTIONS.length}`);
  return out;
}

export async function writeDocument(file: string = CONFIGURATION_DOC): Promise<boolean> {
  const before = await readFile(file, 'utf8');
  const after = updateDocument(before);
  if (after !== before) await writeFile(file, after);
  return after !== before;
}

/** Plain text for a terminal: one paragraph per key. */
export function referenceText(keys: ConfigKey[] = configKeys()): string {
  const plain = (md: string): string => md.replace(/\[([^\]]*)\]\([^)]*\)/g, '$1').replace(/\*\*/g, '');
  return keys.map((k) => `${k.path}\n  ${plain(k.type)}; default: ${plain(k.default)}\n  ${plain(k.description) || '(no description)'}\n`).join('\n');
}
