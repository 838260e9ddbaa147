import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startCluster, ONE_WORKER } from '../test/helpers/cluster.ts';
import { SmtpTestClient } from '../test/helpers/smtp-client.ts';
const stuck = process.argv[2] ?? 'Array(2 ** 32 - 1).lastIndexOf(1)';
const c = await startCluster({ config: `${ONE_WORKER}${process.argv[3] ?? ''}\n`, scripts: { 'rcptto.js': `export default function (ctx) { return reject('v1', { code: 550 }); }\n` } });
const t0 = performance.now(); const now = () => Math.round(performance.now() - t0);
async function probe() {
  const s = performance.now();
  try {
    const cl = await SmtpTestClient.connect(c.port('in'));
    await cl.read(30000); await cl.command('EHLO o', 30000); await cl.command('MAIL FROM:<o@x.test>', 30000);
    const r = await cl.command('RCPT TO:<nobody@example.test>', 30000); cl.destroy();
    return `${r.text.slice(0, 40)} (${Math.round(performance.now() - s)}ms)`;
  } catch (e) { return 'closed ' + Math.round(performance.now() - s); }
}
console.log(now(), await probe());
await writeFile(join(c.dir, 'scripts', 'rcptto.js'), `// a comment\nconst list = [];\nconst x = ${stuck};\nexport default function (ctx) { return reject('v2', { code: 550 }); }\n`);
let stop = false;
const mon = (async () => { while (!stop) { const p = await probe(); const st = await c.cluster(); console.log(now(), p, 'restarts', st.processes.map((x) => x.restarts).join(','), 'fences', st.fences.length, 'lastError', JSON.stringify(st.reload.lastError)?.slice(0, 160)); await new Promise((r) => setTimeout(r, 700)); } })();
await new Promise((r) => setTimeout(r, Number(process.env.DUR ?? 30000)));
await writeFile(join(c.dir, 'scripts', 'rcptto.js'), `export default function (ctx) { return reject('v3', { code: 550 }); }\n`);
await new Promise((r) => setTimeout(r, 8000));
stop = true; await mon;
console.log(c.logs.filter((l) => Number(l.level) >= 40).map((l) => `${String(l.time).slice(11)} ${l.level} ${String(l.msg).slice(0, 200)}`).slice(0, 40).join('\n'));
await c.stop(); process.exit(0);
