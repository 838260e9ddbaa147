// Every SMTP hook of a listener x every verdict and option the script API allows, and hostile ones, over real SMTP:
// each reply is the one docs/scripts.md (§ Verdicts) gives, or the hook's failure reply (fail closed), and at the end
// of data a message is spooled (and held) only when the script accepted it (and held it). One listener per hook,
// whose script applies the case; the case is the client's address (127.0.0.<10 + its index>).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer } from '../helpers/postern.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { until } from '../helpers/wait.ts';

const HOOKS = ['connect', 'helo', 'auth', 'mailfrom', 'rcptto', 'data'] as const;
type Hook = typeof HOOKS[number];
type Expected = string | RegExp;

const FAILED = (h: Hook): string => (h === 'auth' ? '454 4.7.0' : '451 4.3.0') + ' Temporary policy failure, try again later';
const REFUSED: Record<Hook, string> = {
  connect: '554 5.7.1 Connection refused by policy', helo: '550 5.7.1 HELO refused by policy', auth: '535 5.7.8 Authentication credentials invalid',
  mailfrom: '550 5.7.1 Sender refused by policy', rcptto: '550 5.7.1 Recipient refused by policy', data: '550 5.7.1 Message refused by policy',
};
const ACCEPTED: Record<Hook, RegExp> = {
  connect: /^220 /, helo: /^250[ -]/, auth: /^235 2\.7\.0 /, mailfrom: /^250 2\.1\.0 Accepted$/, rcptto: /^250 2\.1\.5 Accepted$/, data: /^250 2\.0\.0 Ok: queued as \w+$/,
};
/** The reply an accept with text gets: its text where the hook's reply carries one, else the hook's own. */
const acceptText = (h: Hook, text: string): RegExp => ({
  mailfrom: new RegExp(`^250 2\\.1\\.0 ${text}$`), rcptto: new RegExp(`^250 2\\.1\\.5 ${text}$`), data: new RegExp(`^250 2\\.0\\.0 ${text}: queued as \\w+$`),
} as Partial<Record<Hook, RegExp>>)[h] ?? ACCEPTED[h];

/** [case, what the script returns, the reply in each hook, at the end of data: spooled, held]. */
const CASES: Array<[string, string, (h: Hook) => Expected, { spooled: boolean; held?: boolean }?]> = [
  ['none', 'undefined', (h) => ACCEPTED[h], { spooled: true }],
  ['accept', 'accept()', (h) => ACCEPTED[h], { spooled: true }],
  ['accept-text', 'accept({ text: "fine\\r\\n550 5.0.0 no\\u0000" })', (h) => acceptText(h, 'fine 550 5\\.0\\.0 no '), { spooled: true }],
  ['accept-username', '({ verdict: "accept", username: "bob@example.com" })', (h) => ACCEPTED[h], { spooled: true }],
  ['hold', 'accept({ hold: "look" })', (h) => (h === 'data' ? ACCEPTED[h] : FAILED(h)), { spooled: true, held: true }],
  ['hold-text-headers', 'accept({ hold: "look", text: "kept", headers: [{ op: "add", name: "X-A", value: "1" }] })', (h) => (h === 'data' ? acceptText(h, 'kept') : FAILED(h)), { spooled: true, held: true }],
  ['headers', 'accept({ headers: [{ op: "add", name: "X-A", value: "1" }] })', (h) => (h === 'data' ? ACCEPTED[h] : FAILED(h)), { spooled: true }],
  ['reject', 'reject("no\\r\\n250 2.0.0 ok\\u0000", { code: 554, enhanced: "5.7.0" })', () => '554 5.7.0 no 250 2.0.0 ok '],
  ['reject-default', 'reject()', (h) => REFUSED[h]],
  ['reject-text-250', '({ verdict: "reject", text: "250 2.0.0 Ok" })', (h) => `${REFUSED[h].slice(0, 9)} 250 2.0.0 Ok`],
  ['reject-8bit', 'reject("Nom refusé")', (h) => `${REFUSED[h].slice(0, 9)} Nom refus?`],
  ['reject-long', 'reject("x".repeat(100000))', (h) => `${REFUSED[h].slice(0, 9)} ${'x'.repeat(400)}`],
  ['defer', 'defer("later", { code: 452, enhanced: "4.2.2" })', () => '452 4.2.2 later'],
  ['defer-disconnect', 'defer(undefined, { disconnect: true })', () => '421 4.7.0 Temporary policy failure, try again later'],
  ['reject-2xx', '({ verdict: "reject", code: 250 })', FAILED],
  ['defer-5xx', '({ verdict: "defer", code: 550 })', FAILED],
  ['code-float', '({ verdict: "reject", code: 550.5 })', FAILED],
  ['code-string', '({ verdict: "reject", code: "550" })', FAILED],
  ['enhanced-class', '({ verdict: "defer", enhanced: "5.7.1" })', FAILED],
  ['text-number', '({ verdict: "reject", text: 42 })', FAILED],
  ['disconnect-string', '({ verdict: "reject", disconnect: "yes" })', FAILED],
  ['hold-number', '({ verdict: "accept", hold: 1 })', FAILED],
  ['username-empty', '({ verdict: "accept", username: "" })', FAILED],
  ['deliver', '({ verdict: "deliver" })', FAILED],
  ['unknown-verdict', '({ verdict: "discard" })', FAILED],
  ['reject-huge', 'reject("x".repeat(10 * 1024 * 1024))', FAILED],
  ['rejects-verdict', 'Promise.reject(accept())', FAILED],
  ['throws-undefined', '(() => { throw undefined; })()', FAILED],
  ['unhandled', '(Promise.reject(new Error("lost")), accept())', FAILED],
];

const script = (hook: Hook): string => `export default function (ctx) {
  if (ctx.connection.listener !== ${JSON.stringify(hook)}) return;
  const c = Number(ctx.connection.remoteAddress.split('.')[3]) - 10;
${CASES.map(([, verdict], i) => `  if (c === ${i}) return ${verdict};`).join('\n')}
}`;

const MESSAGE = 'Subject: matrix\r\n\r\nbody\r\n.';

/** The reply at the hook's step, walking a session up to it. */
async function replyAt(c: SmtpTestClient, hook: Hook): Promise<string> {
  const greeting = await c.read();
  if (hook === 'connect') return greeting.text;
  const ehlo = await c.command('EHLO client.example');
  if (hook === 'helo') return ehlo.text;
  if (hook === 'auth') return (await c.command(`AUTH PLAIN ${Buffer.from('\0bob@example.com\0s3cret').toString('base64')}`)).text;
  const mail = await c.command('MAIL FROM:<bob@example.com>');
  if (hook === 'mailfrom') return mail.text;
  const rcpt = await c.command('RCPT TO:<user@example.com>');
  if (hook === 'rcptto') return rcpt.text;
  assert.equal((await c.command('DATA')).code, 354);
  return (await c.command(MESSAGE)).text;
}

test('each verdict in each SMTP hook gets the reply the docs give it, or the failure reply', async () => {
  const s = await startTestServer({
    files: { users: `bob@example.com:${await hashPassword('s3cret')}\n` },
    scripts: Object.fromEntries(HOOKS.map((h) => [`${h}.js`, script(h)])),
    config: configYaml({
      users: './users', localDomains: ['example.com'],
      listeners: HOOKS.map((h) => testListener(h, { auth: { mechanisms: ['PLAIN'] }, limits: { maxErrors: 100 } })),
    }),
  });
  try {
    const wrong: string[] = [];
    // The cases of one hook at once (each its own client address); the hooks one after another.
    for (const hook of HOOKS) {
      await Promise.all(CASES.map(async ([name, , expected], i) => {
        const c = await SmtpTestClient.connect(s.port(hook), { localAddress: `127.0.0.${10 + i}` });
        const got = await replyAt(c, hook).catch((err: Error) => `(${err.message.split('\n')[0]})`);
        const want = expected(hook);
        const first = got.split('\n')[0]!;
        if (typeof want === 'string' ? first !== want : !want.test(first)) wrong.push(`${hook} ${name}: ${JSON.stringify(first.slice(0, 100))}`);
        // A 421, and any refusal at connect, closes the connection.
        if (/^421 /.test(first) || (hook === 'connect' && !/^220 /.test(first))) {
          if (!(await c.waitClosed())) wrong.push(`${hook} ${name}: not closed after ${first.slice(0, 20)}`);
        }
        c.socket.destroy();
      }));
    }
    // At the end of data: what was spooled, and held, is what the script accepted, and held.
    const expectedSpooled = CASES.flatMap(([name, , , at], i) => (at?.spooled ? [`127.0.0.${10 + i} ${name}${at.held ? ' held' : ''}`] : []));
    await until('an accepted line for each accepted message', () => s.logs.filter((l) => /: accepted from=/.test(String(l.msg))).length >= expectedSpooled.length);
    const spooled = s.logs.filter((l) => /: accepted from=/.test(String(l.msg)))
      .map((l) => `${l.client} ${CASES[Number(String(l.client).split('.')[3]) - 10]![0]}${l.held ? ' held' : ''}`);
    assert.deepEqual(wrong, []);
    assert.deepEqual(spooled.sort(), expectedSpooled.sort());
  } finally {
    await s.stop();
  }
});
