// The Received header's "(Authenticated sender: …)" line stays within RFC 5322's 998 characters whatever the
// name: a client's own AUTH username (up to 12 KB in one AUTH line) that an auth script accepts by name, or a script's
// accept({ username }) of any length, wrote a line of that length, which the next hop breaks where it likes
// (as long certificate names did before: see client-certificates.test.ts).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { configYaml, testListener } from '../helpers/config.ts';

let server: TestServer;
before(async () => {
  server = await startTestServer({
    config: configYaml({ localDomains: ['example.com'], users: './users', listeners: [
      testListener('sub', { reverseDns: false, auth: { mechanisms: ['PLAIN'] } }),
    ] }),
    files: { users: '# none: the auth script decides\n' },
    scripts: { 'auth.ts': 'export default (ctx) => ctx.auth.password === "script-name" ? accept({ username: "s".repeat(5000) + "@example.com" })\n' +
      '  : ctx.auth.password === "script-nel" ? accept({ username: "dév\\u0085X-A: 1\\u009bx" }) : accept({ username: ctx.auth.username })' },
  });
});
after(() => server.stop());

const plain = (user: string, password: string): string => `AUTH PLAIN ${Buffer.from(`\0${user}\0${password}`).toString('base64')}`;

for (const [who, user, password] of [['the client', 'ü'.repeat(6000), 'pw'], ['the script', 'alice', 'script-name']] as const) {
  test(`a ${who === 'the client' ? 'client\'s 12 KB username' : 'script\'s 5 KB username'}: every header line within 998 characters`, async () => {
    const c = await SmtpTestClient.connect(server.port('sub'));
    await c.hello();
    assert.equal((await c.command(plain(user, password))).code, 235);
    const r = await c.sendMail('a@example.org', ['b@example.com']);
    assert.equal(r.code, 250, r.text);
    await c.quit();
    const message = (await server.runtime.spool.readMessage(/queued as (\S+)/.exec(r.text)![1]!)).toString('utf8');
    const head = message.slice(0, message.indexOf('\r\n\r\n'));
    for (const line of head.split('\r\n')) assert.ok(Buffer.byteLength(line) <= 998, `${Buffer.byteLength(line)} bytes: ${line.slice(0, 80)}…`);
    // Not an SMTPUTF8 message: the header is 7-bit, each ü a "?" (received-7bit.test.ts).
    assert.match(head, new RegExp(`\\(Authenticated sender: ${who === 'the client' ? '\\?' : 's'}{240}\\.\\.\\.\\)`));
  });
}

// An SMTPUTF8 message keeps the name's non-ASCII text, but not a character that a Unicode-aware reader takes for a
// line break (NEL, U+2028, U+2029: Python's str.splitlines()) or another control: a client's AUTH name
// `dév<U+2028>X-Spam-Flag: NO` that an auth script accepted put a field of the client's choosing, to such a reader,
// in Postern's own Received header (smtp-server refuses C1 controls in a client's name; a script's name may hold them).
for (const [who, password, user, shown] of [
  ['client', 'pw', 'dév\u2028X-Spam-Flag: NO\u2029X-B: 2', 'dév?x-spam-flag: no?x-b: 2'],
  ['script', 'script-nel', 'alice', 'dév?x-a: 1?x'],
] as const) {
  test(`an SMTPUTF8 message: NEL, U+2028, U+2029 and C1 controls of a ${who}'s username are "?" in the Received header`, async () => {
    const c = await SmtpTestClient.connect(server.port('sub'));
    await c.hello();
    const a = await c.command(plain(user, password));
    assert.equal(a.code, 235, a.text);
    assert.equal((await c.command('MAIL FROM:<a@example.org> SMTPUTF8')).code, 250);
    assert.equal((await c.command('RCPT TO:<b@example.com>')).code, 250);
    assert.equal((await c.command('DATA')).code, 354);
    const r = await c.command('Subject: s\r\n\r\nhi\r\n.');
    assert.equal(r.code, 250, r.text);
    await c.quit();
    const message = (await server.runtime.spool.readMessage(/queued as (\S+)/.exec(r.text)![1]!)).toString('utf8');
    const head = message.slice(0, message.indexOf('\r\n\r\n'));
    assert.ok(head.includes(`(Authenticated sender: ${shown})`), head);
    assert.doesNotMatch(head, /[\x80-\x9f\u2028\u2029]/);
  });
}
