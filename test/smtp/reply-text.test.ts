// A script's reply text reaches the client as one line: line breaks of any kind (CR, LF, NEL, U+2028/2029)
// and other controls become spaces, so a verdict cannot split the reply (a forged "250" after its 550) nor
// carry terminal controls to whoever reads the client's transcript; nor be longer than a reply line may be
// (512 octets, RFC 5321 §4.5.3.1.5), counted in bytes, whatever a client fed it. Real SMTP on 127.0.0.1.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { startTestServer, PLAIN_MX_CONFIG } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { closed } from '../helpers/wait.ts';

test('verdict texts with CR LF, NEL, C1 controls and Unicode line separators stay one clean line', async () => {
  const server = await startTestServer({
    config: configYaml({ localDomains: ['example.com'], listeners: [testListener('in', { tls: { mode: 'none' } })] }),
    scripts: {
      'rcptto.ts': `const TEXTS = {
  crlf: 'No\\r\\n250 2.1.5 forged',
  nel: 'No\\u0085250 forged',
  c1: 'No\\u009b31m red',
  ls: 'No\\u2028250 forged\\u2029end',
};
export default function (ctx) { return reject(TEXTS[ctx.address.localPart]); }`,
    },
  });
  try {
    const c = await SmtpTestClient.connect(server.port('in'));
    await c.hello();
    assert.equal((await c.command('MAIL FROM:<a@example.org>')).code, 250);
    const expected: Record<string, string> = {
      crlf: '550 5.7.1 No 250 2.1.5 forged', nel: '550 5.7.1 No 250 forged', c1: '550 5.7.1 No 31m red', ls: '550 5.7.1 No 250 forged end',
    };
    for (const [local, line] of Object.entries(expected)) {
      const r = await c.command(`RCPT TO:<${local}@example.com>`);
      assert.equal(r.text, line, local);
    }
    // Nothing else arrived: the next command's reply is its own.
    assert.equal((await c.command('NOOP')).code, 250);
    await c.quit();
  } finally {
    await server.stop();
  }
});

/** Every reply line the server writes, as bytes: the greeting, then one reply per command, each awaited. */
async function rawReplyLines(port: number, commands: Buffer[]): Promise<Buffer[]> {
  const socket = net.connect(port, '127.0.0.1');
  let all = Buffer.alloc(0);
  let wake: () => void = () => undefined;
  socket.on('data', (d: Buffer) => { all = Buffer.concat([all, d]); wake(); });
  socket.on('error', () => undefined);
  const linesOf = (): Buffer[] => {
    const lines: Buffer[] = [];
    for (let from = 0, at = all.indexOf('\r\n'); at !== -1; from = at + 2, at = all.indexOf('\r\n', from)) lines.push(all.subarray(from, at + 2));
    return lines;
  };
  /** Until `n` replies have ended (a line `ddd ` ends one; `ddd-` goes on). */
  const replies = async (n: number): Promise<void> => {
    while (linesOf().filter((l) => l[3] === 0x20).length < n) await new Promise<void>((resolve) => { wake = resolve; });
  };
  await replies(1);
  for (const [i, command] of commands.entries()) {
    socket.write(command);
    await replies(i + 2);
  }
  socket.end('QUIT\r\n');
  await closed(socket);
  return linesOf().filter((l) => !l.toString().startsWith('250-'));
}

test('a script\'s reply text is one line of at most 512 octets (RFC 5321), whatever a client\'s non-ASCII name puts in it, and no character is cut in half', async () => {
  const s = await startTestServer({
    config: PLAIN_MX_CONFIG,
    scripts: {
      // A careless script: the client's HELO name repeated into the reply.
      'helo.ts': `export default (ctx) => ctx.helo.name.startsWith('x') ? reject('bad ' + ctx.helo.name.repeat(200)) : undefined;`,
      'mailfrom.ts': `export default (ctx) => ctx.address.localPart === 'emoji' ? reject('a' + '\\u{1F600}'.repeat(200)) : undefined;`,
    },
  });
  try {
    const lines = await rawReplyLines(s.port('mx'), [
      Buffer.from(`EHLO x${'ü'.repeat(20)}.example\r\n`), // 49 bytes of UTF-8 in 29 characters, 200 times
      Buffer.from('EHLO client.example\r\n'),
      Buffer.from('MAIL FROM:<emoji@b.example> SMTPUTF8\r\n'), // UTF-8 replies only to SMTPUTF8 (see below)
    ]);
    for (const line of lines) assert.ok(line.length <= 512, `a reply line of ${line.length} octets: ${line.toString().slice(0, 60)}…`);
    const text = lines.map((l) => l.toString('utf8'));
    assert.ok(!text.join('').includes('\uFFFD'), 'no character cut in half');
    assert.match(text[1]!, /^550 5\.7\.1 bad (x\?{20}\.example)+x\?*\r\n$/); // 7-bit: the client did not say SMTPUTF8
    const emoji = text.find((t) => t.startsWith('550 5.7.1 a\u{1F600}'));
    assert.equal(emoji, `550 5.7.1 a${'\u{1F600}'.repeat(99)}\r\n`); // 1 + 99 × 4 = 397 bytes of text: the 100th would pass 400
  } finally { await s.stop(); }
});

test('the data hook\'s long accept text gives way to the queue id: the reply still says which message was queued', async () => {
  const s = await startTestServer({
    config: PLAIN_MX_CONFIG,
    scripts: { 'data.ts': `export default () => accept({ text: 'Thank you '.repeat(40) });` },
  });
  try {
    const c = await SmtpTestClient.connect(s.port('mx'));
    await c.hello();
    const r = await c.sendMail('a@b.example', ['x@example.com']);
    const id = /: queued as ([0-9a-z]+)$/.exec(r.text)?.[1];
    assert.ok(id, r.text);
    assert.ok(r.text.startsWith('250 2.0.0 Thank you Thank you'), r.text);
    assert.ok(Buffer.byteLength(r.text) + 2 <= 512);
    await s.runtime.spool.readEnvelope(id); // the id names the message spooled
    await c.quit();
  } finally { await s.stop(); }
});

// RFC 5321 §2.4, RFC 6531 §3.7.4.2: replies are ASCII unless the transaction's MAIL FROM declared SMTPUTF8. A
// script's text in the operator's language, or built from a client's UTF-8 HELO name or address, went out as
// UTF-8 to every client (one reading replies as Latin-1 or ASCII shows mojibake, a strict one fails the reply).
test('UTF-8 in reply texts goes only to a transaction that declared SMTPUTF8; any other reply is 7-bit, each character "?"', async () => {
  const s = await startTestServer({
    config: PLAIN_MX_CONFIG,
    scripts: {
      'helo.ts': `export default (ctx) => ctx.helo.name.startsWith('r') ? reject('Nom refusé: ' + ctx.helo.name) : undefined;`,
      'mailfrom.ts': `export default (ctx) => ctx.address.localPart === 'no' ? reject('Expéditeur refusé') : undefined;`,
      'rcptto.ts': `export default (ctx) => reject('Destinataire inconnu: ' + ctx.address.address + ' 🚫');`,
    },
  });
  try {
    const lines = await rawReplyLines(s.port('mx'), [
      Buffer.from('EHLO réseau.example\r\n'),
      Buffer.from('EHLO client.example\r\n'),
      Buffer.from('MAIL FROM:<no@b.example>\r\n'),
      Buffer.from('MAIL FROM:<a@b.example>\r\n'),
      Buffer.from('RCPT TO:<x@xn--bcher-kva.example>\r\n'),
      Buffer.from('RSET\r\n'),
      Buffer.from('MAIL FROM:<no@b.example> SMTPUTF8\r\n'),
      Buffer.from('MAIL FROM:<a@b.example> SMTPUTF8\r\n'),
      Buffer.from('RCPT TO:<jörg@bücher.example>\r\n'),
      Buffer.from('RSET\r\n'),
      Buffer.from('MAIL FROM:<a@b.example>\r\n'),
      Buffer.from('RCPT TO:<x@example.com>\r\n'),
    ]);
    const text = lines.map((l) => l.toString('utf8').trimEnd());
    assert.deepEqual(text.filter((t) => /^5/.test(t)), [
      '550 5.7.1 Nom refus?: r?seau.example',
      '550 5.7.1 Exp?diteur refus?',
      '550 5.7.1 Destinataire inconnu: x@xn--bcher-kva.example ?',
      '550 5.7.1 Expéditeur refusé', // the MAIL FROM that declared SMTPUTF8: its own reply may be UTF-8
      '550 5.7.1 Destinataire inconnu: jörg@bücher.example 🚫',
      '550 5.7.1 Destinataire inconnu: x@example.com ?', // a new transaction without SMTPUTF8
    ]);
    // eslint-disable-next-line no-control-regex
    const eightBit = lines.filter((l) => /[^\x00-\x7f]/.test(l.toString('latin1')));
    assert.equal(eightBit.length, 2, 'only the two replies within SMTPUTF8 carry 8-bit octets');
  } finally { await s.stop(); }
});
