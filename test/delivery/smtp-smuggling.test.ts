// SMTP smuggling (CVE-2023-51764 class): a client ends its DATA with a variant a lenient next hop would take
// for the end (<LF>.<CR><LF>, <CR><LF>.<LF>, <LF>.<LF>, <CR>.<CR> …) and pipelines a second, forged message
// behind it. Postern ends DATA only at <CR><LF>.<CR><LF>, so the variant and the forgery are one message's
// text; on the way out every line ends in CRLF and every line-start dot is doubled, so a next hop that
// ends DATA at any of the variants still reads one message. The next hop here is a raw socket recording
// the exact bytes of the DATA phase. The client waits for each reply, pipelines the whole transaction, or sends
// it a byte per write (every split of an ending across packets).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startDeliveryServer, type DeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, smarthostDelivery, testListener } from '../helpers/config.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { startRawSink, type RawSink } from '../helpers/raw-sink.ts';

let sink: RawSink;
let s: DeliveryServer;

before(async () => {
  sink = await startRawSink();
  s = await startDeliveryServer({
    config: configYaml({
      hostname: 'postern.test', localDomains: ['example.com'],
      listeners: [testListener('in')],
      delivery: smarthostDelivery(sink.port, { retrySchedule: [3600] }),
    }),
  });
});
after(async () => {
  await s?.stop();
  await sink?.close();
});

const FORGED = 'MAIL FROM:<ceo@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nSubject: forged\r\n\r\nPay now.\r\n';

const ENDINGS: Record<string, string> = {
  '<LF>.<CR><LF>': '\n.\r\n', '<CR><LF>.<LF>': '\r\n.\n', '<LF>.<LF>': '\n.\n', '<CR>.<CR>': '\r.\r',
  '<CR>.<CR><LF>': '\r.\r\n', '<CR><LF>.<CR>': '\r\n.\r', '<LF>..<CR><LF>': '\n..\r\n',
};

/**
 * How the client sends the transaction: after each reply (`after 354`); MAIL, RCPT, DATA and the message in one
 * write (`pipelined`, no wait for the 354); or all of that a byte per write (`a byte at a time`: every split of an
 * ending across packets, the parser's seams).
 */
const MODES = ['after 354', 'pipelined', 'a byte at a time'] as const;

async function sendTransaction(c: SmtpTestClient, mode: typeof MODES[number], message: string): Promise<string> {
  const commands = ['MAIL FROM:<a@example.org>', 'RCPT TO:<b@example.com>', 'DATA'];
  if (mode === 'after 354') {
    for (const command of commands) assert.ok((await c.command(command)).code < 400);
    c.socket.write(message);
    return (await c.read()).text;
  }
  const bytes = Buffer.from(commands.map((l) => `${l}\r\n`).join('') + message);
  if (mode === 'pipelined') c.socket.write(bytes);
  else {
    c.socket.setNoDelay(true); // each byte its own packet, as far as the kernel goes
    for (const byte of bytes) await new Promise((resolve) => c.socket.write(Buffer.from([byte]), resolve));
  }
  const replies = [];
  for (let i = 0; i < 4; i++) replies.push(await c.read());
  assert.deepEqual(replies.map((r) => r.code), [250, 250, 354, 250], replies.map((r) => r.text).join(' | '));
  return replies[3]!.text;
}

for (const mode of MODES) for (const [name, ending] of Object.entries(ENDINGS)) {
  test(`${mode}: a message "ended" with ${name} and a forged one behind it: one message in, one message out, no bare line end on the wire`, async () => {
    const c = await SmtpTestClient.connect(s.port());
    await c.hello();
    const reply = await sendTransaction(c, mode, `Subject: smuggling ${name} ${mode}\r\n\r\nhello${ending}${FORGED}.\r\n`);
    assert.match(reply, /^250 2\.0\.0 Ok: queued as /);
    assert.equal((await c.command('NOOP')).code, 250, 'nothing of the forgery was read as a command');
    await c.quit();
    const id = /queued as (\S+)/.exec(reply)![1]!;
    const e = await s.nextAttempt((x) => x.id === id, { past: true });
    assert.equal(e.outcomes[0]!.status, 'delivered', e.outcomes[0]!.reply);
    const wire = sink.messages.find((m) => m.includes(` id ${id}`))!;
    assert.ok(wire, 'the next hop got it');
    assert.equal(sink.messages.filter((m) => m.includes('Subject: forged')).length, sink.messages.filter((m) => m.includes('Subject: smuggling')).length,
      'the forged text only ever arrives inside the smuggling message');
    const text = wire.toString('latin1');
    assert.ok(text.includes(`Subject: smuggling ${name} ${mode}`) && text.includes('\r\nSubject: forged\r\n'), 'both parts in the one message');
    assert.doesNotMatch(text, /\r(?!\n)|(?<!\r)\n/, 'every line ends in CRLF');
    assert.doesNotMatch(text, /\r\n\.(?!\.)/, 'every line-start dot is doubled');
  });
}
