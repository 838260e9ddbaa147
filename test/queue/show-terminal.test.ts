/**
 * `postern queue show ID` prints the message as spooled, whose bytes its sender chose. On a terminal (a pty,
 * from script(1)) its control characters are shown, not acted on: an ESC sequence in a message cleared the
 * operator's screen, set the window title (or, in some terminals, wrote the clipboard), and a bare CR hid
 * what came before it on the line. Into a pipe the bytes are written unchanged.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startTestServer } from '../helpers/postern.ts';
import { submitMessage } from '../helpers/smtp-client.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { needs } from '../helpers/example.ts';

const MAIN = fileURLToPath(new URL('../../engine/cli/main.ts', import.meta.url));
const BODY = 'Subject: invoice\x1b]0;owned\x07\r\n\r\nsee below\x1b[2J\rhidden\u009b31m red\r\n';

test('queue show on a terminal shows a message\'s control characters; into a pipe, the bytes as they are', { ...needs('script'), timeout: 60_000 }, async () => {
  const s = await startTestServer({ config: configYaml({ localDomains: ['example.test'], listeners: [testListener('in')] }) });
  try {
    const id = await submitMessage(s.port('in'), 'a@example.test', ['b@example.test'], BODY);
    const config = join(s.dir, 'postern.yaml');
    const command = [process.execPath, MAIN, 'queue', 'show', id, '-c', config].map((a) => `'${a}'`).join(' ');
    const onTerminal = execFileSync('script', ['-qec', command, '/dev/null'], { timeout: 30_000 });
    assert.ok(onTerminal.includes(`*** MESSAGE CONTENTS ${id} ***`), onTerminal.toString());
    assert.equal(onTerminal.indexOf(0x1b), -1, 'no ESC reaches the terminal');
    assert.equal(onTerminal.indexOf(Buffer.from('\u009b')), -1, 'no C1 control either');
    const text = onTerminal.toString();
    assert.match(text, /Subject: invoice\^\[\]0;owned\^G/);
    assert.match(text, /see below\^\[\[2J\^Mhidden<U\+009B>31m red/);

    const piped = execFileSync(process.execPath, [MAIN, 'queue', 'show', id, '-c', config], { timeout: 30_000 });
    assert.ok(piped.includes(Buffer.from(BODY.replace(/\r\n$/, ''))), 'the bytes as spooled');
  } finally {
    await s.stop();
  }
});
