/**
 * Generates scripts/postern.d.ts for script authors from the api sources: every exported type inside
 * `declare module "postern"`, and the PosternHelpers members as global functions (properties as constants).
 * Run: node engine/sandbox/api/generate-dts.ts [output-file]
 */
import { readFile, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const API_DIR = dirname(fileURLToPath(import.meta.url));
export const DTS_PATH = resolve(API_DIR, '../../../scripts/postern.d.ts');

const HEADER = `// generated from engine/sandbox/api — do not edit (node engine/sandbox/api/generate-dts.ts)
//
// Types for Postern policy scripts. A script imports what it needs, e.g.
//   import type { AuthContext, Verdict } from "postern";
// and uses the helper globals (accept, reject, defer, deliver, lookup, log, sha256, …) directly.
`;

/** The files index.ts re-exports (`export type * from './x.ts'`), in its order, then index.ts itself. */
function sourceOrder(index: string): string[] {
  const reexports = [...index.matchAll(/^export type \* from '\.\/([\w-]+\.ts)';$/gm)].map((m) => m[1]!);
  return [...reexports, 'index.ts'];
}

/** A module's declarations without its imports and re-exports: inside one ambient module they are all in scope. */
function declarations(source: string): string {
  return source
    .replace(/^import type [^;]*?from '[^']+';\n/gm, '')
    .replace(/^export type \* from '[^']+';\n/gm, '')
    .replace(/\n{3,}/g, '\n\n')
    .trim();
}

/** Split an interface body into members, each with the doc comment before it. */
function members(body: string): Array<{ doc: string; signature: string }> {
  const out: Array<{ doc: string; signature: string }> = [];
  let doc = '';
  let i = 0;
  while (i < body.length) {
    if (/\s/.test(body[i]!)) { i++; continue; }
    if (body.startsWith('/*', i)) {
      const end = body.indexOf('*/', i) + 2;
      doc = body.slice(i, end);
      i = end;
      continue;
    }
    if (body.startsWith('//', i)) { i = body.indexOf('\n', i) + 1 || body.length; continue; }
    let depth = 0;
    let j = i;
    for (; j < body.length; j++) {
      const c = body[j]!;
      if ('({['.includes(c)) depth++;
      else if (')}]'.includes(c)) depth--;
      else if (c === ';' && depth === 0) break;
    }
    out.push({ doc, signature: body.slice(i, j).replace(/\s+/g, ' ').trim() });
    doc = '';
    i = j + 1;
  }
  return out;
}

/** `sha1(data: string): string` in PosternHelpers becomes `function sha1(data: string): string;` in global scope. */
function globalHelpers(helpersSource: string): string {
  const start = helpersSource.indexOf('export interface PosternHelpers {');
  if (start === -1) throw new Error('helpers.ts: PosternHelpers not found');
  const open = helpersSource.indexOf('{', start);
  let depth = 0;
  let close = open;
  for (; close < helpersSource.length; close++) {
    if (helpersSource[close] === '{') depth++;
    else if (helpersSource[close] === '}' && --depth === 0) break;
  }
  return members(helpersSource.slice(open + 1, close)).map(({ doc, signature }) => {
    // A property (`dns: Dns`) is a global constant; a method a global function.
    if (/^\w+\s*:/.test(signature)) return `${doc ? `${doc}\n` : ''}const ${signature};`;
    if (!/^\w+\s*[(<]/.test(signature)) throw new Error(`helpers.ts: PosternHelpers member is not a method or property: ${signature}`);
    return `${doc ? `${doc}\n` : ''}function ${signature};`;
  }).join('\n');
}

const indent = (text: string, by: string): string => text.split('\n').map((l) => (l ? by + l : l)).join('\n');

export async function generateDts(apiDir: string = API_DIR): Promise<string> {
  const read = (name: string): Promise<string> => readFile(join(apiDir, name), 'utf8');
  const index = await read('index.ts');
  const sections: string[] = [];
  for (const name of sourceOrder(index)) sections.push(`// ---- ${name}\n\n${declarations(await read(name))}`);
  const globals = `global {\n${indent(globalHelpers(await read('helpers.ts')), '  ')}\n}`;
  return `${HEADER}\ndeclare module "postern" {\n${indent([...sections, `// ---- helper globals\n\n${globals}`].join('\n\n'), '  ')}\n}\n`;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const out = resolve(process.argv[2] ?? DTS_PATH);
  await writeFile(out, await generateDts());
  console.log(`wrote ${out}`);
}
