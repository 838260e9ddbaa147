/**
 * `postern check` on the unknown keys an administrator actually writes: a letter missing (`localDomain`), a key
 * under the wrong parent (`maxConnections` beside `tls` instead of under `limits`), a top-level key indented into a
 * listener, and two typos in one object. Each is said on its own line, at its own key, with the key it likely
 * meant. Before, the line said only `Unrecognized key: "localDomain"`, and the unknown keys of one object came as
 * one line at the first one's position (`Unrecognized keys: "maxConnections", "dataDir"`), the others' lines not given.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runCli } from '../helpers/cli.ts';

test('postern check names the key an unknown one likely meant, and every unknown key of an object', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-key-hints-'));
  try {
    const file = join(dir, 'postern.yaml');
    await writeFile(file, [
      `dataDir: ${JSON.stringify(join(dir, 'data'))}`,
      'localDomain: [example.com]',
      'listeners:',
      '  - name: inbound',
      '    listen: 127.0.0.1:0',
      '    maxConnections: 5',
      '    dataDir: ./elsewhere',
      '    limits: { maxConection: 5, maxRecipents: 10, zzzzzzzz: 1 }',
      '',
    ].join('\n'));
    const r = await runCli(['check', '--config', file]);
    assert.equal(r.code, 1, r.stderr);
    const lines = r.stderr.trim().split('\n').sort();
    assert.deepEqual(lines, [
      `${file}:2:1: localDomain: Unrecognized key: "localDomain" (did you mean "localDomains"?)`,
      `${file}:6:5: listeners[0].maxConnections: Unrecognized key: "maxConnections" ("maxConnections" is a key of listeners[].limits)`,
      `${file}:7:5: listeners[0].dataDir: Unrecognized key: "dataDir" ("dataDir" is a top-level key)`,
      `${file}:8:15: listeners[0].limits.maxConection: Unrecognized key: "maxConection" (did you mean "maxConnections"?)`,
      `${file}:8:32: listeners[0].limits.maxRecipents: Unrecognized key: "maxRecipents" (did you mean "maxRecipients"?)`,
      `${file}:8:50: listeners[0].limits.zzzzzzzz: Unrecognized key: "zzzzzzzz"`,
    ].sort());
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('postern check names the duplicate key of a mapping, and says to indent with spaces where a tab is', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-yaml-hints-'));
  try {
    const duplicate = join(dir, 'duplicate.yaml');
    await writeFile(duplicate, 'hostname: mx.example.com\ndataDir: ./data\nhostname: mail.example.com\nlisteners:\n  - name: inbound\n    listen: 127.0.0.1:0\n');
    const dup = await runCli(['check', '--config', duplicate]);
    assert.equal(dup.code, 1);
    assert.equal(dup.stderr, `${duplicate}:3:1: Map keys must be unique: "hostname" is set twice in the same mapping (the other one is above): keep one\n`);
    const tabbed = join(dir, 'tabbed.yaml');
    await writeFile(tabbed, 'listeners:\n  - name: inbound\n\tlisten: 127.0.0.1:0\n');
    const tab = await runCli(['check', '--config', tabbed]);
    assert.equal(tab.code, 1);
    assert.equal(tab.stderr, `${tabbed}:3:1: Tabs are not allowed as indentation (indent with spaces)\n`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
