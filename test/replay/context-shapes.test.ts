/**
 * `postern replay` gives a candidate script the context the live script had: the shape postern.d.ts declares, as
 * the walker scripts of test/sandbox/typings-at-runtime.test.ts check it inside the sandbox. A recorded context that
 * lost or changed a field (JSON drops `undefined`, a kept recipient list, a frozen connection) would make a candidate
 * decide otherwise on replay than it would live: the candidate here refuses on any difference, so none may change.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DTS_PATH } from '../../engine/sandbox/api/generate-dts.ts';
import { HOOK_NAMES } from '../../engine/sandbox/index.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { recordingFiles } from '../../engine/replay/recording-files.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { startTestServer } from '../helpers/postern.ts';
import { configYaml, testListener, testServerTls } from '../helpers/config.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { until } from '../helpers/wait.ts';
import { runCli } from '../helpers/cli.ts';
import { CONTEXT_TYPE, declaredShapes } from '../sandbox/helpers/declared-shapes.ts';
import { shapeWalkingScript } from '../sandbox/helpers/shape-walker.ts';

test('a replayed context has the declared shape: a candidate that refuses on any difference changes no decision', async () => {
  const shapes = declaredShapes(DTS_PATH, Object.values(CONTEXT_TYPE));
  const smtpHooks = HOOK_NAMES.filter((h) => h !== 'predelivery');
  const pki = await makeTestPki();
  const s = await startTestServer({
    files: { users: `bob@example.com:${await hashPassword('s3cret')}\n` },
    scripts: Object.fromEntries(smtpHooks.map((hook) => [`${hook}.js`, shapeWalkingScript(hook, shapes[CONTEXT_TYPE[hook]]!, { readBody: false })])),
    config: configYaml({
      users: './users', localDomains: ['example.com'], replay: { keepDays: 1 },
      listeners: [testListener('sub', { tls: testServerTls(pki, { clientCertificates: 'request' }), auth: { mechanisms: ['EXTERNAL', 'PLAIN'] }, certificateIdentity: { field: 'emailAddress' } })],
    } as never),
  });
  try {
    const [ca, cert, key] = await Promise.all([pki.ca.cert, pki.clients.alice.cert, pki.clients.alice.key].map((f) => readFile(f, 'utf8')));
    // A password login without a certificate, and EXTERNAL with one; twenty recipients (the kept list).
    for (const [name, tls, auth] of [
      ['plain.test', { ca: ca! }, `AUTH PLAIN ${Buffer.from('\0bob@example.com\0s3cret').toString('base64')}`],
      ['cert.test', { ca: ca!, cert: cert!, key: key! }, 'AUTH EXTERNAL ='],
    ] as const) {
      const c = await SmtpTestClient.connect(s.port('sub'));
      await c.hello({ name, starttls: tls });
      assert.equal((await c.command(auth)).code, 235);
      assert.equal((await c.command('MAIL FROM:<bob@example.com> SIZE=10')).code, 250);
      for (let i = 0; i < 20; i++) assert.equal((await c.command(`RCPT TO:<r${i}@example.com>`)).code, 250);
      assert.equal((await c.command('DATA')).code, 354);
      c.write('Subject: replay\r\n\r\nbody\r\n.');
      assert.equal((await c.read()).code, 250);
      await c.quit();
    }
    // Live, the walker found nothing (checked in typings-at-runtime.test.ts too).
    assert.deepEqual(s.logs.map((l) => String(l.msg)).filter((m) => m.startsWith('SHAPE ') && m.split(' ')[3] === 'problem'), []);
    const dataDir = join(s.dir, 'data');
    const calls = 2 * (1 + 1 + 1 + 1 + 20 + 1);
    await until(`${calls} calls recorded`, async () => (await Promise.all(recordingFiles(dataDir).map((f) => readFile(f.path, 'utf8')))).join('').split('\n').filter(Boolean).length >= calls);
    const candidate = join(s.dir, 'candidate');
    await mkdir(candidate);
    for (const hook of smtpHooks) await writeFile(join(candidate, `${hook}.js`), shapeWalkingScript(hook, shapes[CONTEXT_TYPE[hook]]!, { readBody: false, rejectOnProblem: true }));
    const r = await runCli(['replay', '-c', join(s.dir, 'postern.yaml'), '--scripts', candidate, '--json']);
    const summary = JSON.parse(r.stdout) as { decisions: number; changed: number; groups: Array<{ hook: string; examples: Array<{ new: string }> }> };
    assert.ok(summary.decisions >= calls, r.stdout);
    assert.deepEqual(summary.groups.map((g) => `${g.hook}: ${g.examples[0]?.new}`), [], 'a replayed context differs from the declared shape');
    assert.equal(summary.changed, 0);
  } finally {
    await s.stop();
  }
});
