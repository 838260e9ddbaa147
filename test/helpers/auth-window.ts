/**
 * AUTH failures that must all count in one authFailureWindowMs before a new connection's greeting is refused. The
 * refusal is sure only when the guesses and that greeting took less than the window from before the first guess was
 * sent (the server's first failure is no earlier, its verdict on the greeting no later): on a loaded machine sessions
 * and password checks may take longer, the first failure may have left the window, and the greeting is no verdict.
 */
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';

const REFUSED = /^421 4\.7\.0 Too many authentication failures/;

/**
 * `guesses` wrong guesses (`guess` each), then `greeting()` is the refusal. Tried again, at most three times, when
 * they took longer than `windowMs` and the greeting let the client in: once every failure has left the window
 * (`windowMs` after the last was answered), so that the next try starts from none.
 */
export async function refusedWithinWindow(windowMs: number, guesses: number, guess: () => Promise<void>, greeting: () => Promise<string>): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    const sent = performance.now();
    for (let i = 0; i < guesses; i++) await guess();
    const answered = performance.now();
    const text = await greeting();
    if (REFUSED.test(text) || performance.now() - sent < windowMs) {
      assert.match(text, REFUSED);
      return;
    }
    assert.ok(attempt < 3, `${guesses} failures and a greeting within ${windowMs} ms in one of three tries (the last: ${text})`);
    await sleep(Math.max(0, windowMs - (performance.now() - answered)));
  }
}
