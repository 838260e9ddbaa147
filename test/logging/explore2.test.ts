import { test, before, after } from 'node:test';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { configYaml, testListener, testServerTls } from '../helpers/config.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';

let s: TestServer;
const SECRET = 'alice-Secret-1';
const B64 = Buffer.from(SECRET).toString('base64');
before(async () => {
  const pki = await makeTestPki();
  s = await startTestServer({
    files: { users: `alice@example.com:${await hashPassword(SECRET)}\n` },
    config: configYaml({
      hostname: 'mx.test', localDomains: ['example.test'], users: './users', log: { level: 'trace' },
      listeners: [
        testListener('tls', { tls: testServerTls(pki), auth: { mechanisms: ['PLAIN', 'LOGIN'] }, limits: { tlsHandshakeTimeoutMs: 300 } }),
        testListener('mx', { tls: { mode: 'none' }, auth: { mechanisms: ['PLAIN'] } }),
      ],
    } as never),
  });
});
after(() => s?.stop());

test('explore2', async () => {
  let m = s.logs.length;
  const show = (what: string) => { console.log('==', what); for (const l of s.logs.slice(m)) if (Number(l.level) >= 30 || JSON.stringify(l).includes(SECRET) || JSON.stringify(l).includes(B64) || JSON.stringify(l).includes(Buffer.from('alice@example.com').toString('base64'))) console.log(JSON.stringify(l).slice(0, 400)); m = s.logs.length; };
  let c = await SmtpTestClient.connect(s.port('mx'));
  await c.read(); await c.command('EHLO x');
  c.socket.write(`AUTH LOGIN\r\n${Buffer.from('alice@example.com').toString('base64')}\r\n${B64}\r\n`);
  for (let i = 0; i < 3; i++) console.log((await c.read()).text);
  await c.quit();
  await new Promise((r) => setTimeout(r, 200)); show('pipelined LOGIN refused mech');

  c = await SmtpTestClient.connect(s.port('tls'));
  await c.read(); await c.command('EHLO x');
  console.log((await c.command('STARTTLS')).text);
  c.socket.write('garbage garbage garbage\r\n');
  await c.waitClosed(); await new Promise((r) => setTimeout(r, 200)); show('STARTTLS garbage');

  c = await SmtpTestClient.connect(s.port('tls'));
  await c.read(); await c.command('EHLO x');
  console.log((await c.command('STARTTLS')).text);
  await c.waitClosed(); await new Promise((r) => setTimeout(r, 200)); show('STARTTLS timeout');

  c = await SmtpTestClient.connect(s.port('tls'));
  await c.read(); await c.command('EHLO x');
  console.log((await c.command('STARTTLS x')).text);
  console.log((await c.command(`AUTH PLAIN ${Buffer.from(`\0alice@example.com\0${SECRET}`).toString('base64')}`)).text);
  console.log((await c.command('GET / HTTP/1.1')).text);
  await c.waitClosed(); await new Promise((r) => setTimeout(r, 200)); show('misc');

  c = await SmtpTestClient.connect(s.port('mx'));
  await c.read(); await c.command('EHLO x');
  console.log((await c.command('STARTTLS')).text);
  console.log((await c.command('AUTH LOGIN')).text);
  console.log((await c.command('*')).text);
  console.log((await c.command('AUTH PLAIN')).text);
  console.log((await c.command('*')).text);
  console.log((await c.command(`AUTH PLAIN ${Buffer.from(`\0alice@example.com\0wrong`).toString('base64')} extra`)).text);
  console.log((await c.command(`AUTH PLAIN ${SECRET}`)).text);
  await c.quit(); await new Promise((r) => setTimeout(r, 200)); show('mx misc');
});
