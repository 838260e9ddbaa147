// docs/scripts.md's verdict tables name every option a verdict has: the builders table
// (`{ verdict: "accept", username?, … }`) and the options table (one row per option and builder). They are
// what a script author reads; the one verdict check (engine/policy/verdict.ts) is what the server takes. An
// option the check takes but the tables leave out (accept's `hold` was) is a feature nobody finds, and one the
// tables show but the check refuses fails closed on the wire.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { VERDICT_OPTIONS } from '../../engine/policy/verdict.ts';

const DOC = readFileSync(new URL('../../docs/scripts.md', import.meta.url), 'utf8');
const section = DOC.slice(DOC.indexOf('\n## Verdicts'), DOC.indexOf('\n## ', DOC.indexOf('\n## Verdicts') + 5));

test('the builders table of docs/scripts.md lists exactly the options each verdict takes', () => {
  const shown = new Map<string, Set<string>>();
  for (const m of section.matchAll(/^\| `\w+\([^`]*\)` \| `\{ verdict: "(\w+)"((?:, \w+\?)*) \}` \|/gm)) {
    shown.set(m[1]!, new Set(m[2]!.split(',').map((s) => s.trim().replace(/\?$/, '')).filter(Boolean)));
  }
  assert.ok(shown.size === Object.keys(VERDICT_OPTIONS).length, `found the rows of ${[...shown.keys()].join(', ')}`);
  for (const [verdict, options] of Object.entries(VERDICT_OPTIONS)) {
    assert.deepEqual([...shown.get(verdict) ?? []].sort(), [...options].filter((o) => o !== 'verdict').sort(), `${verdict}: the builders table`);
  }
});

test('the options table of docs/scripts.md has a row for every option of every verdict', () => {
  const table = section.slice(section.indexOf('| option | builder |'));
  const rows = table.slice(0, table.indexOf('\n\n')).split('\n').slice(2);
  const documented = new Set<string>();
  for (const row of rows) {
    const [, names = '', builders = ''] = row.split('|').map((c) => c.trim());
    for (const name of names.matchAll(/`(\w+)/g)) for (const b of builders.split(/\s*\/\s*/)) documented.add(`${b} ${name[1]}`);
  }
  // A builder's positional parameters (`reject(text?, options?)`) are documented by its row of the builders table.
  for (const m of section.matchAll(/^\| `(\w+)\(([^`]*)\)` \|/gm)) {
    for (const p of m[2]!.split(',').map((x) => x.trim().replace(/\?$/, ''))) if (p !== 'options') documented.add(`${m[1]} ${p}`);
  }
  for (const [verdict, options] of Object.entries(VERDICT_OPTIONS)) {
    for (const option of options) if (option !== 'verdict') assert.ok(documented.has(`${verdict} ${option}`), `no row for ${verdict}'s ${option} in the options table`);
  }
});
