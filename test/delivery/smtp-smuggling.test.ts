// SMTP smuggling (CVE-2023-51764 class): a client ends its DATA with a variant a lenient next hop would take
// for the end (<LF>.<CR><LF>, <CR><LF>.<LF>, <LF>.<LF>, <CR>.<CR> …) and pipelines a second, forged message
// behind it. Postern ends DATA only at <CR><LF>.<CR><LF>, so the variant and the forgery are one message's
// text; on the way out every line ends in CRLF and every line-start dot is doubled, so a next hop that
// ends DATA at any of the variants still reads one message. The next hop here is a raw socket recording
// the exact bytes of the DATA phase.
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

for (const [name, ending] of Object.entries(ENDINGS)) {
  test(`a message "ended" with ${name} and a forged one behind it: one message in, one message out, no bare line end on the wire`, async () => {
    const c = await SmtpTestClient.connect(s.port());
    await c.hello();
    assert.equal((await c.command('MAIL FROM:<a@example.org>')).code, 250);
    assert.equal((await c.command('RCPT TO:<b@example.com>')).code, 250);
    assert.equal((await c.command('DATA')).code, 354);
    c.socket.write(`Subject: smuggling ${name}\r\n\r\nhello${ending}${FORGED}.\r\n`);
    const r = await c.read();
    assert.match(r.text, /^250 2\.0\.0 Ok: queued as /);
    assert.equal((await c.command('NOOP')).code, 250, 'nothing of the forgery was read as a command');
    await c.quit();
    const id = /queued as (\S+)/.exec(r.text)![1]!;
    const e = await s.nextAttempt((x) => x.id === id, { past: true });
    assert.equal(e.outcomes[0]!.status, 'delivered', e.outcomes[0]!.reply);
    const wire = sink.messages.find((m) => m.includes(` id ${id}`))!;
    assert.ok(wire, 'the next hop got it');
    assert.equal(sink.messages.filter((m) => m.includes('Subject: forged')).length, sink.messages.filter((m) => m.includes('Subject: smuggling')).length,
      'the forged text only ever arrives inside the smuggling message');
    const text = wire.toString('latin1');
    assert.ok(text.includes(`Subject: smuggling ${name}`) && text.includes('\r\nSubject: forged\r\n'), 'both parts in the one message');
    assert.doesNotMatch(text, /\r(?!\n)|(?<!\r)\n/, 'every line ends in CRLF');
    assert.doesNotMatch(text, /\r\n\.(?!\.)/, 'every line-start dot is doubled');
  });
}
