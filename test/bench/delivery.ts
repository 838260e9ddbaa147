/**
 * `npm run bench:delivery`: end-to-end messages per second from Postern's inbound listener through the
 * spool and the queue runner to a discarding next hop, over STARTTLS with a client certificate both ways:
 *   (d) scripts on every inbound context + a predelivery script choosing the outbound client certificate;
 *   (e) no scripts, the same certificate as the configured default.
 * Server, next hop and load generator run in separate processes. BENCH_MESSAGES sets the count (default 3000).
 */
import { fork } from 'node:child_process';
import { mkdtemp, mkdir, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { makeTestPki } from '../helpers/pki.ts';
import { BENCH_SCRIPTS, benchConfig, benchPort } from './bench-config.ts';
import { cpuSeconds, load } from './measure.ts';

const here = import.meta.dirname;
const pki = await makeTestPki();
const client = pki.clients.ecdsa;
const work = await mkdtemp(join(tmpdir(), 'postern-bench-delivery-'));
const messages = Number(process.env.BENCH_MESSAGES ?? 3000);

const INBOUND_SCRIPTS: Record<string, string> = {
  ...BENCH_SCRIPTS,
  'predelivery.ts': `
const CERTS = { 'example.com': 'bench', 'example.net': 'other' };
export default function (ctx) {
  const domain = ctx.message.sender.slice(ctx.message.sender.lastIndexOf('@') + 1);
  const cert = CERTS[domain];
  if (!cert) return defer('no certificate for ' + domain);
  return deliver({ tls: { mode: 'encrypt', clientCertificate: cert } });
}`,
};

function child(script: string, arg: unknown): Promise<ChildProcess> {
  const c = fork(join(here, script), [JSON.stringify(arg)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  return new Promise((resolve, reject) => {
    c.once('message', () => resolve(c));
    c.once('exit', (code) => reject(new Error(`${script} exited ${code}`)));
  });
}

function sinkCount(sink: ChildProcess): Promise<{ messages: number; withCertificate: number }> {
  return new Promise((resolve) => {
    sink.once('message', (m) => resolve(m as { messages: number; withCertificate: number }));
    sink.send('count');
  });
}

async function until(sink: ChildProcess, target: number, timeoutMs: number): Promise<{ messages: number; withCertificate: number }> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const c = await sinkCount(sink);
    if (c.messages >= target) return c;
    if (Date.now() > deadline) throw new Error(`next hop got ${c.messages} of ${target} messages`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

interface Row { name: string; inbound: number; endToEnd: number; drainMs: number; cpuUs: number; withCertificate: number }
const rows: Row[] = [];

for (const [name, withScripts] of [['(d) postern + scripts, predelivery picks cert', true], ['(e) postern, no scripts', false]] as const) {
  const dir = join(work, withScripts ? 'd' : 'e');
  await mkdir(join(dir, 'scripts'), { recursive: true });
  if (withScripts) for (const [f, text] of Object.entries(INBOUND_SCRIPTS)) await writeFile(join(dir, 'scripts', f), text);
  await writeFile(join(dir, 'senders'), 'example.org blocked\n');
  const sinkPort = benchPort();
  const sink = await child('delivery-sink.ts', { port: sinkPort, cert: pki.server.cert, key: pki.server.key, ca: pki.ca.cert });
  const port = benchPort();
  const delivery = `delivery:
  enabled: true
  route: { smarthost: { host: 127.0.0.1, port: ${sinkPort} } }
  tls: { mode: encrypt${withScripts ? '' : ', clientCertificate: bench'} }
  clientCertificates:
    bench: { cert: ${client.cert}, key: ${client.key} }
    other: { cert: ${pki.clients.bob.cert}, key: ${pki.clients.bob.key} }
`;
  const configText = benchConfig(dir, port, pki).replace('delivery: { enabled: false }\n', delivery);
  if (!configText.includes('enabled: true')) throw new Error('bench config layout changed');
  const server = await child('postern-server.ts', { configText, baseDir: dir });
  // Warm-up: JIT, isolates, TLS sessions, pooled connections.
  await load(pki, port, 100, 400, true);
  await until(sink, 400, 60_000);
  const before = await sinkCount(sink);
  const cpu0 = await cpuSeconds(server.pid!);
  const t0 = performance.now();
  const inbound = await load(pki, port, 100, messages, true);
  const t1 = performance.now();
  const after = await until(sink, before.messages + messages, 120_000);
  const t2 = performance.now();
  const cpuUs = ((await cpuSeconds(server.pid!)) - cpu0) / messages * 1e6;
  rows.push({
    name, inbound: inbound.rate, endToEnd: messages / ((t2 - t0) / 1000), drainMs: t2 - t1, cpuUs,
    withCertificate: (after.withCertificate - before.withCertificate) / messages,
  });
  server.kill('SIGKILL');
  sink.kill('SIGKILL');
}
await rm(work, { recursive: true, force: true });

console.log(`\n${messages} messages, inbound STARTTLS + client certificate (20 clients, 100/conn) → spool → queue → STARTTLS + client certificate → discarding next hop, loopback\n`);
console.log('server                                        | inbound msg/s | end-to-end msg/s | drain after load | server CPU µs/msg | with client cert');
console.log('----------------------------------------------|---------------|------------------|------------------|-------------------|-----------------');
for (const r of rows) {
  console.log(`${r.name.padEnd(46)}| ${r.inbound.toFixed(0).padStart(13)} | ${r.endToEnd.toFixed(0).padStart(16)} | ${(r.drainMs.toFixed(0) + ' ms').padStart(16)} | ${r.cpuUs.toFixed(0).padStart(17)} | ${(r.withCertificate * 100).toFixed(0).padStart(15)}%`);
}
const [d, e] = rows;
console.log(`\nwith scripts / without: end-to-end ${(d!.endToEnd / e!.endToEnd).toFixed(2)}×, server CPU per message ${(d!.cpuUs / e!.cpuUs).toFixed(2)}×`);
