/**
 * A listener's own certificate past its date: the mail administrator runs `postern check` before each start (the
 * systemd unit's ExecStartPre) and reads the start's log, and neither said a word. Submission clients, MTA-STS and
 * DANE senders refuse an expired server certificate (Thunderbird: "the certificate has expired"), so mail stops
 * while the server looks healthy. It is said now, as delivery's own client certificates already were: a `warning:`
 * line at the key that names the file (expired, expiring within 14 days, not valid yet) from `postern check`, and
 * the same at warn level from a start. A warning, not a refusal: port 25 still takes mail from the many senders
 * that do not verify, and ExecStartPre must not turn a certificate that lapsed overnight into no mail at all.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createCertificateAuthority, issueServerCertificate } from '../../engine/certificates/index.ts';
import { runCli } from '../helpers/cli.ts';
import { startCluster } from '../helpers/cluster.ts';

let dir: string;
const files: Record<'expired' | 'soon' | 'later' | 'fresh', { cert: string; key: string }> = {} as never;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'postern-server-cert-dates-'));
  await mkdir(join(dir, 'scripts'));
  const ca = await createCertificateAuthority({ commonName: 'Dates CA', keyType: 'ecdsa' });
  const day = 86400_000;
  const now = Date.now();
  const validity = {
    expired: { notBefore: new Date('2020-01-01T00:00:00Z'), notAfter: new Date('2021-01-01T00:00:00Z') },
    soon: { notBefore: new Date(now - 300 * day), notAfter: new Date(now + 3 * day + 3600_000) },
    later: { notBefore: new Date(now + 2 * day), notAfter: new Date(now + 400 * day) },
    fresh: { notBefore: new Date(now - day), notAfter: new Date(now + 300 * day) },
  };
  for (const [name, dates] of Object.entries(validity) as Array<[keyof typeof files, { notBefore: Date; notAfter: Date }]>) {
    const issued = await issueServerCertificate(ca, { commonName: `${name}.example.test`, dnsNames: [`${name}.example.test`], keyType: 'ecdsa', ...dates });
    files[name] = { cert: join(dir, `${name}.crt`), key: join(dir, `${name}.key`) };
    await writeFile(files[name].cert, issued.cert + ca.cert);
    await writeFile(files[name].key, issued.key, { mode: 0o600 });
  }
});
after(() => rm(dir, { recursive: true, force: true }));

const listener = (name: keyof typeof files, port: string): string => `  - name: ${name}
    listen: 127.0.0.1:${port}
    tls: { mode: starttls, cert: ${files[name].cert}, key: ${files[name].key} }
`;

test('postern check and a start say that a listener\'s server certificate has expired, expires soon or is not valid yet, at its line', { timeout: 120_000 }, async () => {
  const config = join(dir, 'postern.yaml');
  const text = `dataDir: ${join(dir, 'data')}\nscripts: ${join(dir, 'scripts')}\nlisteners:\n${listener('expired', '0')}${listener('soon', '0')}${listener('later', '0')}${listener('fresh', '0')}`;
  await writeFile(config, text);
  const line = (name: string): number => text.split('\n').findIndex((l) => l.includes(`${name}.crt`)) + 1;
  const checked = await runCli(['check', '--config', config]);
  assert.equal(checked.code, 0, checked.stderr);
  const warnings = checked.stderr.split('\n').filter((l) => l.startsWith('warning: '));
  const about = (name: keyof typeof files): string[] => warnings.filter((w) => w.includes(`${name}.crt: `));
  assert.deepEqual(about('expired').length, 1, checked.stderr);
  assert.match(about('expired')[0]!, new RegExp(`^warning: ${config}:${line('expired')}:\\d+: listeners\\[0\\]\\.tls\\.cert: ${files.expired.cert}: server certificate "CN=expired\\.example\\.test" expired on 2021-01-01T00:00:00\\.000Z: clients that verify it .*renew it`));
  assert.match(about('soon')[0] ?? '', new RegExp(`^warning: ${config}:${line('soon')}:\\d+: listeners\\[1\\]\\.tls\\.cert: .*server certificate "CN=soon\\.example\\.test" expires on \\S+ \\(in 3 days\\)`), checked.stderr);
  assert.match(about('later')[0] ?? '', new RegExp(`^warning: ${config}:${line('later')}:\\d+: listeners\\[2\\]\\.tls\\.cert: .*server certificate "CN=later\\.example\\.test" is not valid before `), checked.stderr);
  assert.deepEqual(about('fresh'), [], checked.stderr);

  // A start (the real `postern serve`) says the same at warn level, and serves all the same.
  const server = await startCluster({ config: `workers: 1\nlisteners:\n${listener('expired', '{PORT:expired}')}` });
  try {
    const said = server.logs.find((l) => typeof l.msg === 'string' && l.msg.includes('server certificate "CN=expired.example.test" expired on'));
    assert.ok(said, JSON.stringify(server.logs.filter((l) => (l.level as number) >= 40)));
    assert.equal(said.level, 40);
    assert.equal(said.listener, 'expired');
  } finally {
    await server.stop();
  }
});
