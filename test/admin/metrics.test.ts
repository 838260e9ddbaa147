// The admin listener as Prometheus and a load balancer use it, scraped with curl over HTTP: counters move by
// exactly what a run with STARTTLS, client certificates, scripts, a refusal, a script failure and a
// delivery did; /healthz and /readyz answer (that every metric is documented: test/metrics/metrics.test.ts).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import net from 'node:net';
import { once } from 'node:events';
import { closed, until } from '../helpers/wait.ts';
import { scrapeMetrics } from '../helpers/metrics-scrape.ts';
import { ADMIN_MADE_ROOM, assertAdminCapMakesRoom } from '../helpers/http-per-address.ts';
import { makeTestPki, clientTlsOptions, type TestPki } from '../helpers/pki.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { startSink, type Sink } from '../helpers/sink.ts';
import { startDeliveryServer, type DeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, smarthostDelivery, testListener, testServerTls } from '../helpers/config.ts';
import { needs } from '../helpers/example.ts';

const curl = promisify(execFile);
let pki: TestPki;
let sink: Sink;
let s: DeliveryServer;

before(async () => {
  pki = await makeTestPki();
  sink = await startSink();
  s = await startDeliveryServer({
    config: configYaml({
      hostname: 'postern.test',
      localDomains: ['example.test'],
      admin: { listen: '127.0.0.1:0' },
      listeners: [testListener('mx', { tls: testServerTls(pki, { clientCertificates: 'request' }) }), testListener('submission')],
      delivery: smarthostDelivery(sink.port),
    }),
    scripts: {
      'rcptto.ts': `export default function rcptto(ctx: RcptToContext): Verdict | void {
  if (ctx.address.address.startsWith('nobody@')) return reject('No such user here');
  if (ctx.address.address.startsWith('broken@')) throw new Error('script bug');
}`,
    },
  });
});
after(async () => {
  await s?.stop();
  await sink?.close();
});

const scrape = (): Promise<Map<string, number>> => scrapeMetrics(s.admin!.address.port);

function delta(before: Map<string, number>, after: Map<string, number>, sample: string): number {
  return (after.get(sample) ?? 0) - (before.get(sample) ?? 0);
}

test('counters move by what one TLS session with a client certificate, scripts and a delivery did', async () => {
  const start = await scrape();
  const c = await SmtpTestClient.connect(s.port('mx'));
  await c.hello({ starttls: await clientTlsOptions(pki, 'alice') });
  assert.equal((await c.command('MAIL FROM:<alice@example.net>')).code, 250);
  assert.equal((await c.command('RCPT TO:<nobody@example.test>')).code, 550);
  assert.equal((await c.command('RCPT TO:<broken@example.test>')).code, 451);
  assert.equal((await c.command('RCPT TO:<someone@example.test>')).code, 250);
  assert.equal((await c.command('DATA')).code, 354);
  assert.equal((await c.command('Subject: metrics\r\n\r\nhello\r\n.')).code, 250);
  await c.quit();
  await sink.waitFor(1);
  await s.nextAttempt((e) => e.removed, { past: true });
  const end = await scrape();

  assert.equal(delta(start, end, 'postern_smtp_connections_total{listener="mx"}'), 1);
  assert.equal(delta(start, end, 'postern_tls_handshakes_total{listener="mx",protocol="TLSv1.3",client_certificate="verified"}'), 1);
  assert.equal(delta(start, end, 'postern_script_verdicts_total{listener="mx",hook="rcptto",verdict="reject",generation="' + s.runtime.generation.serial + '",source="smtp"}'), 1);
  assert.equal(delta(start, end, 'postern_script_verdicts_total{listener="mx",hook="rcptto",verdict="failed",generation="' + s.runtime.generation.serial + '",source="smtp"}'), 1);
  assert.equal(delta(start, end, 'postern_script_failures_total{hook="rcptto",kind="error",source="smtp"}'), 1);
  assert.equal(delta(start, end, 'postern_script_call_duration_seconds_count{hook="rcptto"}'), 3);
  assert.equal(delta(start, end, 'postern_messages_accepted_total{listener="mx"}'), 1);
  assert.ok(delta(start, end, 'postern_message_bytes_total') > 20);
  assert.equal(delta(start, end, 'postern_spool_commit_duration_seconds_count'), 1);
  assert.equal(delta(start, end, `postern_deliveries_total{result="sent",next_hop="127.0.0.1:${sink.port}"}`), 1,
    [...end.keys()].filter((k) => k.startsWith('postern_deliveries')).join('\n'));
  assert.equal(end.get('postern_queue_messages'), 0);
  assert.equal(end.get('postern_config_generation'), s.runtime.generation.serial);

  // The same run in the log: one line for the accepted message, one for its delivery (Postfix-style).
  const accepted = s.logs.find((l) => String(l.msg).includes('(message spooled)'))!;
  assert.deepEqual(accepted.to, ['someone@example.test']);
  assert.match(String(accepted.certificate), /^[0-9a-f]{64}$/, 'the client certificate\'s SHA-256');
  assert.match(String(accepted.msg), /^\w+: accepted from=<alice@example\.net>, size=\d+, nrcpt=1, client=[\w.-]+\[127\.0\.0\.1\] \(message spooled\)$/);
  const sent = s.logs.find((l) => l.status === 'sent' && l.id === accepted.id)!;
  assert.equal(sent.attempt, 1);
  assert.equal(typeof sent.delay, 'number');
  assert.match(String(sent.msg), new RegExp(`^${accepted.id}: to=<someone@example\\.test>, relay=127\\.0\\.0\\.1\\[127\\.0\\.0\\.1\\]:${sink.port}, delay=[\\d.]+, attempt=1, tls=none, client_certificate=none, status=sent \\(250 `));
});

test('a port-25 listener\'s refusals and verdicts are told apart from a submission listener\'s (the listener label)', async () => {
  const start = await scrape();
  const serial = s.runtime.generation.serial;
  const c = await SmtpTestClient.connect(s.port('submission'));
  await c.hello();
  assert.equal((await c.command('MAIL FROM:<alice@example.net>')).code, 250);
  assert.equal((await c.command('RCPT TO:<nobody@example.test>')).code, 550);
  await c.quit();
  const end = await scrape();
  const refusal = (listener: string): string => `postern_smtp_refusals_total{listener="${listener}",stage="RCPT",class="5xx",reason="script rcptto: reject"}`;
  const verdict = (listener: string): string => `postern_script_verdicts_total{listener="${listener}",hook="rcptto",verdict="reject",generation="${serial}",source="smtp"}`;
  assert.equal(delta(start, end, refusal('submission')), 1);
  assert.equal(delta(start, end, refusal('mx')), 0);
  assert.equal(delta(start, end, verdict('submission')), 1);
  assert.equal(delta(start, end, verdict('mx')), 0);
});

test('/metrics passes promtool check metrics: format and naming (what a scrape of Prometheus and its lint accept)', needs('promtool'), async () => {
  const { stdout } = await curl('curl', ['-sf', `http://127.0.0.1:${s.admin!.address.port}/metrics`]);
  assert.match(stdout, /^postern_spool_commit_duration_seconds_bucket\{le="\+Inf"\} [1-9]/m, 'after traffic: histograms with observations');
  const r = spawnSync('promtool', ['check', 'metrics'], { input: stdout, encoding: 'utf8' });
  assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
});

test('/healthz and /readyz answer; a refused reload leaves the server ready (the previous generation takes mail), with the reason in /readyz and the gauge at 1', async () => {
  const base = `http://127.0.0.1:${s.admin!.address.port}`;
  assert.equal((await curl('curl', ['-sf', `${base}/healthz`])).stdout, 'ok\n');
  const ready = JSON.parse((await curl('curl', ['-sf', `${base}/readyz`])).stdout) as { ready: boolean };
  assert.equal(ready.ready, true);

  const config = `${s.dir}/postern.yaml`;
  const good = await readFile(config, 'utf8');
  const { writeFile } = await import('node:fs/promises');
  await writeFile(config, good + '\nnot a key: [\n');
  const refused = await s.reloader.reload('test');
  assert.equal(refused.ok, false);
  // A load balancer checking /readyz keeps sending mail: the same edit on every node would otherwise take them all out.
  const stillReady = await curl('curl', ['-s', '-w', '\n%{http_code}', `${base}/readyz`]);
  const [body, , code] = stillReady.stdout.split('\n'); // the body ends with its newline
  assert.equal(code, '200', stillReady.stdout);
  const readiness = JSON.parse(body!) as { ready: boolean; checks: { reload: { ok: boolean; detail?: string } } };
  assert.equal(readiness.ready, true);
  assert.match(readiness.checks.reload.detail ?? '', /^last reload refused, the previous configuration serves: /);
  const client = await SmtpTestClient.connect(s.port('mx'));
  await client.hello();
  assert.equal((await client.sendMail('a@example.net', ['someone@example.test'])).code, 250, 'the previous generation takes mail');
  await client.quit();
  const failedGauge = await scrape();
  assert.equal(failedGauge.get('postern_config_last_reload_failed'), 1);

  await writeFile(config, good);
  // A reload the watcher started for the broken write may still be running: reload() then answers its outcome.
  await until('a reload of the fixed file', async () => (await s.reloader.reload('test')).ok);
  const fixed = JSON.parse((await curl('curl', ['-sf', `${base}/readyz`])).stdout) as { checks: { reload: { detail?: string } } };
  assert.equal(fixed.checks.reload.detail, undefined, 'the reason goes with the fix');
});

test('a request sent slowly is answered 408 and closed; beyond 64 connections a new one is answered, the oldest idle one closed for it', { timeout: 120_000 }, async () => {
  const port = s.admin!.address.port;
  const connect = async (localAddress = '127.0.0.1'): Promise<net.Socket> => {
    const socket = net.connect({ host: '127.0.0.1', port, localAddress });
    socket.on('error', () => undefined);
    await once(socket, 'connect');
    return socket;
  };
  const slow = await connect();
  let reply = '';
  slow.on('data', (d: Buffer) => { reply += d.toString(); });
  slow.write('GET /metrics HTTP/1.1\r\n');
  const drip = setInterval(() => { if (!slow.destroyed) slow.write('X-Slow: 1\r\n'); }, 500);
  await closed(slow);
  clearInterval(drip);
  assert.match(reply, /^HTTP\/1\.1 408 /);

  // 16 addresses with 4 each: none over its own cap (admin.maxConnectionsPerIp, 8), the listener full.
  const crowd: net.Socket[] = [];
  for (let i = 0; i < 64; i++) crowd.push(await connect(`127.0.1.${1 + (i % 16)}`));
  const crowdClosed: number[] = [];
  crowd.forEach((c, i) => c.once('close', () => crowdClosed.push(i)));
  assert.equal((await curl('curl', ['-s', '--interface', '127.0.1.99', `http://127.0.0.1:${port}/healthz`])).stdout, 'ok\n');
  await until('the oldest of the crowd closed for it', () => crowdClosed.length > 0);
  assert.deepEqual(crowdClosed, [0], 'the oldest alone, not by a timeout');
  for (const c of crowd) c.destroy();
});

test('beyond admin.maxConnectionsPerIp (8) idle connections from one address a request from it is answered, the oldest closed for it; other addresses are answered', { timeout: 120_000 }, async () => {
  await assertAdminCapMakesRoom(s.admin!.address.port, { limit: 8, address: '127.0.2.1', other: '127.0.2.2', path: '/healthz' });
  const warned = s.logs.filter((l) => l.msg === ADMIN_MADE_ROOM);
  assert.deepEqual(warned.map((l) => [l.client, l.limit]), [['127.0.2.1', 8]], 'one warning for the episode');
});
