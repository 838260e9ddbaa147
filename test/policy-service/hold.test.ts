// A data script's accept({ hold: reason }) asked by Postfix (check_policy_service): the message must go to
// Postfix's hold queue, as on a listener it stays held in Postern's. access(5) says that with `HOLD <text>`.
// It was answered `DUNNO` (an accept without header edits), so a quarantine script behind Postfix let the
// message through to its next hop. A hold together with header edits cannot be one access(5) answer: the
// failure action, never a DUNNO that drops the hold.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { needs, run } from '../helpers/example.ts';
import { freePort, needsPostfix, startPostfix, startSmtpSink, type PostfixInstance, type SmtpSink } from '../helpers/postfix.ts';
import { PolicyClient, rcptRequest } from './helpers/policy-client.ts';

const DATA_SCRIPT = `
export default function (ctx) {
  const who = ctx.transaction.sender.localPart;
  if (who === 'spam') return accept({ hold: 'spam score 7' });
  if (who === 'tagged') return accept({ hold: 'spam score 7', headers: [{ op: 'add', name: 'X-Spam-Score', value: '7' }] });
  return accept();
}`;

test('over the policy protocol: a hold is HOLD <reason>; a hold with a header edit is the failure action', async () => {
  const s = await startTestServer({
    config: `
policyServices:
  - name: main
    listen: 127.0.0.1:0
  - name: authoritative
    listen: 127.0.0.1:0
    authoritative: true
`,
    scripts: { 'data.ts': DATA_SCRIPT },
  });
  try {
    for (const name of ['main', 'authoritative']) {
      const c = await PolicyClient.connect({ port: Number(s.policyAddresses.get(name)!.split(':').pop()) });
      for (const state of ['DATA', 'END-OF-MESSAGE']) {
        const ask = (sender: string) => c.ask(rcptRequest({ protocol_state: state, sender, size: 100 }));
        assert.equal(await ask('spam@example.org'), 'action=HOLD spam score 7', `${name} at ${state}`);
        assert.equal(await ask('tagged@example.org'), 'action=DEFER_IF_PERMIT Service temporarily unavailable', `${name} at ${state}: hold + header`);
        assert.equal(await ask('ham@example.org'), name === 'main' ? 'action=DUNNO' : 'action=OK', `${name} at ${state}: no hold`);
      }
      c.close();
    }
    assert.ok(s.logs.some((l) => l.level === 50 && /a hold and header edits/.test(String(l.msg))), 'the failure is logged with why');
  } finally {
    await s.stop();
  }
});

const skip = needsPostfix().skip || needs('swaks').skip;
let pki: TestPki;
let pf: PostfixInstance;
let sink: SmtpSink;
let s: TestServer;
let dataPort: number;
let endOfDataPort: number;
let files: string;

before(async () => {
  if (skip) return;
  pki = await makeTestPki();
  sink = await startSmtpSink();
  files = await mkdtemp(join(tmpdir(), 'postern-pf-hold-'));
  await chmod(files, 0o755);
  await writeFile(join(files, 'server.pem'), (await readFile(pki.server.key, 'utf8')) + (await readFile(pki.server.cert, 'utf8')), { mode: 0o644 });
  dataPort = await freePort();
  endOfDataPort = await freePort();
  pf = await startPostfix('hold', {
    relayhost: `[127.0.0.1]:${sink.port}`,
    smtp_tls_security_level: 'none',
    smtpd_relay_restrictions: 'permit_mynetworks, reject',
    smtpd_data_restrictions: 'check_policy_service unix:private/postern',
    postern_end_of_data: 'check_policy_service unix:private/postern',
  }, [`127.0.0.1:${dataPort} inet n - n - - smtpd`,
    `127.0.0.1:${endOfDataPort} inet n - n - - smtpd -o smtpd_data_restrictions= -o smtpd_end_of_data_restrictions=$postern_end_of_data`]);
  s = await startTestServer({
    config: `
policyServices:
  - name: postfix
    listen: ${JSON.stringify(`unix:${join(pf.dir, 'spool', 'private', 'postern')}`)}
    socket: { owner: postfix, mode: '0660' }
`,
    scripts: { 'data.ts': DATA_SCRIPT },
  }).catch(async (err: unknown) => { await pf.stop(); throw err; });
});
after(async () => {
  await s?.stop();
  await pf?.stop();
  await sink?.stop();
  if (files) await rm(files, { recursive: true, force: true });
});

const swaks = (from: string, port: number, subject: string) => run('swaks', ['--server', '127.0.0.1', '--port', String(port),
  '--ehlo', 'client.example', '--from', from, '--to', 'r@elsewhere.example', '--header', `Subject: ${subject}`]);

test('behind a real Postfix, a held message is on Postfix\'s hold queue, not at its next hop', { skip, timeout: 120_000 }, async () => {
  const held = async (): Promise<number> => ((await run('postqueue', ['-c', pf.etc, '-p'])).stdout.match(/^[0-9A-F]+!/gm) ?? []).length;
  let expected = 0;
  for (const [port, where] of [[dataPort, 'data'], [endOfDataPort, 'end-of-data']] as const) {
    const r = await swaks('spam@example.org', port, `held at ${where}`);
    assert.equal(r.code, 0, r.output); // Postfix accepts it (250), as a listener does
    // cleanup puts a HOLD message in the hold queue before smtpd answers 250: it is there now.
    assert.equal(await held(), ++expected, `on hold after the 250 (${where}):\n${(await run('postqueue', ['-c', pf.etc, '-p'])).stdout}\n${await pf.log()}`);
    // A message that is not held goes through the same Postfix to the sink.
    const ham = await swaks('ham@example.org', port, `delivered at ${where}`);
    assert.equal(ham.code, 0, ham.output);
    await sink.waitFor(new RegExp(`Subject: delivered at ${where}`));
    assert.ok(!(await sink.messages()).some((m) => m.includes(`Subject: held at ${where}`)), `the held message (${where}) never reached the next hop`);
  }
});
