/**
 * A child of `postern serve` takes its supervisor's parse of postern.yaml when the file still holds the text parsed
 * (engine/config/handed-parse.ts), and parses the file itself otherwise: what it runs is what the file says, as when
 * each child parsed it. The parse handed is what a parse gives, key positions included.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfigFile, parseConfig } from '../../engine/config/load-config.ts';
import { loadStartConfig } from '../../engine/config/start-config.ts';
import { parseToHand } from '../../engine/config/handed-parse.ts';

const TEXT = 'hostname: mx.example.test\nlisteners:\n  - name: in\n    listen: 127.0.0.1:2525\n    scripts: ./in-scripts\n';

function folder(): { dir: string; file: string; [Symbol.dispose](): void } {
  const dir = mkdtempSync(join(tmpdir(), 'postern-handed-parse-'));
  const file = join(dir, 'postern.yaml');
  writeFileSync(file, TEXT);
  return { dir, file, [Symbol.dispose]: () => rmSync(dir, { recursive: true, force: true }) };
}

test('the same text: the handed parse, equal to a parse of the file, key positions included', () => {
  using f = folder();
  const handed = parseToHand(loadConfigFile(f.file))!;
  assert.ok(handed, 'a parse of a file is handed');
  // What the child reads: the handed parse, through JSON as the pipe carries it.
  const taken = loadStartConfig({ configPath: f.file, regularFileOnly: true, handed: JSON.parse(JSON.stringify(handed)) });
  const parsed = loadConfigFile(f.file);
  assert.deepEqual(taken.config, parsed.config);
  assert.deepEqual([taken.file, taken.baseDir, taken.text, taken.scriptFolders], [parsed.file, parsed.baseDir, parsed.text, parsed.scriptFolders]);
  assert.deepEqual(taken.locate!(['listeners', 0, 'scripts']), parsed.locate!(['listeners', 0, 'scripts']));
  assert.deepEqual(taken.locate!(['listeners', 0, 'scripts']), { line: 5, column: 14 });
  // Each start has a configuration of its own (the child's keepRunning() writes into it).
  loadStartConfig({ configPath: f.file, regularFileOnly: true, handed }).config.dataDir = '/elsewhere';
  assert.notEqual(loadStartConfig({ configPath: f.file, regularFileOnly: true, handed }).config.dataDir, '/elsewhere');
});

test('the file changed since the supervisor parsed it: the child parses what the file says now', () => {
  using f = folder();
  const handed = parseToHand(loadConfigFile(f.file))!;
  writeFileSync(f.file, TEXT.replace('mx.example.test', 'mx2.example.test'));
  const taken = loadStartConfig({ configPath: f.file, regularFileOnly: true, handed });
  assert.equal(taken.config.hostname, 'mx2.example.test');
  // An error the file has now is the child's error, as before.
  writeFileSync(f.file, TEXT.replace('listen: 127.0.0.1:2525', 'listen: nowhere'));
  assert.throws(() => loadStartConfig({ configPath: f.file, regularFileOnly: true, handed }), /postern\.yaml:4:13: listeners\[0\]\.listen/);
  // A parse of another file, or another folder, is not taken either.
  using g = folder();
  assert.equal(loadStartConfig({ configPath: g.file, regularFileOnly: true, handed: { ...handed, text: TEXT } }).file, g.file);
});

test('only a file\'s parse is handed, and only one that comes through JSON unchanged', () => {
  assert.equal(parseToHand(parseConfig(TEXT, '(inline)', '/etc')), undefined, 'a text given inline');
  using f = folder();
  const loaded = loadConfigFile(f.file);
  (loaded.config as unknown as { odd: unknown }).odd = new Map();
  assert.equal(parseToHand(loaded), undefined, 'a value JSON does not carry');
});
