/**
 * A verdict's text and a hold's reason are a script's, and often quote what a client sent (`reject('You are not ' +
 * ctx.connection.helo)`). The log writes a script's own lines and what it threw with what a reader's terminal would
 * act on or show as something else as `\u{…}` (bidi overrides, zero-width and other characters that draw nothing,
 * C1 controls), and the HELO name in the same refusal line too; the verdict's text went out as given: the refusal
 * line (its message and `reply`), the accepted line of a held message, the shadow scripts' lines (a candidate's
 * verdict and what it threw), `postern replay`'s report and `postern queue show`. Real SMTP on 127.0.0.1, the
 * server's log, the real command line.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { until } from '../helpers/wait.ts';
import { runCli } from '../helpers/cli.ts';
import { recordingFiles } from '../../engine/replay/recording-files.ts';

/** A HELO name that reads as `ceo.example` with its last part reversed: a Hangul filler and a right-to-left override. */
const HELO = 'c\u3164eo.\u202eelpmaxe';
/** What the log and the terminal must not carry as it is. */
const UNSHOWN = /[\u0080-\u009f\u200b\u202e\u3164]/u;

test('a script\'s verdict text and hold reason reach log lines and the command line with the log\'s escapes', async () => {
  const server = await startTestServer({
    config: configYaml({
      localDomains: ['example.com'], replay: { keepDays: 1 },
      listeners: [testListener('in', { shadowScripts: './candidate' })],
    } as never),
    scripts: {
      'rcptto.js': "export default (ctx) => ctx.address.localPart === 'refused' ? reject('You are not ' + ctx.connection.helo) : undefined;",
      'data.js': "export default (ctx) => accept({ hold: 'held for ' + ctx.connection.helo });",
    },
    files: {
      'candidate/rcptto.js': "export default (ctx) => { if (ctx.address.localPart === 'thrown') throw new Error('no ' + ctx.connection.helo); return reject('Candidate says no to \\u009b2J' + ctx.connection.helo); };",
    },
  });
  try {
    const c = await SmtpTestClient.connect(server.port('in'));
    assert.equal((await c.hello({ name: HELO })).code, 250);
    assert.equal((await c.command('MAIL FROM:<a@example.org>')).code, 250);
    const refused = await c.command('RCPT TO:<refused@example.com>');
    assert.equal(refused.code, 550, refused.text);
    assert.equal((await c.command('RCPT TO:<thrown@example.com>')).code, 250);
    assert.equal((await c.command('RSET')).code, 250);
    const sent = await c.sendMail('a@example.org', ['bob@example.com']);
    assert.equal(sent.code, 250, sent.text);
    const id = /queued as (\w+)/.exec(sent.text)![1]!;
    await c.quit();

    const refusal = server.logs.find((l) => l.decision === 'reject' && l.stage === 'RCPT')!;
    assert.equal(refusal.reply, 'You are not c\\u{3164}eo.\\u{202e}elpmaxe');
    assert.match(String(refusal.msg), /: You are not c\\u\{3164\}eo\.\\u\{202e\}elpmaxe; .* helo=<c\\u\{3164\}eo\.\\u\{202e\}elpmaxe>$/);
    const accepted = server.logs.find((l) => l.id === id && String(l.msg).includes(': accepted from='))!;
    assert.deepEqual((accepted.held as { reason: string }).reason, 'held for c\\u{3164}eo.\\u{202e}elpmaxe');
    assert.match(String(accepted.msg), /held by \S+: held for c\\u\{3164\}eo\.\\u\{202e\}elpmaxe\)$/);
    await until('the shadow scripts\' lines', () => server.logs.filter((l) => l.component === 'shadow').length >= 4);
    const shadow = server.logs.filter((l) => l.component === 'shadow');
    assert.ok(shadow.some((l) => String(l.shadow).includes('Candidate says no to \\u{9b}2J')), JSON.stringify(shadow));
    assert.ok(shadow.some((l) => String(l.err).includes('Error: no c\\u{3164}eo')), JSON.stringify(shadow));
    for (const line of [refusal, accepted, ...shadow]) assert.doesNotMatch(JSON.stringify(line), UNSHOWN, JSON.stringify(line));

    const config = join(server.dir, 'postern.yaml');
    const show = await runCli(['queue', 'show', id, '-c', config]);
    assert.match(show.stdout, /^client: .* helo c\\u\{3164\}eo\.\\u\{202e\}elpmaxe$/m);
    assert.match(show.stdout, /^held: yes, .* by script \S+: held for c\\u\{3164\}eo\.\\u\{202e\}elpmaxe /m);
    assert.doesNotMatch(show.stdout, UNSHOWN, show.stdout);

    const dataDir = join(server.dir, 'data');
    await until('the calls recorded', async () => (await Promise.all(recordingFiles(dataDir).map((f) => readFile(f.path, 'utf8')))).join('').split('\n').filter(Boolean).length === 4);
    const candidate = join(server.dir, 'replayed');
    await mkdir(candidate);
    await writeFile(join(candidate, 'rcptto.js'), "export default (ctx) => reject('Replayed \\u200b' + ctx.connection.helo);");
    const replayed = await runCli(['replay', '-c', config, '--scripts', candidate, '--hook', 'rcptto']);
    assert.equal(replayed.code, 1, replayed.stdout + replayed.stderr);
    assert.match(replayed.stdout, /^    was reject \{"text":"You are not c\\u\{3164\}eo\.\\u\{202e\}elpmaxe"\}$/m);
    assert.match(replayed.stdout, /^    now reject \{"text":"Replayed \\u\{200b\}c\\u\{3164\}eo\.\\u\{202e\}elpmaxe"\}$/m);
    assert.doesNotMatch(replayed.stdout, UNSHOWN, replayed.stdout);
  } finally {
    await server.stop();
  }
});
