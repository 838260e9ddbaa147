/**
 * A refusal's decision line over one atomic pipe write (five long SMTPUTF8 recipients, a long sender and HELO, a
 * script's refusal text) is split into whole lines (engine/logging/whole-lines.ts). Each part repeated every short
 * field, `decision` included, so a tool counting refusals by that field (or fail2ban by the line's words) counted
 * the one refusal once per part. Now only the first part says what the line says; later parts carry what joins
 * them to it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { wholeLines, MAX_LINE_BYTES } from '../../engine/logging/whole-lines.ts';

test('a long decision line split into parts: every part whole and short enough, the decision said once, the pieces give the values back', () => {
  const long = (c: string): string => `${'ü'.repeat(120)}${c.repeat(100)}@${'例'.repeat(40)}.example`;
  const to = ['a', 'b', 'c', 'd', 'e'].map(long).join(',');
  const from = long('s');
  const msg = `q1w2e3: reject: RCPT from unknown[192.0.2.1]: 550 5.7.1 ${'no '.repeat(60)}; from=<${from}> to=<${to}> proto=ESMTP helo=<${'h'.repeat(250)}>`;
  const record = {
    level: 30, time: 1, pid: 7, hostname: 'mx', component: 'smtp', cid: 'c1', id: 'q1w2e3', decision: 'reject', stage: 'DATA',
    code: 550, enhanced: '5.7.1', reason: 'script data: reject', from, to, nrcpt: 5, helo: 'h'.repeat(250), msg,
  };
  const line = `${JSON.stringify(record)}\n`;
  assert.ok(Buffer.byteLength(line) > MAX_LINE_BYTES, 'the case is over one pipe write');
  const lines = wholeLines(line).split('\n').filter(Boolean);
  assert.ok(lines.length > 1);
  for (const l of lines) assert.ok(Buffer.byteLength(l) + 1 <= MAX_LINE_BYTES, `a part of ${Buffer.byteLength(l) + 1} bytes`);
  const parts = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.equal(parts.filter((p) => p.decision !== undefined).length, 1, 'the refusal counted once');
  assert.equal(parts[0]!.decision, 'reject');
  assert.equal(parts[0]!.part, `1/${parts.length}`);
  for (const p of parts) {
    for (const key of ['level', 'time', 'pid', 'hostname', 'component', 'cid', 'id']) assert.equal(p[key], (record as Record<string, unknown>)[key], `${key} on part ${p.part}`);
  }
  // Every field comes back: short ones from the first part, long ones from their pieces in order.
  const back: Record<string, unknown> = {};
  for (const p of parts) {
    for (const [k, v] of Object.entries(p)) {
      if (k === 'part') continue;
      if (k in back && typeof v === 'string' && !['level', 'time', 'pid', 'hostname', 'component', 'cid', 'id'].includes(k)) back[k] = `${back[k] as string}${v}`;
      else back[k] ??= v;
    }
  }
  assert.deepEqual(back, record);
});

test('a line within one pipe write is left as it is', () => {
  const line = `${JSON.stringify({ level: 30, decision: 'reject', msg: 'short' })}\n`;
  assert.equal(wholeLines(line), line);
});
