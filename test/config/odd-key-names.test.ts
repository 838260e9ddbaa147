/**
 * `postern check` on keys no one means to write but a file can hold: control characters (a YAML double-quoted key
 * may spell any, `"\e[2J"`), and keys of thousands of characters (a paste gone wrong; an explicit `? key` has no
 * length limit). The key reached the terminal as it was, in the key path of its line: an escape sequence cleared
 * the screen or retitled the window, a carriage return overwrote the line with text of the file's choosing, a
 * newline made a line of its own. A long key was printed twice whole on its line, and its "did you mean" look
 * compared it letter by letter with every key of its object (for 30 keys of 100 000 characters, minutes of CPU and
 * hundreds of MB, in the check and in every reload of a running server). Now a key path shows such a key quoted and
 * escaped (cut to its first characters when long), and a key much longer than any of its object's gets no suggestion.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runCli } from '../helpers/cli.ts';
import { parseConfig } from '../../engine/config/load-config.ts';
import { ConfigError } from '../../engine/config/config-error.ts';

const LISTENER = 'listeners:\n  - name: inbound\n    listen: 127.0.0.1:0\n';

test('postern check shows a key with control characters escaped, on one line of its own, and in a duplicate key\'s hint', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-odd-keys-'));
  try {
    const file = join(dir, 'postern.yaml');
    await writeFile(file, `dataDir: ${JSON.stringify(join(dir, 'data'))}\n"evil\\e]0;owned\\a\\e[2J\\rOK\\nfake line": 1\n${LISTENER}`);
    const r = await runCli(['check', '--config', file]);
    assert.equal(r.code, 1, r.stderr);
    // eslint-disable-next-line no-control-regex
    assert.doesNotMatch(r.stderr, /[\u0000-\u0009\u000b-\u001f\u007f]/, 'no control character reaches the terminal');
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.ok(lines[0]!.startsWith(`${file}:2:1: "evil\\u001b]0;owned\\u0007\\u001b[2J\\rOK\\nfake line": Unrecognized key: `), lines[0]);
    // The duplicate key's hint quotes the key as the file spells it: a raw escape character in a single-quoted key.
    const duplicate = join(dir, 'duplicate.yaml');
    await writeFile(duplicate, `dataDir: ./data\n'a\u001b[2Jb': 1\n'a\u001b[2Jb': 2\n${LISTENER}`);
    const dup = await runCli(['check', '--config', duplicate]);
    assert.equal(dup.code, 1);
    assert.equal(dup.stderr, `${duplicate}:3:1: Map keys must be unique: "a\\u001b[2Jb" is set twice in the same mapping (the other one is above): keep one\n`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a key with characters that draw nothing is shown escaped, not as the key it reads as', () => {
  // A Hangul filler and a combining grapheme joiner draw nothing, and are no control or format character: the line read
  // `ceo: Unrecognized key: "ceo"` for a key that is not ceo. As the log escapes them (engine/text/draws-nothing.ts).
  // A variation selector after a pictograph selects its presentation: it draws, and stays as written.
  const problems = (yaml: string): string => {
    try {
      parseConfig(yaml, 'postern.yaml', '/');
    } catch (err) {
      assert.ok(err instanceof ConfigError, String(err));
      return err.message;
    }
    throw new Error('parsed');
  };
  assert.equal(problems(`c\u3164eo: 1\n${LISTENER}`), 'postern.yaml:1:1: "c\\u3164eo": Unrecognized key: "c\\u3164eo"');
  assert.equal(problems(`"a\u034fb\u{e0100}": 1\n${LISTENER}`), 'postern.yaml:1:1: "a\\u034fb\\u{e0100}": Unrecognized key: "a\\u034fb\\u{e0100}"');
  assert.equal(problems(`\u2764\ufe0f: 1\n${LISTENER}`), 'postern.yaml:1:1: \u2764\ufe0f: Unrecognized key: "\u2764\ufe0f"');
});

test('postern check on long unknown keys: each line short, and done', { timeout: 600_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-odd-keys-'));
  try {
    const file = join(dir, 'postern.yaml');
    const keys = Array.from({ length: 30 }, (_, i) => `? k${i}${'x'.repeat(100_000)}\n: 1\n`).join('');
    await writeFile(file, `dataDir: ${JSON.stringify(join(dir, 'data'))}\n${keys}${LISTENER}`);
    const r = await runCli(['check', '--config', file], { timeoutMs: 550_000 });
    assert.equal(r.code, 1, r.stderr);
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 30);
    for (const line of lines) {
      assert.ok(line.length < 1000, `a line of ${line.length} characters`);
      assert.match(line, /Unrecognized key: "k\d+x+…" \(10000\d characters\)$/);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
