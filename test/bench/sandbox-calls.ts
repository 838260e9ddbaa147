/** Micro-benchmark: CPU per mailfrom call through the sandbox (fast path), whole context vs connection facts kept per key. */
import { Sandbox } from '../../engine/sandbox/index.ts';
import { connectionKey } from '../../engine/smtp/script-context.ts';
import { authContext, js, recordingHost } from '../sandbox/helpers/sandbox-fixtures.ts';
const sandbox = await Sandbox.create({ host: recordingHost({ senders: {} }), scripts: [js('mailfrom', `export default function (ctx) { if (lookup('senders', ctx.address.domain) === 'blocked') return reject('blocked'); }`)] });
const c = authContext().connection;
const mk = () => ({ connection: c, transaction: { id: 'x', sender: null, recipients: [] }, address: { address: 'a@b.c', localPart: 'a', domain: 'b.c', params: {} } });
async function run(name: string, key: (i: number) => string | undefined) {
  const N = 20000;
  for (let i = 0; i < 1000; i++) await sandbox.invoke('mailfrom', mk(), 'c1', key(i));
  const c0 = process.cpuUsage(); const t0 = performance.now();
  for (let i = 0; i < N; i++) await sandbox.invoke('mailfrom', mk(), 'c1', key(i));
  const cu = process.cpuUsage(c0);
  console.log(name.padEnd(30), ((performance.now() - t0) * 1000 / N).toFixed(1), 'µs wall', ((cu.user + cu.system) / N).toFixed(1), 'µs cpu');
}
const k = connectionKey(c);
for (let r = 0; r < 2; r++) {
  await run('no key (whole ctx)', () => undefined);
  await run('same key', () => k);
  await run('new key every call', (i) => k + i + r);
}
const st = await sandbox.stats(); console.log(st.fastPath);
sandbox.dispose();
