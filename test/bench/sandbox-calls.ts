/** Micro-benchmark: CPU per mailfrom call through the sandbox (fast path), whole context vs connection facts kept per key; BATCH=n makes n calls at once. */
import { Sandbox } from '../../engine/sandbox/index.ts';
import { connectionKey } from '../../engine/smtp/script-context.ts';
import { authContext, js, recordingHost } from '../helpers/sandbox-fixtures.ts';
const sandbox = await Sandbox.create({ host: recordingHost({ senders: {} }), scripts: [js('mailfrom', `export default function (ctx) { if (lookup('senders', ctx.address.domain) === 'blocked') return reject('blocked'); }`)] });
const c = authContext().connection;
const mk = () => ({ connection: c, transaction: { id: 'x', sender: null, recipients: [] }, address: { address: 'a@b.c', localPart: 'a', domain: 'b.c', params: {} } });
// BATCH calls are made at once, as connections do within one turn of the event loop (they share one entry into the isolate).
const BATCH = Number(process.env.BATCH ?? 1);
async function run(name: string, key: (i: number) => string | undefined) {
  const N = 20000;
  const burst = (i: number) => Promise.all(Array.from({ length: BATCH }, (_, j) => sandbox.invoke('mailfrom', mk(), `c${j}`, key(i + j))));
  for (let i = 0; i < 1000; i += BATCH) await burst(i);
  const c0 = process.cpuUsage(); const t0 = performance.now();
  for (let i = 0; i < N; i += BATCH) await burst(i);
  const cu = process.cpuUsage(c0);
  console.log(name.padEnd(30), ((performance.now() - t0) * 1000 / N).toFixed(1), 'µs wall', ((cu.user + cu.system) / N).toFixed(1), 'µs cpu per call', `(${BATCH} at once)`);
}
const k = connectionKey(c);
for (let r = 0; r < 2; r++) {
  await run('no key (whole ctx)', () => undefined);
  await run('same key', () => k);
  await run('new key every call', (i) => k + i + r);
}
const st = await sandbox.stats(); console.log(st.fastPath);
sandbox.dispose();
