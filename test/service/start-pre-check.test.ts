/**
 * The unit's ExecStartPre, run by hand as systemd would run it before each start, restarts after a failure
 * (Restart=on-failure) and reboots included. `postern check` is stricter than a start in one way: an expired
 * outbound client certificate fails it, where `postern serve` only warns (delivery still presents it; the next hop
 * decides). So under the shipped unit a delivery certificate that lapsed overnight kept the whole server, port 25
 * and submission included, from starting again at the next restart, while the same server started by hand ran.
 * The unit's check must refuse what a start refuses and no more; an interactive `postern check` stays strict.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createCertificateAuthority, issueClientCertificate } from '../../engine/certificates/index.ts';
import { directive, unitService } from '../helpers/systemd-unit.ts';
import { runCli } from '../helpers/cli.ts';
import { startCluster } from '../helpers/cluster.ts';

const ROOT = new URL('../../', import.meta.url).pathname.replace(/\/$/, '');
const NODE = join(ROOT, 'node_modules', '.bin', 'node');
let dir: string;
let laptop: { cert: string; key: string };
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'postern-start-pre-'));
  await mkdir(join(dir, 'scripts'));
  const ca = await createCertificateAuthority({ commonName: 'Outbound CA', keyType: 'ecdsa' });
  const issued = await issueClientCertificate(ca, { commonName: 'laptop', keyType: 'ecdsa', notBefore: new Date('2020-01-01T00:00:00Z'), notAfter: new Date('2021-01-01T00:00:00Z') });
  laptop = { cert: join(dir, 'laptop.crt'), key: join(dir, 'laptop.key') };
  await writeFile(laptop.cert, issued.cert);
  await writeFile(laptop.key, issued.key, { mode: 0o600 });
});
after(() => rm(dir, { recursive: true, force: true }));

const DELIVERY = (): string => `delivery:
  route: { smarthost: { host: 127.0.0.1, port: 9 } }
  tls: { mode: encrypt, clientCertificate: laptop }
  clientCertificates:
    laptop: { cert: ${laptop.cert}, key: ${laptop.key} }
`;

test('the unit\'s ExecStartPre passes a configuration that postern serve starts with (an expired outbound client certificate: a warning)', { timeout: 120_000 }, async () => {
  const config = join(dir, 'postern.yaml');
  await writeFile(config, `dataDir: ${join(dir, 'data')}\nscripts: ${join(dir, 'scripts')}\nlisteners:\n  - { name: mx, listen: "127.0.0.1:0" }\n${DELIVERY()}`);

  // As systemd runs it: the unit's own command line, its paths mapped to this tree.
  const pre = directive(unitService(), 'ExecStartPre')!.replace(/^[-@:+!]+/, '')
    .replaceAll('/usr/lib/node_modules/postern', ROOT).replaceAll('/etc/postern/postern.yaml', config).split(/\s+/);
  assert.equal(pre[0], '/usr/bin/node');
  const run = spawnSync(NODE, pre.slice(1), { encoding: 'utf8', env: { ...process.env, NODE_NO_WARNINGS: '1' }, timeout: 60_000 });
  assert.equal(run.status, 0, `ExecStartPre failed: ${run.stderr}`);
  assert.match(run.stderr, /^warning: .*delivery\.clientCertificates\.laptop\.cert: .*laptop\.crt: certificate "CN=laptop" expired on 2021-01-01T00:00:00\.000Z/m);

  // A start itself takes it (and warns): what ExecStartPre must not refuse.
  const server = await startCluster({ config: `workers: 1\nlisteners:\n  - { name: mx, listen: "127.0.0.1:{PORT:mx}" }\n${DELIVERY()}` });
  try {
    assert.ok(server.logs.some((l) => l.level === 40 && String(l.msg).includes('certificate "CN=laptop" expired on')), 'the start warns');
  } finally {
    await server.stop();
  }

  // Asked by an administrator, the check stays strict.
  const strict = await runCli(['check', '--config', config]);
  assert.equal(strict.code, 1, strict.stderr);
  assert.match(strict.stderr, /delivery\.clientCertificates\.laptop\.cert: .*expired on 2021/);
});
