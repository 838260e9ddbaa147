import { startCluster, ONE_WORKER } from '../test/helpers/cluster.ts';
import { SmtpTestClient } from '../test/helpers/smtp-client.ts';
const hook = process.argv[2]!;
const cond: Record<string, string> = { connect: 'true', helo: "ctx.helo === 'hang'", mailfrom: "ctx.address.address.startsWith('hang')", data: "ctx.envelope?.mailFrom?.address?.startsWith('hang') || true" };
const c = await startCluster({ config: `${ONE_WORKER}\n`, scripts: { [`${hook}.js`]: `export default function (ctx) { if (${cond[hook] ?? 'true'}) return reject('r=' + Array(2 ** 32 - 1).lastIndexOf(1)); }\n` } });
const t0 = performance.now(); const now = () => Math.round(performance.now() - t0);
async function session() {
  const out: string[] = [];
  try {
    const cl = await SmtpTestClient.connect(c.port('in'));
    out.push((await cl.read(30000)).text.slice(0, 30));
    out.push((await cl.command('EHLO hang', 30000)).text.slice(0, 30));
    out.push((await cl.command('MAIL FROM:<hang@x.test>', 30000)).text.slice(0, 30));
    out.push((await cl.command('RCPT TO:<u@example.test>', 30000)).text.slice(0, 30));
    out.push((await cl.command('DATA', 30000)).text.slice(0, 30));
    out.push((await cl.command('Subject: x\r\n\r\nbody\r\n.', 30000)).text.slice(0, 40));
    cl.destroy();
  } catch (e) { out.push('closed'); }
  return out.join(' | ');
}
for (let i = 0; i < 6; i++) {
  const r = await session();
  const st = await c.cluster();
  console.log(now(), r, 'restarts', st.processes.map((p) => p.restarts).join(','), 'fences', JSON.stringify(st.fences.map((f) => f.hook)));
  await c.waitFor('worker ready', async () => (await c.cluster()).processes.every((p) => p.ready), 60000).catch(() => 0);
}
await c.stop(); process.exit(0);
