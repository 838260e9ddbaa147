/**
 * Run by deadlines.test.ts in a child process: a script stuck in a V8 builtin that never checks for
 * interrupts (Array(2**32-1).lastIndexOf(1)) parks an isolated-vm thread for good, and such a process can
 * no longer exit normally (process.exit() waits for that thread). The child prints what it saw as one
 * JSON line, then ends itself with SIGKILL — as a worker told onUnrecoverable() would.
 */
import { Sandbox, ScriptErrors, ScriptFailure, abandonedRunningScripts, onMustRecycle, onUnrecoverable } from '../../../engine/sandbox/index.ts';
import { js, recordingHost } from '../../helpers/sandbox-fixtures.ts';
import { MemoryCounterStore } from '../../../engine/store/index.ts';
import { until } from '../../helpers/wait.ts';

const STUCK = 'Array(2 ** 32 - 1).lastIndexOf(1)';
const scenario = process.argv[2];
const out: Record<string, unknown> = { scenario };
const unrecoverable = new Promise<string>((resolve) => onUnrecoverable(resolve));

const outcome = (p: Promise<unknown>): Promise<unknown> => p.then(
  (value) => ({ value }),
  (e: unknown) => (e instanceof ScriptFailure ? { failure: e.kind, message: e.message } : { error: String(e) }),
);

if (scenario === 'call') {
  const host = recordingHost();
  const sandbox = await Sandbox.create({
    host, isolates: 2, timeoutMs: 1000, fastPathMs: 0, // 1 s: the ordinary calls' deadlines hold on a loaded machine
    scripts: [js('rcptto', `export default function (ctx) { if (ctx.stuck) ${STUCK}; return reject('no ' + ctx.n); }`)],
  });
  const stuck1 = outcome(sandbox.invoke('rcptto', { stuck: true }, 's1'));
  out.during = await outcome(sandbox.invoke('rcptto', { n: 1 }, 'c1'));
  out.stuck1 = await stuck1;
  out.stuck2 = await outcome(sandbox.invoke('rcptto', { stuck: true }, 's2'));
  out.after = await Promise.all([2, 3, 4, 5, 6, 7].map((n) => outcome(sandbox.invoke('rcptto', { n }, `c${n}`))));
  // The second stuck isolate is abandoned once shown stuck (200 ms of CPU time, or 5 s, after its call's deadline:
  // sandbox.ts, Overdue), which the calls above may well outrun on a loaded machine: read once it has been.
  await until('the second stuck isolate abandoned', async () => (await sandbox.stats()).abandoned >= 2, { timeoutMs: 30_000 }).catch(() => undefined);
  const stats = await sandbox.stats();
  out.abandoned = stats.abandoned;
  out.timeouts = stats.failures.timeout;
  out.unrecoverable = await unrecoverable;
  out.fatalLogged = host.logs.some((l) => l.level === 'fatal');
  out.afterUnrecoverable = await outcome(sandbox.invoke('rcptto', { n: 8 }, 'c8'));
} else if (scenario === 'wait') {
  // One isolate: an ordinary call waits behind the stuck one, and must not wait past its own deadline.
  const sandbox = await Sandbox.create({
    host: recordingHost(), isolates: 1, timeoutMs: 1000, fastPathMs: 0,
    scripts: [js('rcptto', `export default function (ctx) { if (ctx.stuck) ${STUCK}; return reject('no ' + ctx.n); }`)],
  });
  const stuck = outcome(sandbox.invoke('rcptto', { stuck: true }, 's1'));
  out.waiting = await outcome(sandbox.invoke('rcptto', { n: 1 }, 'c1'));
  out.stuck = await stuck;
  // The stuck isolate is replaced once shown stuck (its thread's CPU, or 5 s), not at the deadline: on a loaded
  // machine that can come after a call made at once had waited its own deadline out.
  await until('the stuck isolate abandoned and replaced', async () => {
    const stats = await sandbox.stats();
    return stats.abandoned >= 1 && stats.isolates[0]?.state === 'idle';
  }, { timeoutMs: 30_000 }).catch(() => undefined);
  out.after = await outcome(sandbox.invoke('rcptto', { n: 2 }, 'c2'));
} else if (scenario === 'once') {
  // A fast-path attempt that counted, stopped in its loop and run again on an isolate thread, where it gets
  // stuck and is abandoned at its deadline: the count stays one per call, whatever runs afterwards. The stuck
  // step comes only on a call's attempt after its first (one isolate: a module-level record counts each call's attempts),
  // so it never runs on the event-loop thread (where it would hold the process); calls are made until one is
  // abandoned (the first, unless the machine's load kept the fast path from stopping it).
  const store = new MemoryCounterStore();
  const sandbox = await Sandbox.create({
    host: { ...recordingHost(), store }, isolates: 1, timeoutMs: 5000, fastPathMs: 1,
    scripts: [js('rcptto', `const tries = {};
    export default async function (ctx) {
      const counted = rate('k', 1000, 60);
      tries[ctx.n] = (tries[ctx.n] ?? 0) + 1;
      if (ctx.stuck && tries[ctx.n] > 1) ${STUCK};
      let x = 0; for (let i = 0; i < 2e7; i++) x += i;
      await counted;
      await counter('after').add(1, 60);
      return reject('no ' + ctx.n);
    }`)],
  });
  let calls = 0;
  for (let n = 1; n <= 5 && !out.stuck; n++) {
    const r = await outcome(sandbox.invoke('rcptto', { stuck: true, n }, `s${n}`)) as { failure?: string };
    calls++;
    if (r.failure) out.stuck = r;
  }
  out.countAfterStuck = await store.get('script:rate:k');
  out.next = await outcome(sandbox.invoke('rcptto', { n: 99 }, 'c99'));
  out.calls = calls + 1;
  out.count = await store.get('script:rate:k');
  out.after = await store.get('script:counter:after');
  const stats = await sandbox.stats();
  out.abandoned = stats.abandoned;
} else if (scenario === 'oom') {
  // V8 runs out of memory outside the heap limit (a Map grown to 2 ** 24 entries): isolated-vm reports it and parks
  // the call's thread, long before the call's deadline. A worker acts on the signal at once (cluster/child.ts):
  // what it blames then is what the supervisor fences.
  const blamed = new Promise<string[]>((resolve) => onMustRecycle(() => resolve(abandonedRunningScripts().map((s) => `${s.hook}:${s.file}`))));
  const sandbox = await Sandbox.create({
    host: recordingHost(), isolates: 2, timeoutMs: 30_000, fastPathMs: 0,
    scripts: [js('rcptto', 'export default function (ctx) { const m = new Map(); for (let i = 0; i < 2 ** 24; i++) m.set(i, i); }'),
      js('helo', 'export default () => accept();')],
  });
  // The isolate's heap limit may stop the Map first (an ordinary memory failure, where the collector's timing
  // lets it): on a loaded machine it did in 2 of 6 runs. Such a call is tried again, in a new isolate.
  let call: Promise<unknown> | undefined;
  for (let attempt = 1; attempt <= 20 && !out.unrecoverable; attempt++) {
    call = outcome(sandbox.invoke('rcptto', {}, `s${attempt}`));
    const first = await Promise.race([unrecoverable.then((u) => ({ u })), call.then(() => null)]);
    if (first) out.unrecoverable = first.u;
    out.attempts = attempt;
  }
  out.blamed = await blamed;
  out.settled = await Promise.race([call!.then(() => true), new Promise((resolve) => setTimeout(resolve, 100, false))]);
} else if (scenario === 'retired') {
  // A reload's old generation is disposed once its last session ends: that can be right after a call of it failed at
  // its deadline with its isolate still running (overdue, not yet shown stuck). The stuck thread parks for good, the
  // process must be replaced, and what it blames then (the supervisor's fence) must name the call's script.
  const blamed = new Promise<string[]>((resolve) => onMustRecycle(() => resolve(abandonedRunningScripts().map((s) => `${s.hook}:${s.file}`))));
  const sandbox = await Sandbox.create({
    host: recordingHost(), isolates: 1, timeoutMs: 1000, fastPathMs: 0,
    scripts: [js('rcptto', `export default function () { ${STUCK}; return accept(); }`)],
  });
  out.stuck = await outcome(sandbox.invoke('rcptto', {}, 's1'));
  await sandbox.dispose();
  out.unrecoverable = await unrecoverable;
  out.blamed = await blamed;
} else if (scenario === 'load') {
  try {
    await Sandbox.create({
      host: recordingHost(), timeoutMs: 100,
      scripts: [js('rcptto', 'export default () => accept();'), js('helo', `const n = ${STUCK};\nexport default () => accept();`)],
    });
    out.created = true;
  } catch (e) {
    out.loadError = e instanceof ScriptErrors ? e.errors.map((x) => ({ file: x.file, line: x.line, message: x.message })) : String(e);
  }
}
process.stdout.write(`${JSON.stringify(out)}\n`, () => process.kill(process.pid, 'SIGKILL'));
