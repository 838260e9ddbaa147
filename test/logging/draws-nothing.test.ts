// Characters that draw nothing beyond the format characters (the other default-ignorable code points: Hangul fillers,
// the combining grapheme joiner, Khmer's inherent vowels, variation selectors that select nothing) are one rule
// (engine/text/draws-nothing.ts) for the envelope, account names and logged client text. The log's escapes and
// certificate account names missed them: a HELO name `c<U+3164>eo.example` was logged as it reads, ceo.example,
// and a certificate naming `c<U+3164>eo@example.test` named an account no person can tell from ceo@.
// Real server, real sockets for the decision line.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { clientText, scriptText, writtenLength } from '../../engine/logging/logger.ts';
import { accountName } from '../../engine/policy/certificate-identity.ts';
import { boundedName } from '../../engine/certificates/describe.ts';
import { loadLocalRecipients } from '../../engine/policy/local-recipients.ts';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { useScratchDir } from '../helpers/scratch.ts';
import { startTestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { configYaml, testListener } from '../helpers/config.ts';

const DRAW_NOTHING = ['\u3164', '\u115f', '\u1160', '\uffa0', '\u034f', '\u17b4', '\u180b', '\ufe0f', '\ufe00', '\u{e0100}'];
const hex = (ch: string): string => ch.codePointAt(0)!.toString(16);
const scratch = useScratchDir('postern-draws-nothing-');

test('logged client and script text write each character that draws nothing as \\u{…}; an emoji keeps its presentation selector', () => {
  for (const ch of DRAW_NOTHING) {
    assert.equal(clientText(`c${ch}eo`), `c\\u{${hex(ch)}}eo`, `U+${hex(ch)}`);
    assert.equal(scriptText(`c${ch}eo`), `c\\u{${hex(ch)}}eo`, `U+${hex(ch)}`);
    assert.equal(writtenLength(`c${ch}eo`), JSON.stringify(scriptText(`c${ch}eo`)).length - 2, `U+${hex(ch)}`);
  }
  for (const drawn of ['\u2764\ufe0f', 'room1\ufe0f\u20e3', '\u0645\u06cc\u0627']) {
    assert.equal(scriptText(drawn), drawn);
    assert.equal(writtenLength(drawn), drawn.length);
  }
  assert.equal(clientText('\u2764\ufe0f'), '\u2764\ufe0f');
});

test('a certificate field with a character that draws nothing names no account', () => {
  assert.equal(accountName('ceo@example.test'), 'ceo@example.test');
  for (const ch of DRAW_NOTHING) assert.equal(accountName(`c${ch}eo@example.test`), null, `U+${hex(ch)}`);
  assert.equal(accountName('\u2764\ufe0f@example.test'), '\u2764\ufe0f@example.test');
});

test('a client certificate\'s name in a log line: a character that draws nothing is written as the RFC 4514 escapes of its bytes', () => {
  assert.equal(boundedName('CN=c\u3164eo'), 'CN=c\\E3\\85\\A4eo');
  for (const ch of DRAW_NOTHING) assert.doesNotMatch(boundedName(`CN=c${ch}eo`), new RegExp(ch, 'u'), `U+${hex(ch)}`);
  assert.equal(boundedName('CN=\u2764\ufe0f'), 'CN=\u2764\ufe0f');
});

test('a local recipient table listing a local part with a character that draws nothing is refused: no client can send it', async () => {
  const dir = scratch.path;
  for (const ch of DRAW_NOTHING) {
    const file = join(dir, 'recipients');
    await writeFile(file, `ok@example.test\nc${ch}eo@example.test\n`);
    await assert.rejects(loadLocalRecipients(file), /recipients:2: .*control, format or quote characters/, `U+${hex(ch)}`);
  }
  const file = join(dir, 'recipients');
  await writeFile(file, 'ok@example.test\n\u2764\ufe0f@example.test\n');
  await loadLocalRecipients(file);
});

test('a HELO name with a Hangul filler is escaped in the decision line, its field and its message', async () => {
  const s = await startTestServer({ config: configYaml({ localDomains: ['example.test'], listeners: [testListener('mx', { tls: { mode: 'none' } })] }) });
  try {
    const c = await SmtpTestClient.connect(s.port('mx'));
    await c.read();
    assert.equal((await c.command('EHLO c\u3164eo.example')).code, 250);
    assert.equal((await c.command('RCPT TO:<a@example.test>')).code, 503); // a refusal: its line names the HELO name
    await c.quit();
    const line = s.logs.find((l) => l.decision === 'reject' && l.stage === 'RCPT');
    assert.equal(line?.helo, 'c\\u{3164}eo.example');
    assert.match(String(line?.msg), /helo=<c\\u\{3164\}eo\.example>/);
    assert.doesNotMatch(JSON.stringify(s.logs), /\u3164/);
  } finally { await s.stop(); }
});
