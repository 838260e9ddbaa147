/**
 * Tests only: a way to hold an isolate thread mid-call without using CPU and without isolated-vm's stop ending the
 * hold — what a loaded machine does when it deschedules the thread — so that the pool's deadline path can be
 * tested deterministically (test/sandbox/descheduled.test.ts). Never set in the server: no context then gets the
 * global.
 */
import ivm from 'isolated-vm';

/** The global a test script calls: `__holdThreadForTests()` returns once the test's promise settles. */
const GLOBAL = '__holdThreadForTests';

let hold: (() => Promise<void>) | null = null;

/** Isolates built from now on give their scripts the hold (null: no longer). */
export function setThreadHoldForTests(next: (() => Promise<void>) | null): void {
  hold = next;
}

/** Install the hold into a new context, when a test set one. */
export async function installThreadHold(context: ivm.Context): Promise<void> {
  if (hold === null) return;
  const reference = new ivm.Reference(hold);
  // applySyncPromise: the isolate thread sleeps until the host's promise settles; a stop asked meanwhile waits too.
  await context.evalClosure(`globalThis.${GLOBAL} = () => { $0.applySyncPromise(undefined, []); };`, [reference]);
}
