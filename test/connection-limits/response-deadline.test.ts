// The product's response deadline: tests of whole servers shorten it (POSTERN_RESPONSE_DEADLINE_MS, as
// test/accounts/account-page-http.test.ts does, account-page-unread-answers) rather than wait it out, so its value is checked here.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RESPONSE_DEADLINE_MS, defaultResponseDeadlineMs } from '../../engine/connection-limits/connection-room.ts';

test('an answer has 30 s to leave unless a test shortens it', () => {
  const saved = process.env.POSTERN_RESPONSE_DEADLINE_MS;
  try {
    delete process.env.POSTERN_RESPONSE_DEADLINE_MS;
    assert.equal(RESPONSE_DEADLINE_MS, 30_000);
    assert.equal(defaultResponseDeadlineMs(), 30_000);
    process.env.POSTERN_RESPONSE_DEADLINE_MS = '';
    assert.equal(defaultResponseDeadlineMs(), 30_000, 'an empty setting is no setting');
    process.env.POSTERN_RESPONSE_DEADLINE_MS = '2500';
    assert.equal(defaultResponseDeadlineMs(), 2500);
  } finally {
    if (saved === undefined) delete process.env.POSTERN_RESPONSE_DEADLINE_MS; else process.env.POSTERN_RESPONSE_DEADLINE_MS = saved;
  }
});
