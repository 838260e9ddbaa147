/**
 * A script that misuses the API, over real SMTP: each misuse gets the reply docs/scripts.md gives it (fail closed,
 * `451 4.3.0 Temporary policy failure, try again later`, unless the docs say otherwise), a decision line that names
 * the script, and an error line that names the script and the line that did it (where the docs promise one).
 * One rcptto script holds every case, one per line, chosen by the recipient's local part.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer } from '../helpers/postern.ts';
import { configYaml, testListener, testServerTls } from '../helpers/config.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { until } from '../helpers/wait.ts';
import { readFile } from 'node:fs/promises';
import { makeTestPki } from '../helpers/pki.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';

const FAILED = '451 4.3.0 Temporary policy failure, try again later';

/** [local part, the line of the script, the reply, what the error line says (null: no error line), its line is known]. */
const CASES: Array<[string, string, string, RegExp | null, boolean]> = [
  ['builder-type', 'return reject(42);', FAILED, /reject\(\): text must be a string/, true],
  ['builder-range', 'return reject("x", { code: 600 });', FAILED, /reject\(\): invalid code 600/, true],
  ['builder-nan', 'return reject("x", { code: NaN });', FAILED, /reject\(\): invalid code NaN/, true],
  ['builder-class', 'return defer("x", { enhanced: "5.7.1" });', FAILED, /defer\(\): invalid enhanced 5\.7\.1/, true],
  ['builder-unknown', 'return reject("x", { disconect: true });', FAILED, /reject\(\): unknown option "disconect"/, true],
  ['builder-username', 'return accept({ username: "alice\\r\\nbob" });', FAILED, /accept\(\): invalid username alice/, true],
  ['builder-hold', 'return accept({ hold: "x".repeat(201) });', FAILED, /accept\(\): invalid hold x{201}/, true],
  ['builder-elsewhere', 'return deliver();', FAILED, /rcptto returned verdict "deliver", expected one of accept, reject, defer/, false],
  ['headers-elsewhere', 'return accept({ headers: [{ op: "add", name: "X-A", value: "1" }] });', FAILED, /headers: only a data hook can edit the message, not rcptto/, false],
  ['hold-elsewhere', 'return accept({ hold: "look" });', FAILED, /hold: only a data hook can hold a message, not rcptto/, false],
  ['literal', 'return { verdict: "reject", code: 553 };', '553 5.7.1 Recipient refused by policy', null, false],
  ['literal-unknown', 'return { verdict: "deny" };', FAILED, /rcptto returned verdict "deny"/, false],
  ['literal-nan', 'return { verdict: "reject", code: NaN };', FAILED, /return value holds NaN at result\.code, not a finite number/, false],
  ['literal-infinity', 'return { verdict: "deliver", port: Infinity };', FAILED, /return value holds Infinity at result\.port/, false],
  ['literal-typo', 'return { verdict: "reject", disconect: true };', FAILED, /reject verdict has no option "disconect"/, false],
  ['literal-bigint', 'return { verdict: "reject", code: 550n };', FAILED, /cannot be copied out of the sandbox: bigint at result\.code/, false],
  ['literal-date', 'return { verdict: "reject", text: new Date(0) };', FAILED, /cannot be copied out of the sandbox: Date object at result\.text/, false],
  ['literal-string', 'return "reject";', FAILED, /rcptto returned string, expected a verdict object or nothing/, false],
  ['promise', 'return Promise.resolve(reject("promised"));', '550 5.7.1 promised', null, false],
  ['async-later', 'return (async () => { await null; return reject("later"); })();', '550 5.7.1 later', null, false],
  ['nothing', 'return;', '250 2.1.5 Accepted', null, false],
  ['null', 'return null;', '250 2.1.5 Accepted', null, false],
  ['throw-error', 'throw new Error("broken");', FAILED, /Error: broken/, true],
  ['throw-string', 'throw "a string";', FAILED, /threw a value that is not an Error: a string/, false],
  ['throw-undefined', 'throw undefined;', FAILED, /threw a value that is not an Error: undefined/, false],
  ['reject-promise', 'return Promise.reject(new TypeError("refused"));', FAILED, /TypeError: refused/, true],
  ['unawaited', 'rate(42, 1, 60); return accept();', FAILED, /rate\(\): key must be a string of 1 to 1024 characters/, true],
  ['rate-nan', 'return (async () => { await rate("k", NaN, 60); })();', FAILED, /rate\(\): limit must be a whole number from 1 to 1000000000, not NaN/, true],
  ['rate-window', 'return (async () => { await rate("k", 1, 1e9); })();', FAILED, /rate\(\): windowSeconds must be a whole number from 1 to 31622400/, true],
  ['rate-key', 'return (async () => { await rate("k".repeat(1025), 1, 60); })();', FAILED, /rate\(\): key must be a string of 1 to 1024 characters/, true],
  ['counter-float', 'return (async () => { await counter("c").add(1.5, 60); })();', FAILED, /counter\(\)\.add\(\): n must be a whole number/, true],
  ['lookup-type', 'lookup("t", 42); return;', FAILED, /lookup\(\): table and key must be strings/, true],
  ['hash-type', 'sha256(42); return;', FAILED, /sha256\(\): /, true],
  ['hash-huge', 'sha256("x".repeat(2 ** 21)); return;', FAILED, /sha256\(\): /, true],
  ['hmac-alg', 'hmac("sha3", "k", "d"); return;', FAILED, /hmac\(\): algorithm must be sha1, sha256, sha512 or md5, not/, true],
  ['dns-type', 'return (async () => { await dns.resolve("example.com", "SRV"); })();', FAILED, /dns\.resolve\(\): type must be A, AAAA, MX, TXT or PTR, not/, true],
  ['dns-timeout', 'return (async () => { await dns.resolve("example.com", "A", { timeoutMs: 0 }); })();', FAILED, /dns\.resolve\(\)/, true],
  ['dnsbl-ip', 'return (async () => { await dnsbl("zen.example", ""); })();', FAILED, /dnsbl\(\): ip must be an IPv4 or IPv6 address/, true],
  ['huge-text', 'return reject("x".repeat(100000));', `550 5.7.1 ${'x'.repeat(400)}`, null, false],
  ['huge-literal-text', 'return { verdict: "reject", text: "y".repeat(100000) };', `550 5.7.1 ${'y'.repeat(400)}`, null, false],
];

const FIRST_LINE = 3;
const SCRIPT = [
  'export default function (ctx) {',
  '  const c = ctx.address.localPart;',
  ...CASES.map(([name, code]) => `  if (c === ${JSON.stringify(name)}) { ${code} }`),
  '}',
].join('\n');

test('each misuse of the script API gets the reply the docs give it, and log lines naming the script and line', async () => {
  const s = await startTestServer({
    scripts: { 'rcptto.js': SCRIPT },
    config: configYaml({ localDomains: ['example.com'], listeners: [testListener('in', { limits: { maxErrors: 1000 } })] }),
  });
  try {
    const c = await SmtpTestClient.connect(s.port('in'));
    await c.hello({ name: 'misuse.test' });
    assert.equal((await c.command('MAIL FROM:<someone@sender.example>')).code, 250);
    const wrong: string[] = [];
    for (const [i, [name, , reply, error, located]] of CASES.entries()) {
      const logged = s.logs.length;
      const r = await c.command(`RCPT TO:<${name}@example.com>`);
      if (r.text !== reply) { wrong.push(`${name}: got ${r.text.slice(0, 120)}, docs say ${reply.slice(0, 60)}`); continue; }
      const to = `${name}@example.com`;
      if (r.code !== 250 && r.code !== 550 && r.code !== 553) {
        await until(`${name}: its decision line`, () => s.logs.some((l) => l.decision === 'defer' && l.to === to));
        const decision = s.logs.find((l) => l.decision === 'defer' && l.to === to)!;
        if (!String(decision.script).endsWith('/rcptto.js') || decision.reason !== 'script rcptto failed (fail closed)') wrong.push(`${name}: decision line ${JSON.stringify(decision)}`);
      }
      if (error === null) continue;
      // The error line comes before the reply it causes.
      const failures = s.logs.slice(logged).filter((l) => String(l.msg).startsWith('policy script rcptto failed: '));
      const lines = failures.filter((l) => error.test(String(l.msg)));
      if (lines.length !== 1 || failures.length !== 1) { wrong.push(`${name}: ${lines.length} error lines matching ${error}: ${failures.map((l) => l.msg).join(' | ')}`); continue; }
      const [line] = lines;
      if (!String(line!.script).endsWith('/rcptto.js')) wrong.push(`${name}: error line names script ${line!.script}`);
      if (located && line!.line !== FIRST_LINE + i) wrong.push(`${name}: error line names line ${line!.line}, not ${FIRST_LINE + i}`);
    }
    await c.quit();
    assert.deepEqual(wrong, []);
  } finally {
    await s.stop();
  }
});

/**
 * "Failing closed … treated as this defer, in every hook": a throw in each SMTP hook gets that hook's documented
 * failure reply (docs/scripts.md, the lifecycle and the defaults table), and connect's closes the connection.
 */
test('a throw in each hook gets the failure reply the docs give that hook', async () => {
  const hooks = ['connect', 'helo', 'auth', 'mailfrom', 'rcptto', 'data'] as const;
  const pki = await makeTestPki();
  const s = await startTestServer({
    files: { users: `bob@example.com:${await hashPassword('s3cret')}\n` },
    // Each hook's script throws on the listener named after it.
    scripts: Object.fromEntries(hooks.map((hook) => [`${hook}.js`, `export default function (ctx) {\n  if (ctx.connection.listener === '${hook}') throw new Error('${hook} broke');\n}\n`])),
    config: configYaml({
      users: './users', localDomains: ['example.com'],
      listeners: hooks.map((hook) => testListener(hook, { tls: testServerTls(pki), auth: { mechanisms: ['PLAIN'] } })),
    }),
  });
  try {
    const ca = await readFile(pki.ca.cert, 'utf8');
    const replies: Record<string, string> = {};
    for (const hook of hooks) {
      const c = await SmtpTestClient.connect(s.port(hook));
      const steps = async (): Promise<string> => {
        const greeting = await c.read();
        if (hook === 'connect') return greeting.text;
        const ehlo = await c.command('EHLO client.example');
        if (hook === 'helo') return ehlo.text;
        await c.starttls({ ca });
        await c.command('EHLO client.example');
        const auth = await c.command(`AUTH PLAIN ${Buffer.from('\0bob@example.com\0s3cret').toString('base64')}`);
        if (hook === 'auth') return auth.text;
        const mail = await c.command('MAIL FROM:<bob@example.com>');
        if (hook === 'mailfrom') return mail.text;
        const rcpt = await c.command('RCPT TO:<user@example.com>');
        if (hook === 'rcptto') return rcpt.text;
        await c.command('DATA');
        c.write('Subject: x\r\n\r\nbody\r\n.');
        return (await c.read()).text;
      };
      replies[hook] = await steps();
      if (hook === 'connect') assert.ok(await c.waitClosed(), 'connect: closed after the reply');
      c.destroy();
    }
    assert.deepEqual(replies, {
      connect: FAILED, helo: FAILED, auth: '454 4.7.0 Temporary policy failure, try again later',
      mailfrom: FAILED, rcptto: FAILED, data: FAILED,
    });
    for (const hook of hooks) {
      assert.ok(s.logs.some((l) => String(l.msg).startsWith(`policy script ${hook} failed:`) && String(l.script).endsWith(`/${hook}.js`) && l.line === 2), hook);
    }
  } finally {
    await s.stop();
  }
});
