// Session ids (logs' cid, scripts' connection.id, `postern pins learn <cid>`): smtp-server's form, drawn from a
// random pool that is refilled, never repeated.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { newSessionId } from '../../engine/smtp/session-id.ts';

test('session ids are 16 base-32 digits (80 random bits), distinct across pool refills', () => {
  const ids = Array.from({ length: 2000 }, () => newSessionId()); // the pool holds 256: several refills
  for (const id of ids) assert.match(id, /^[0-9a-v]{16}$/);
  assert.equal(new Set(ids).size, ids.length);
  // Every digit position varies (no fixed prefix or counter): each takes many values over 2000 ids.
  for (let i = 0; i < 16; i++) assert.ok(new Set(ids.map((id) => id[i])).size > 16, `position ${i} varies`);
});
