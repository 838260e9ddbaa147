// Configurations an administrator can plausibly write that would open the server: each is refused, or said
// by `postern check` and the start's log at the line of the key, never taken silently.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { rootCertificates } from 'node:tls';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { runCli } from '../helpers/cli.ts';
import { runInProcess } from '../helpers/cli-in-process.ts';
import { checkCommand } from '../../engine/cli/check.ts';
import { useScratchDir } from '../helpers/scratch.ts';
import { startPostern } from '../../engine/app/postern.ts';
import { createLogger } from '../../engine/logging/logger.ts';
import { ConfigError } from '../../engine/config/config-error.ts';
import { parseConfig } from '../../engine/config/load-config.ts';

let pki: TestPki;
const scratch = useScratchDir('postern-open-by-mistake-');
before(async () => {
  pki = await makeTestPki();
  await mkdir(`${scratch.path}/scripts`);
});

/** `postern check --config FILE` with the same code in this process: for a case's variants, once its first is the real command line. */
const checkHere = (config: string) => runInProcess(() => checkCommand({ config }));

/** `line:column` of `value` in `text`. */
function at(text: string, value: string): string {
  const before = text.slice(0, text.indexOf(value)).split('\n');
  return `${before.length}:${before.at(-1)!.length + 1}`;
}

test('a public CA in a listener\'s caFiles (the system bundle) is refused: any web certificate would verify and relay', async () => {
  // Our CA first, then what `cat /etc/ssl/certs/ca-certificates.crt >> clients-ca.crt` adds: Mozilla's roots.
  // With relayClientCertificates (or a certificate field naming accounts, or EXTERNAL), anyone with a
  // certificate from a public CA (a Let's Encrypt one had clientAuth) would relay as a trusted client.
  const bundle = await scratch.file('clients-ca.crt', (await readFile(pki.ca.cert, 'utf8')) + rootCertificates.slice(0, 3).join('\n') + '\n');
  /** A listener that lets every certificate verified against `caFile` relay; `more` is added to the file. */
  const relaying = (caFile: string, more = '') => `dataDir: ${scratch.path}/data
scripts: ${scratch.path}/scripts
listeners:
  - name: submission
    listen: 127.0.0.1:0
    relayClientCertificates: true
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${caFile}] }
${more}`;
  const text = relaying(bundle);
  const config = await scratch.file('postern.yaml', text);
  const line = new RegExp(`^${config}:${at(text, bundle)}: listeners\\[0\\]\\.tls\\.caFiles\\[0\\]: ${bundle}: ".*" is a public CA \\(the root ".*" of Mozilla's store, or issued by it\\): every certificate it issues, to anyone who asks, would verify as a client's`);
  const checked = await runCli(['check', '--config', config]);
  assert.equal(checked.code, 1, checked.stderr);
  assert.match(checked.stderr, line);
  const sink = new Writable({ write(_chunk, _enc, cb) { cb(); } });
  await assert.rejects(startPostern({ configPath: config, logger: createLogger('info', sink) }), (err: unknown) => {
    assert.ok(err instanceof ConfigError, String(err));
    assert.match(err.message, line);
    return true;
  });

  // Our own CA alone is fine; and delivery may verify next hops against public roots (that is what they are for).
  const own = relaying(pki.ca.cert, `delivery:\n  caFiles: { public: ${bundle} }\n`);
  const fine = await checkHere(await scratch.file('own.yaml', own));
  assert.equal(fine.code, 0, fine.stderr);
});

test('PLAIN or LOGIN on a tls.mode none listener reachable beyond loopback: postern check and the start say so at the key\'s line', async () => {
  // Accepted as it is (a balancer may end TLS), but never silently: every password would cross in clear text.
  const listener = (listen: string, tls = '') => `dataDir: ${scratch.path}/data
scripts: ${scratch.path}/scripts
localDomains: [example.com]
listeners:
  - name: submission
    listen: "${listen}"
    auth: { mechanisms: [EXTERNAL, PLAIN, LOGIN] }
${tls}`;
  const warned = /^warning: (.*): listeners\[0\]\.auth\.mechanisms: PLAIN and LOGIN on tls\.mode none: passwords cross the network in clear text/m;
  // Behind a balancer on the same host (HAProxy in TCP mode forwarding 587 to 127.0.0.1), a loopback address
  // says nothing about where the client is: every client is remote, and so is its password unless the balancer ends TLS.
  const proxied = '    proxyProtocol: { trusted: [127.0.0.0/8] }\n';
  for (const [listen, more] of [['0.0.0.0:0', ''], ['[::]:0', ''], ['192.0.2.1:0', ''], ['127.0.0.1:0', proxied], ['localhost:0', proxied]]) {
    const text = listener(listen!, more).replace('EXTERNAL, ', '');
    const config = await scratch.file('cleartext.yaml', text);
    const r = listen === '0.0.0.0:0' ? await runCli(['check', '--config', config]) : await checkHere(config);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(warned.exec(r.stderr)?.[1], `${config}:${at(text, '[PLAIN')}`, `${listen}: ${r.stderr}`);
  }
  const quiet = [
    listener('127.0.0.1:0').replace('EXTERNAL, ', ''), listener('[::1]:0').replace('EXTERNAL, ', ''), listener('localhost:0').replace('EXTERNAL, ', ''),
    listener('0.0.0.0:0', `    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${pki.ca.cert}] }\n`),
  ];
  for (const text of quiet) {
    const r = await checkHere(await scratch.file('quiet.yaml', text));
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stderr, /clear text/, text);
  }

  // The start's log says it too, with the same line.
  const text = listener('0.0.0.0:0').replace('EXTERNAL, ', '');
  const config = await scratch.file('start.yaml', text);
  let log = '';
  const sink = new Writable({ write(chunk, _enc, cb) { log += String(chunk); cb(); } });
  const app = await startPostern({ configPath: config, logger: createLogger('info', sink) });
  try {
    const line = log.split('\n').find((l) => l.includes('clear text'));
    assert.ok(line, log);
    const entry = JSON.parse(line) as { level: number; msg: string };
    assert.equal(entry.level, 40);
    assert.ok(entry.msg.startsWith(`${config}:${at(text, '[PLAIN')}: listeners[0].auth.mechanisms: PLAIN and LOGIN on tls.mode none`), entry.msg);
  } finally {
    await app.close();
  }
});

test('a submission port without auth.required, and a policy service beyond loopback: said at the key\'s line', async () => {
  // Port 587 set up like the MX: any client may submit without a login (RFC 6409 §4.3 wants MAIL refused).
  // The literal port is what is known (a balancer's 587 forwarded to another port is not).
  const text = `dataDir: ${scratch.path}/data
scripts: ${scratch.path}/scripts
localDomains: [example.com]
listeners:
  - name: submission
    listen: "127.0.0.1:587"
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key} }
    auth: { mechanisms: [PLAIN] }
    senderLogin: { enforce: true }
  - name: submissions
    listen: "127.0.0.1:465"
    tls: { mode: implicit, cert: ${pki.server.cert}, key: ${pki.server.key} }
    auth: { mechanisms: [PLAIN], required: true }
    senderLogin: { enforce: true }
policyServices:
  - { name: policy, listen: "0.0.0.0:10040" }
  - { name: local, listen: "127.0.0.1:10041" }
`;
  const config = await scratch.file('submission.yaml', text);
  const r = await runCli(['check', '--config', config]);
  assert.equal(r.code, 0, r.stderr);
  const warned = r.stderr.split('\n').filter((l) => l.startsWith(`warning: ${config}:`));
  assert.equal(warned.length, 2, r.stderr);
  assert.ok(warned[0]!.startsWith(`warning: ${config}:${at(text, '"127.0.0.1:587"')}: listeners[0].listen: port 587 is for submission, but auth.required is false: any client may send here without a login`), warned[0]);
  assert.ok(warned[1]!.startsWith(`warning: ${config}:${at(text, '"0.0.0.0:10040"')}: policyServices[0].listen: the policy protocol has no authentication`), warned[1]);
  // (No localRecipients, but no delivery either: nothing bounces, so the local domains accepting anyone is not said.)
});

test('a default outbound client certificate on delivery.tls.mode may: said at its line (a stripped STARTTLS sends the mail in plaintext, uncertified)', async () => {
  const delivery = (tls: string) => `dataDir: ${scratch.path}/data
scripts: ${scratch.path}/scripts
listeners: [{ name: in, listen: "127.0.0.1:0" }]
delivery:
  route: { smarthost: { host: relay.example.net, port: 25 } }
  tls: ${tls}
  clientCertificates: { laptop: { cert: ${pki.clients.alice.cert}, key: ${pki.clients.alice.key} } }
`;
  const text = delivery('{ clientCertificate: laptop }');
  const config = await scratch.file('may-cert.yaml', text);
  const r = await runCli(['check', '--config', config]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr, `warning: ${config}:${at(text, 'laptop }')}: delivery.tls.clientCertificate: presented on tls.mode may (the default): a next hop that does not offer STARTTLS, or an attacker on the path who strips it, gets the mail in plaintext and no certificate, and a relay that relays for the certificate then refuses it (the mail bounces); set tls.mode encrypt or verify, or let a predelivery script choose the mode per destination\n`);
  for (const tls of ['{ mode: encrypt, clientCertificate: laptop }', '{ mode: verify, clientCertificate: laptop }', '{ mode: may }']) {
    const quiet = await checkHere(await scratch.file('may-cert-quiet.yaml', delivery(tls)));
    assert.equal(quiet.code, 0, quiet.stderr);
    assert.equal(quiet.stderr, '', tls);
  }
});

test('a listener where clients log in with nothing binding a login to its senders (no senderLogin.enforce, no mailfrom script) is said at the key\'s line', async () => {
  // The Dovecot-style submission listener as written from the migration table: alice logs in and sends as the CEO.
  const bound = join(scratch.path, 'bound-scripts');
  await mkdir(bound, { recursive: true });
  await writeFile(join(bound, 'mailfrom.ts'), 'export default function () { return undefined; }\n');
  const tls = `tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${pki.ca.cert}] }`;
  const text = `dataDir: ${scratch.path}/data
scripts: ${scratch.path}/scripts
localDomains: [example.com]
listeners:
  - name: passwords
    listen: "127.0.0.1:0"
    ${tls}
    auth: { mechanisms: [EXTERNAL, PLAIN], required: true }
  - name: devices
    listen: "127.0.0.1:0"
    ${tls}
    certificateIdentity: { field: emailAddress, autoLogin: true }
  - name: enforced
    listen: "127.0.0.1:0"
    ${tls}
    auth: { mechanisms: [PLAIN], required: true }
    senderLogin: { enforce: true }
  - name: scripted
    listen: "127.0.0.1:0"
    ${tls}
    auth: { mechanisms: [PLAIN], required: true }
    scripts: ${bound}
  - { name: mx, listen: "127.0.0.1:0" }
`;
  const config = await scratch.file('unbound.yaml', text);
  const r = await runCli(['check', '--config', config]);
  assert.equal(r.code, 0, r.stderr);
  const warned = r.stderr.split('\n').filter((l) => l.includes('nothing binds a login to its senders'));
  const says = 'clients log in here, but nothing binds a login to its senders: any account may send as any address, another user\'s included (MAIL FROM and From:); set senderLogin.enforce: true';
  assert.deepEqual(warned.map((l) => l.slice(0, l.indexOf(' (Postfix'))), [
    `warning: ${config}:${at(text, '[EXTERNAL, PLAIN]')}: listeners[0].auth.mechanisms: ${says}`,
    `warning: ${config}:${at(text, 'true }\n  - name: enforced')}: listeners[1].certificateIdentity.autoLogin: ${says}`,
  ], r.stderr);
});

test('a script file that implements no hook (rcptTo.ts, mail_from.js, rcptto.cjs) is said, not silently skipped', async () => {
  // Its author meant a policy (here: refuse every recipient) that never runs: the built-in rules decide alone.
  const dir = join(scratch.path, 'stray-scripts');
  await mkdir(dir);
  for (const name of ['rcptTo.ts', 'mail_from.js', 'rcptto.cjs']) await writeFile(join(dir, name), 'export default function () { return reject("no"); }\n');
  await writeFile(join(dir, 'data.ts'), 'export default function () { return undefined; }\n');
  // Not scripts: declarations for editors, editor leftovers, notes.
  for (const name of ['postern.d.ts', '.rcptto.ts.swp', 'rcptto.ts~', '#rcptto.ts#', 'README.md', 'tsconfig.json']) await writeFile(join(dir, name), '');
  const text = `dataDir: ${scratch.path}/data
scripts: ${dir}
localDomains: [example.com]
listeners:
  - { name: mx, listen: "127.0.0.1:0" }
`;
  const config = await scratch.file('stray.yaml', text);
  const r = await runCli(['check', '--config', config]);
  assert.equal(r.code, 0, r.stderr);
  const warned = r.stderr.split('\n').filter((l) => l.includes('never runs')).map((l) => l.slice(0, l.indexOf(': not a hook')));
  assert.deepEqual(warned, ['mail_from.js', 'rcptTo.ts', 'rcptto.cjs'].map((n) => `warning: ${join(dir, n)}`), r.stderr);

  let log = '';
  const sink = new Writable({ write(chunk, _enc, cb) { log += String(chunk); cb(); } });
  const app = await startPostern({ configPath: config, logger: createLogger('info', sink) });
  await app.close();
  assert.ok(log.includes(`"msg":"${join(dir, 'rcptTo.ts')}: not a hook's script, so it never runs`), log);
});

test('a localDomains entry no recipient can match (a wildcard, an @, an empty name) is refused at its line', () => {
  // `*.example.com` meant "every subdomain" and matched nothing: their mail was refused as relay, silently.
  const parse = (domains: string) => parseConfig(`localDomains: [${domains}]\nlisteners: [{ name: mx, listen: "127.0.0.1:0" }]\n`, 'p.yaml', '/tmp');
  for (const bad of ['"*.example.com"', '"*"', '""', '"@example.com"', '"a b.example"']) {
    assert.throws(() => parse(`example.com, ${bad}`), (err: Error) => {
      assert.match(err.message, /^p\.yaml:1:\d+: localDomains\[1\]: expected a domain name \(no wildcards: list each domain, subdomains too\)/);
      return true;
    }, bad);
  }
  for (const good of ['example.com', 'Example.COM.', 'bücher.example', 'xn--bcher-kva.example', '"[192.0.2.1]"', '"[IPv6:2001:db8::1]"', 'localhost']) {
    assert.deepEqual(parse(good).config.localDomains.length, 1, good);
  }
});
