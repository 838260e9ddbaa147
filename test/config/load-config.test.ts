// Configuration errors name the file, line and key path; the server refuses to start on them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createServer, type AddressInfo } from 'node:net';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseConfig } from '../../engine/config/load-config.ts';
import { pathKeys, valuesAt } from '../helpers/config-paths.ts';
import { ConfigError } from '../../engine/config/config-error.ts';

function problems(yaml: string): string[] {
  try {
    parseConfig(yaml, '/etc/postern.yaml', '/etc');
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return err.message.split('\n');
  }
  assert.fail('expected a configuration error');
}

test('an invalid enum is reported with file, line, column and key path', () => {
  const p = problems('listeners:\n  - name: a\n    listen: 127.0.0.1:25\n    tls:\n      mode: sometimes\n');
  assert.equal(p.length, 1);
  assert.match(p[0]!, /^\/etc\/postern\.yaml:5:13: listeners\[0\]\.tls\.mode: Invalid option/);
});

test('an unknown key points at the key itself', () => {
  const p = problems('listeners:\n  - name: a\n    listen: 127.0.0.1:25\n    tsl: {}\n');
  assert.match(p[0]!, /^\/etc\/postern\.yaml:4:5: listeners\[0\]\.tsl: Unrecognized key/);
});

test('YAML syntax errors carry a position', () => {
  const p = problems('listeners: [\n  - name: a\n');
  assert.match(p[0]!, /^\/etc\/postern\.yaml:\d+:\d+: /);
});

test('a YAML alias bomb is a configuration error naming the file, not a crash', () => {
  // Nine levels of ten aliases each would expand to 10^9 values.
  const lines = ['a0: &a0 [x, x, x, x, x, x, x, x, x, x]'];
  for (let i = 1; i < 9; i++) lines.push(`a${i}: &a${i} [${Array(10).fill(`*a${i - 1}`).join(', ')}]`);
  lines.push('listeners: *a8');
  const p = problems(lines.join('\n') + '\n');
  assert.match(p[0]!, /^\/etc\/postern\.yaml: cannot be read: .*aliases/);
});

test('hostname, delivery.heloName and banner go on the wire: a line end, a space or a U-label is an error at its line', () => {
  for (const [yaml, key] of [
    ['hostname: "mx.example.com\\r\\nX-Injected: yes"\n', 'hostname'],
    ['hostname: mx example\n', 'hostname'],
    ['hostname: bücher.example\n', 'hostname'],
    ['delivery:\n  heloName: "a\\nb"\n', 'delivery.heloName'],
    ['listeners:\n  - name: a\n    listen: 127.0.0.1:25\n    banner: "hi\\r\\n250 fake"\n', 'listeners[0].banner'],
  ] as const) {
    const p = problems(yaml);
    assert.equal(p.length, 1, p.join('\n'));
    assert.match(p[0]!, new RegExp(`^/etc/postern\\.yaml:\\d+:\\d+: ${key.replace(/[[\].]/g, '\\$&')}: expected`), p[0]);
  }
  for (const name of ['mx.example.com', 'xn--bcher-kva.example', 'localhost', 'mail_1.example.', 'a']) {
    const listener = 'listeners:\n  - name: a\n    listen: 127.0.0.1:25\n';
    assert.equal(parseConfig(`hostname: ${name}\n${listener}`, '/etc/postern.yaml', '/etc').config.hostname, name);
  }
});

test('a smarthost host is a host name or an address: Postfix\'s [host] or a space is refused at its line, not looked up at every delivery', () => {
  const route = (host: string): string => `delivery:\n  route: { smarthost: { host: ${JSON.stringify(host)}, port: 25 } }\n`;
  for (const host of ['[192.0.2.1]', '[relay.example.net]', '[IPv6:2001:db8::1]']) {
    const p = problems(route(host));
    assert.equal(p.length, 1, p.join('\n'));
    assert.match(p[0]!, /^\/etc\/postern\.yaml:2:31: delivery\.route\.smarthost\.host: expected the host without brackets: a smarthost is never looked up in MX/, host);
  }
  assert.match(problems(route('relay example'))[0]!, /^\/etc\/postern\.yaml:2:31: delivery\.route\.smarthost\.host: expected a host name .*, or an IP address$/);
  for (const host of ['relay.example.net', 'relay.example.net.', '192.0.2.1', '2001:db8::1', 'localhost']) {
    const route2 = parseConfig(`listeners: [{ name: a, listen: "127.0.0.1:25" }]\n${route(host)}`, '/etc/postern.yaml', '/etc').config.delivery.route;
    assert.deepEqual(route2, { smarthost: { host, port: 25, implicitTls: false } }, host);
  }
});

test('cross-field rules: TLS needs cert and key; EXTERNAL needs client certificates; pins need a table', () => {
  const p = problems(`listeners:
  - name: a
    listen: 127.0.0.1:25
    tls: { mode: starttls }
    auth: { mechanisms: [EXTERNAL] }
    certificateIdentity: { pins: nope }
`);
  assert.ok(p.some((l) => /:4:\d+: listeners\[0\]\.tls: tls\.mode starttls needs tls\.cert and tls\.key/.test(l)), p.join('\n'));
  assert.ok(p.some((l) => /listeners\[0\]\.auth\.mechanisms: EXTERNAL needs tls\.clientCertificates/.test(l)), p.join('\n'));
  assert.ok(p.some((l) => /listeners\[0\]\.certificateIdentity\.pins: no table named "nope"/.test(l)), p.join('\n'));
});

test('duplicate listener names and addresses are refused', () => {
  const p = problems('listeners:\n  - { name: a, listen: "127.0.0.1:25" }\n  - { name: a, listen: "127.0.0.1:25" }\n');
  assert.ok(p.some((l) => /listeners\[1\]\.name: duplicate listener name/.test(l)));
  assert.ok(p.some((l) => /listeners\[1\]\.listen: address already used/.test(l)));
});

test('a wildcard address takes its port on every address: listeners, policy services, admin and account page on it are refused', () => {
  const p = problems(`listeners:
  - { name: a, listen: "0.0.0.0:2525" }
  - { name: b, listen: "127.0.0.1:2525" }
  - { name: c, listen: "[::1]:2525" }
  - { name: d, listen: "[::]:587" }
  - { name: e, listen: "192.0.2.1:587" }
  - { name: f, listen: "127.0.0.1:0" }
  - { name: g, listen: "127.0.0.1:0" }
policyServices:
  - { name: p, listen: "127.0.0.1:2525" }
admin: { listen: "localhost:9325" }
accounts: { listen: "[::]:9325", listener: a }
`);
  assert.ok(p.some((l) => /:3:\d+: listeners\[1\]\.listen: address already used by listeners\[0\] \(0\.0\.0\.0:2525: 0\.0\.0\.0:2525 takes port 2525 on every IPv4 address\)/.test(l)), p.join('\n'));
  assert.ok(!p.some((l) => /listeners\[2\]\.listen/.test(l)), 'an IPv6 address beside 0.0.0.0 binds');
  assert.ok(p.some((l) => /listeners\[4\]\.listen: address already used by listeners\[3\] .*\[::\]:587 takes port 587 on every address, IPv4 too/.test(l)), p.join('\n'));
  assert.ok(!p.some((l) => /listeners\[6\]\.listen/.test(l)), 'port 0 is any free port');
  assert.ok(p.some((l) => /policyServices\[0\]\.listen: address already used by listeners\[0\]/.test(l)), p.join('\n'));
  assert.ok(p.some((l) => /admin\.listen: address already used by accounts\.listen \(\[::\]:9325/.test(l)), p.join('\n'));
});

test('an address written another way is the same address: postern check refuses exactly the pairs the kernel refuses', async () => {
  // Each pair bound for real first (the second on the first's port), then checked as two listeners.
  const pairs: Array<[string, string]> = [
    ['127.0.0.1', '[::ffff:127.0.0.1]'], ['[::1]', '[0:0:0:0:0:0:0:1]'], ['[::1]', '[::0:1]'], ['0.0.0.0', '[::ffff:0.0.0.0]'],
    ['[::ffff:0.0.0.0]', '127.0.0.1'], ['0.0.0.0', '[::ffff:127.0.0.1]'], ['[0::0]', '127.0.0.1'], ['[::FFFF:7F00:1]', '127.0.0.1'],
    ['0.0.0.0', '[::1]'], ['127.0.0.1', '[::1]'], ['[::ffff:127.0.0.1]', '127.0.0.2'],
  ];
  for (const [a, b] of pairs) {
    const first = createServer();
    await new Promise<void>((resolve, reject) => { first.once('error', reject); first.listen(0, a.replace(/^\[|\]$/g, ''), resolve); });
    const port = (first.address() as AddressInfo).port;
    const second = createServer();
    const kernel = await new Promise<string>((resolve) => {
      second.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'));
      second.listen(port, b.replace(/^\[|\]$/g, ''), () => resolve('bound'));
    });
    await Promise.all([first, second].map((s) => new Promise((r) => (s.listening ? s.close(r) : r(undefined)))));
    let refused: string | undefined;
    try {
      parseConfig(`listeners:\n  - { name: a, listen: "${a}:${port}" }\n  - { name: b, listen: "${b}:${port}" }\n`, '/etc/postern.yaml', '/etc');
    } catch (err) {
      refused = (err as Error).message;
    }
    assert.equal(kernel === 'EADDRINUSE', refused !== undefined, `${a}:${port} then ${b}:${port}: the kernel says ${kernel}, the check ${refused ?? 'nothing'}`);
    if (refused) assert.match(refused, new RegExp(`^/etc/postern\\.yaml:3:\\d+: listeners\\[1\\]\\.listen: address already used by listeners\\[0\\]`));
  }
});

test('a time longer than a timer can wait is refused at its line (Node would run it after 1 ms)', () => {
  const p = problems(`listeners:
  - name: a
    listen: 127.0.0.1:25
    limits: { socketTimeoutMs: 3000000000 }
delivery:
  scanIntervalMs: 2147483648
  commandTimeoutMs: 2147483647
sandbox:
  timeoutMs: 99999999999
`);
  assert.ok(p.some((l) => /^\/etc\/postern\.yaml:4:\d+: listeners\[0\]\.limits\.socketTimeoutMs: at most 2147483647 ms/.test(l)), p.join('\n'));
  assert.ok(p.some((l) => /^\/etc\/postern\.yaml:6:\d+: delivery\.scanIntervalMs: at most 2147483647 ms/.test(l)), p.join('\n'));
  assert.ok(p.some((l) => /^\/etc\/postern\.yaml:9:\d+: sandbox\.timeoutMs: at most/.test(l)), p.join('\n'));
  assert.ok(!p.some((l) => /commandTimeoutMs/.test(l)), 'the longest a timer takes is allowed');
});

test('a scan interval below 100 ms is refused at its line (each scan rereads the whole spool)', () => {
  const p = problems(`delivery:
  scanIntervalMs: 1
`);
  assert.deepEqual(p.filter((l) => /scanIntervalMs/.test(l)).map((l) => l.replace(/:\d+: /, ': ')),
    ['/etc/postern.yaml:2: delivery.scanIntervalMs: at least 100 ms: each scan rereads the whole spool']);
});

test('a minimum transfer rate that is negative or fractional, or a window under a second, is refused at its line', () => {
  const p = problems(`listeners:
  - name: a
    listen: 127.0.0.1:25
    limits:
      minDataRate: -1
      dataRateWindowMs: 10
  - name: b
    listen: 127.0.0.1:26
    limits:
      minDataRate: 0.5
      dataRateWindowMs: 7200000
  - name: c
    listen: 127.0.0.1:27
    limits: { minDataRate: 0, dataRateWindowMs: 1000 }
`);
  assert.deepEqual(p.filter((l) => /minDataRate|dataRateWindowMs/.test(l)).map((l) => l.replace(/:(\d+):\d+: /, ':$1: ')), [
    '/etc/postern.yaml:5: listeners[0].limits.minDataRate: at least 0 (0: never)',
    '/etc/postern.yaml:6: listeners[0].limits.dataRateWindowMs: at least 1000 ms: a shorter window judges a transfer by a moment of it',
    '/etc/postern.yaml:10: listeners[1].limits.minDataRate: a whole number of bytes a second',
    '/etc/postern.yaml:11: listeners[1].limits.dataRateWindowMs: at most 3600000 ms (an hour, the default dataTimeoutMs)',
  ], p.join('\n'));
});

test('a retry step beyond 31 days is refused at its line (far enough ahead, the next attempt had no valid date)', () => {
  const p = problems(`delivery:
  retrySchedule: [60, 2678400, 1e13]
`);
  assert.deepEqual(p.filter((l) => /retrySchedule/.test(l)).map((l) => l.replace(/:\d+: /, ': ')),
    ['/etc/postern.yaml:2: delivery.retrySchedule[2]: at most 2678400 s (31 days) between two attempts']);
});

test('postern check refuses listeners that would fail the start on one port, at the line', () => {
  const dir = mkdtempSync(join(tmpdir(), 'postern-cfg-'));
  const file = join(dir, 'postern.yaml');
  writeFileSync(file, `dataDir: ${JSON.stringify(join(dir, 'data'))}\nlisteners:\n  - { name: a, listen: "0.0.0.0:42525" }\n  - { name: b, listen: "127.0.0.1:42525" }\n`);
  const r = spawnSync(process.execPath, ['engine/cli/main.ts', 'check', '--config', file], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, new RegExp(`${file.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}:4:\\d+: listeners\\[1\\]\\.listen: address already used by listeners\\[0\\]`));
});

test('relative paths resolve against the configuration folder', () => {
  const { config } = parseConfig('dataDir: data\nlisteners:\n  - { name: a, listen: "127.0.0.1:25", tls: { mode: implicit, cert: c.pem, key: k.pem } }\n', '/srv/p/postern.yaml', '/srv/p');
  assert.equal(config.dataDir, '/srv/p/data');
  assert.equal(config.listeners[0]!.tls.cert, '/srv/p/c.pem');
});

test('every file and folder key of the schema resolves against the configuration folder (docs/configuration.md: relative to postern.yaml)', () => {
  const { config } = parseConfig(`
dataDir: rel/data
scripts: rel/scripts
users: rel/users
localRecipients: rel/recipients
tables:
  plain: rel/plain-table
  typed: { file: rel/typed-table, format: postfix }
listeners:
  - name: a
    listen: 127.0.0.1:25
    scripts: rel/listener-scripts
    shadowScripts: rel/shadow-scripts
    tls: { mode: starttls, cert: rel/c.pem, key: rel/k.pem, clientCertificates: request, caFiles: [rel/ca.pem], crlFiles: [rel/ca.crl] }
policyServices:
  - { name: p, listen: 127.0.0.1:10040, scripts: rel/policy-scripts }
delivery:
  route: { smarthost: { host: relay.example.net } }
  tls: { mode: verify, ca: relay, clientCertificate: out }
  caFiles: { relay: rel/relay-ca.pem }
  clientCertificates: { out: { cert: rel/out.crt, key: rel/out.key } }
  dkim: { k: { domain: example.com, selector: s1, privateKey: rel/dkim.key, senderDomains: [example.com] } }
pki: { dir: rel/pki }
`, '/srv/p/postern.yaml', '/srv/p');
  const keys = pathKeys();
  assert.ok(keys.length > 10, keys.join(', '));
  // docs/configuration.md lists them where it says so.
  const doc = readFileSync(new URL('../../docs/configuration.md', import.meta.url), 'utf8');
  const list = /Relative paths are resolved against[^\n]*\n\n([^]*?)\n\n/.exec(doc)?.[1] ?? '';
  for (const key of keys) assert.ok(list.includes(`\`${key.replaceAll('<name>', '*')}\``), `docs/configuration.md's list of relative paths lacks ${key}`);
  for (const key of keys) {
    const values = valuesAt(config, key);
    assert.ok(values.length > 0, `${key}: not set by this test's configuration (add it)`);
    for (const v of values) assert.match(v, /^\/srv\/p\/rel\//, `${key}: ${v} is not resolved against the configuration's folder`);
  }
});

test('postern check and serve refuse a bad configuration with the location, exit 1', () => {
  const dir = mkdtempSync(join(tmpdir(), 'postern-cfg-'));
  const file = join(dir, 'postern.yaml');
  writeFileSync(file, 'listeners:\n  - name: a\n    listen: nowhere\n');
  for (const cmd of ['check', 'serve']) {
    const r = spawnSync(process.execPath, ['engine/cli/main.ts', cmd, '--config', file], { encoding: 'utf8', timeout: 20_000 });
    assert.equal(r.status, 1, `${cmd}: ${r.stderr}`);
    assert.match(r.stderr, new RegExp(`${file.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}:3:13: listeners\\[0\\]\\.listen: expected address:port`));
  }
});

test('delivery is off without a delivery section and on once the section exists', () => {
  const base = 'listeners:\n  - { name: a, listen: "127.0.0.1:25" }\n';
  assert.equal(parseConfig(base, '/p/postern.yaml', '/p').config.delivery.enabled, false);
  const withSection = parseConfig(`${base}delivery:\n  route: { smarthost: { host: relay.test } }\n`, '/p/postern.yaml', '/p').config;
  assert.equal(withSection.delivery.enabled, true);
  assert.deepEqual(withSection.delivery.route, { smarthost: { host: 'relay.test', port: 25, implicitTls: false } });
  assert.equal(parseConfig(`${base}delivery: { enabled: false }\n`, '/p/postern.yaml', '/p').config.delivery.enabled, false);
});
