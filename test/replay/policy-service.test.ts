// Replay of calls recorded on a Postfix policy service: each recording says where it came from (a listener
// or a policy service, by name), and replay runs it with the scripts of that place, not the default ones. A candidate for the listeners is not one for a policy
// service with a folder of its own; `--policy-scripts` is. Real SMTP and policy-protocol sockets on 127.0.0.1.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startTestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { until } from '../helpers/wait.ts';
import { runCli } from '../helpers/cli.ts';
import { recordingFiles } from '../../engine/replay/recording-files.ts';
import { PolicyClient, rcptRequest } from '../policy-service/helpers/policy-client.ts';

const refusing = (text: string): string => `export default function (ctx) {
  if (ctx.address.localPart.startsWith('spam')) return reject(${JSON.stringify(text)});
}`;

interface Summary { decisions: number; changed: number; groups: Array<{ hook: string; from: string; to: string; count: number; examples: Array<{ address: string; listener: string; source: string }> }> }

test('calls recorded on a policy service are replayed with that service\'s scripts', async () => {
  const policyScripts = await mkdtemp(join(tmpdir(), 'postern-policy-scripts-'));
  await writeFile(join(policyScripts, 'rcptto.ts'), refusing('No spam via Postfix'));
  const server = await startTestServer({
    config: configYaml({
      localDomains: ['example.com'], replay: { keepDays: 2 }, listeners: [testListener('in')],
      policyServices: [{ name: 'postfix', listen: '127.0.0.1:0', scripts: policyScripts }],
    } as never),
    scripts: { 'rcptto.ts': refusing('No spam here') },
  });
  try {
    const smtp = await SmtpTestClient.connect(server.port('in'));
    await smtp.hello();
    assert.equal((await smtp.command('MAIL FROM:<a@example.org>')).code, 250);
    assert.equal((await smtp.command('RCPT TO:<spam1@example.com>')).text, '550 5.7.1 No spam here');
    assert.equal((await smtp.command('RCPT TO:<alice@example.com>')).code, 250);
    await smtp.quit();
    const policy = await PolicyClient.connect({ port: Number(server.policyAddresses.get('postfix')!.split(':').pop()) });
    assert.match(await policy.ask(rcptRequest({ recipient: 'spam2@example.com' })), /^action=(REJECT|550).*No spam via Postfix/);
    assert.equal(await policy.ask(rcptRequest({ recipient: 'carol@example.com' })), 'action=DUNNO');
    policy.close();

    const dataDir = join(server.dir, 'data');
    const lines = async (): Promise<string[]> => (await Promise.all(recordingFiles(dataDir).map((f) => readFile(f.path, 'utf8')))).join('').split('\n').filter(Boolean);
    await until('the four calls recorded', async () => (await lines()).length === 4);
    const recorded = (await lines()).map((l) => JSON.parse(l) as { listener: string; source: string; ctx: { address: { address: string } } });
    assert.deepEqual(recorded.map((r) => [r.ctx.address.address, r.listener, r.source]), [
      ['spam1@example.com', 'in', 'smtp'], ['alice@example.com', 'in', 'smtp'],
      ['spam2@example.com', 'postfix', 'postfix-policy'], ['carol@example.com', 'postfix', 'postfix-policy'],
    ]);

    const candidate = join(server.dir, 'candidate');
    await mkdir(candidate);
    await writeFile(join(candidate, 'rcptto.ts'), 'export default function () {}\n');
    const config = join(server.dir, 'postern.yaml');
    const replay = async (...args: string[]): Promise<Summary> => {
      const r = await runCli(['replay', '-c', config, '--scripts', candidate, '--json', ...args]);
      assert.ok(r.code === 0 || r.code === 1, r.stderr);
      return JSON.parse(r.stdout) as Summary;
    };
    const changes = (s: Summary) => s.groups.flatMap((g) => g.examples.map((e) => [g.from, g.to, e.address, e.source]));

    // A candidate for the listeners: the policy service's calls run with its own folder, so they do not change.
    const forListeners = await replay();
    assert.deepEqual(changes(forListeners), [['reject', 'none', 'spam1@example.com', 'smtp']]);

    // A candidate for the policy service too.
    const forBoth = await replay('--policy-scripts', candidate);
    assert.deepEqual(changes(forBoth), [
      ['reject', 'none', 'spam1@example.com', 'smtp'], ['reject', 'none', 'spam2@example.com', 'postfix-policy'],
    ]);

    // Recordings made before the source was recorded: the context's own connection.source says it.
    for (const f of recordingFiles(dataDir)) {
      const text = await readFile(f.path, 'utf8');
      await writeFile(f.path, text.split('\n').map((l) => (l ? JSON.stringify({ ...JSON.parse(l), source: undefined }) : l)).join('\n'));
    }
    assert.ok((await lines()).every((l) => !('source' in (JSON.parse(l) as object))));
    assert.deepEqual(changes(await replay()), [['reject', 'none', 'spam1@example.com', 'smtp']]);
  } finally {
    await server.stop();
    await rm(policyScripts, { recursive: true, force: true });
  }
});
