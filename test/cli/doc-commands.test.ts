// Every `postern <command> [subcommand] --flag` the documentation quotes (README.md, docs/*.md,
// examples/*/README.md: code spans and code blocks, the flags listed in their `# …` comments too, and the
// README's command table (its first column)) names a command and flags that `postern … --help` lists: a renamed or removed flag
// fails here, not on a newcomer's terminal.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { runCli } from '../helpers/cli.ts';

const ROOT = new URL('../../', import.meta.url).pathname;

function pages(): string[] {
  return ['README.md', ...readdirSync(join(ROOT, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`),
    ...readdirSync(join(ROOT, 'examples')).map((d) => `examples/${d}/README.md`).filter((f) => existsSync(join(ROOT, f)))];
}

/** The code of a page, line by line: the lines of its code blocks, and the code spans of its other lines. */
function codeOf(text: string): Array<{ line: number; code: string; tableRow: boolean }> {
  const out: Array<{ line: number; code: string; tableRow: boolean }> = [];
  let inBlock = false;
  text.split('\n').forEach((line, i) => {
    if (line.startsWith('```')) { inBlock = !inBlock; return; }
    if (inBlock) { out.push({ line: i + 1, code: line, tableRow: false }); return; }
    const firstCell = line.startsWith('| `') ? line.split(/(?<!\\)\|/)[1]! : '';
    for (const m of line.matchAll(/`([^`]+)`/g)) out.push({ line: i + 1, code: m[1]!, tableRow: firstCell.includes(m[0]) });
  });
  return out;
}

interface Help { commands: Set<string>; flags: Set<string> }
const helps = new Map<string, Promise<Help>>();

/** What `postern PATH --help` lists: its subcommands and its flags (with -h, --help). */
function help(path: string[]): Promise<Help> {
  const key = path.join(' ');
  if (!helps.has(key)) {
    helps.set(key, runCli([...path, '--help']).then((r) => {
      assert.equal(r.code, 0, `postern ${key} --help: ${r.stderr}`);
      const [options = '', commands = ''] = r.stdout.split(/^Commands:$/m);
      return {
        commands: new Set([...commands.matchAll(/^ {2}([a-z][a-z-]*)/gm)].map((m) => m[1]!)),
        flags: new Set([...options.matchAll(/(?:^ {2}|, )(--?[a-zA-Z][\w-]*)/gm)].map((m) => m[1]!)),
      };
    }));
  }
  return helps.get(key)!;
}

test('every postern command and flag the documentation quotes exists in the command line', { timeout: 300_000 }, async () => {
  const top = await help([]);
  assert.ok(top.commands.has('pki') && top.commands.has('queue'), 'the top-level commands are read from --help');
  const wrong: string[] = [];
  let seen = 0;
  for (const page of pages()) {
    for (const { line, code, tableRow } of codeOf(readFileSync(join(ROOT, page), 'utf8'))) {
      const invocations = [...code.replace(/npm run (?:-s )?postern --/g, 'postern').matchAll(/(?:^|[\s(`$])postern\s+(.*)/g)].map((m) => m[1]!);
      // The README's command table (its first column) names commands without `postern` in front.
      if (tableRow && top.commands.has(code.split(/\s/)[0]!)) invocations.push(code);
      for (const invocation of invocations) {
        const words = invocation.split(/\s*(?:\||;|&&|\))\s*/)[0]!; // up to the next command of a pipeline
        const [command, comment = ''] = words.split(/\s#\s?/, 2) as [string, string?];
        const tokens = command.split(/\s+/).filter(Boolean);
        if (!top.commands.has(tokens[0] ?? '')) continue; // prose: "postern is", a path
        const path = [tokens[0]!];
        const sub = await help(path);
        if (sub.commands.size && /^[a-z][a-z-]*$/.test(tokens[1] ?? '')) {
          if (sub.commands.has(tokens[1]!)) path.push(tokens[1]!);
          else wrong.push(`${page}:${line}: postern ${tokens[0]} has no subcommand ${tokens[1]} (\`${code.trim()}\`)`);
        }
        const { flags } = await help(path);
        // Flags on the command, and the ones its comment lists (`# --days 3650 --key …`).
        const quoted = [...tokens.filter((t) => /^--?[a-zA-Z]/.test(t)), ...comment.split(/\s+/).filter((t) => /^--[a-z]/.test(t))]
          .map((t) => /^--?[a-zA-Z][\w-]*/.exec(t)![0]);
        for (const flag of quoted) {
          seen++;
          if (!flags.has(flag)) wrong.push(`${page}:${line}: postern ${path.join(' ')} has no ${flag} (\`${code.trim()}\`)`);
        }
      }
    }
  }
  assert.ok(seen >= 50, `found ${seen} quoted flags`);
  assert.deepEqual(wrong, []);
});
