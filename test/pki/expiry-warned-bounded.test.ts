/**
 * The expiry watch over a long run: it remembers when it last warned about each certificate (to warn once a day),
 * and that memory must not outlive the certificate's place in the warnings. It kept every certificate it had ever
 * warned about for the process's life: a fleet whose devices are renewed (each expiring certificate seen, warned
 * about, then replaced and never seen again) grew it by every certificate the fleet ever had.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ExpiryWatch, SightingRecorder } from '../../engine/pki/index.ts';
import type { Logger } from '../../engine/logging/logger.ts';

const DAY = 86400_000;
// A watch that keeps what it warned about remembers ROUNDS × PER_ROUND at the end, one that forgets PER_ROUND at most:
// five rounds tell them apart as 25 did (25 × 2000 certificates spent five seconds of CPU on the same difference).
const ROUNDS = 5;
const PER_ROUND = 400;

test(`${ROUNDS * PER_ROUND} certificates warned about over ${ROUNDS} renewals of a fleet: the watch remembers only those still warned about`, { timeout: 300_000 }, async () => {
  const dataDir = await mkdtemp(join(tmpdir(), 'postern-warned-'));
  try {
    let warnings = 0;
    const logger = { warn: () => { warnings++; } } as unknown as Logger;
    const watch = new ExpiryWatch({ dataDir, logger, warnDays: () => 14, names: async () => ({ byFingerprint: new Map(), byPin: new Map() }) });
    const recorder = new SightingRecorder(dataDir, 'single', { delayMs: 1 });
    const wall0 = Date.now();
    const elapsed0 = performance.now();
    for (let round = 0; round < ROUNDS; round++) {
      // Each round the fleet's certificates (a new set: the last round's were renewed) are seen, 3 days from expiry,
      // and a check warns about each; 31 days later the next round's are seen, and the last round's are not recent.
      const wall = wall0 + round * 31 * DAY;
      const elapsed = elapsed0 + round * 31 * DAY;
      for (let i = 0; i < PER_ROUND; i++) {
        const n = round * PER_ROUND + i;
        recorder.seen({
          fingerprintSha256: n.toString(16).padStart(64, '0'), pinSha256: `pin${n}`, serial: n.toString(16), subject: `CN=device${n}`,
          issuer: 'CN=ca', notAfter: new Date(wall + 3 * DAY).toISOString(), identity: `user${i}@example.com`, verdict: 'verified',
          listener: 'submission', lastConnection: `c${n}`,
        }, wall, elapsed);
      }
      await recorder.flush();
      const before = warnings;
      await watch.check(wall, elapsed);
      assert.equal(warnings - before, PER_ROUND, `round ${round}: each of the fleet's certificates is warned about`);
    }
    await recorder.close();
    assert.ok(watch.remembered <= PER_ROUND, `remembers ${watch.remembered} certificates warned about, of which ${PER_ROUND} are still recent`);
  } finally {
    await rm(dataDir, { recursive: true, force: true });
  }
});
