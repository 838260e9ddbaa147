// docs/client-certificates.md shows what the embedded default's submission listener offers in its EHLO reply,
// before STARTTLS and after it with the demo certificate, with none and with an untrusted one. A mail
// administrator reads from it whether EXTERNAL is advertised to a certificate the listener does not trust; this
// test reads those lines of the page and checks each against the embedded default (with the repository's
// default scripts, as `npm start` runs it) over real STARTTLS sessions.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { DEFAULT_CONFIG_YAML, DEMO_USER } from '../../engine/config/default-config.ts';
import { writeDevelopmentPki } from '../../engine/certificates/dev-pki.ts';
import { startCluster } from '../helpers/cluster.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

const DOC = readFileSync(new URL('../../docs/client-certificates.md', import.meta.url), 'utf8');
const SCRIPTS = new URL('../../scripts/', import.meta.url).pathname;

/** The documented EHLO reply before STARTTLS, and the AUTH line the prose after it gives for each kind of client. */
function documented(): { before: string[]; demo: string; none: string; untrusted: string; untrustedWithoutAuthScript: string } {
  const at = DOC.indexOf('Before STARTTLS, a submission listener from the embedded default answers:');
  assert.ok(at >= 0, 'the EHLO example is found in docs/client-certificates.md');
  const block = DOC.slice(DOC.indexOf('```\n', at) + 4, DOC.indexOf('\n```', DOC.indexOf('```\n', at) + 4));
  const prose = DOC.slice(DOC.indexOf('\n```', DOC.indexOf('```\n', at) + 4) + 4, DOC.indexOf('\n## ', at));
  const line = (who: RegExp): string => {
    const sentence = prose.split(/(?<=\.)\s+/).find((s) => who.test(s));
    assert.ok(sentence, `a sentence about ${who} follows the EHLO example: ${prose}`);
    return /`(250-AUTH [A-Z ]+)`/.exec(sentence)![1]!;
  };
  return {
    before: block.split('\n').map((l) => l.replace(/ Nice to meet you, …$/, '')),
    demo: line(/with the demo certificate/),
    none: line(/no certificate/),
    untrusted: line(/an untrusted one/),
    untrustedWithoutAuthScript: line(/Without that script/),
  };
}

/** The EHLO reply lines (`250-…`, `250 …`) after a STARTTLS with `cert`/`key`, or before TLS when `tls` is false. */
async function ehloLines(port: number, tlsOpts: { ca: string; cert?: string; key?: string } | false): Promise<string[]> {
  const c = await SmtpTestClient.connect(port);
  try {
    const r = await c.hello(tlsOpts === false ? { name: 'me' } : { name: 'me', starttls: { ...tlsOpts, servername: 'localhost' } });
    return r.lines.map((l) => l.replace(/ Nice to meet you, .*$/, ''));
  } finally {
    c.destroy();
  }
}

test('the EHLO replies docs/client-certificates.md shows for the embedded default are the ones it gives', { timeout: 120_000 }, async () => {
  const doc = documented();
  const root = await mkdtemp(join(tmpdir(), 'postern-default-ehlo-'));
  const pki = await writeDevelopmentPki(join(root, 'pki'), { hostname: 'localhost', demoUser: DEMO_USER });
  const stranger = await makeTestPki(join(root, 'other')); // its CA is not the development one: untrusted here
  const config = DEFAULT_CONFIG_YAML
    .replace(/^(dataDir|scripts):.*\n/gm, '')
    .replaceAll('./data/pki/', `${join(root, 'pki')}/`)
    .replace('127.0.0.1:2525', '127.0.0.1:{PORT:inbound}').replace('127.0.0.1:2587', '127.0.0.1:{PORT:submission}').replace('127.0.0.1:2465', '127.0.0.1:{PORT:submissions}');
  const scripts: Record<string, string> = {};
  for (const name of (await readdir(SCRIPTS)).filter((n) => n.endsWith('.ts') && !n.endsWith('.d.ts'))) scripts[name] = await readFile(join(SCRIPTS, name), 'utf8');
  // One worker: the EHLO reply does not depend on how many there are.
  const c = await startCluster({ config: `workers: 1\n${config}`, scripts });
  try {
    const port = c.port('submission');
    const ca = await readFile(pki.ca, 'utf8');
    const auth = (lines: string[]): string | undefined => lines.map((l) => l.replace(/^250 /, '250-')).find((l) => l.startsWith('250-AUTH'));

    assert.deepEqual(await ehloLines(port, false), doc.before, 'before STARTTLS');
    const demo = await ehloLines(port, { ca, cert: await readFile(pki.clientCert, 'utf8'), key: await readFile(pki.clientKey, 'utf8') });
    assert.equal(auth(demo), doc.demo, 'with the demo certificate');
    assert.deepEqual(demo.filter((l) => !/AUTH/.test(l)), doc.before.filter((l) => !/STARTTLS/.test(l)), 'STARTTLS replaced by the AUTH line');
    assert.equal(auth(await ehloLines(port, { ca })), doc.none, 'with no certificate');
    const untrusted = { ca, cert: await readFile(stranger.clients.alice.cert, 'utf8'), key: await readFile(stranger.clients.alice.key, 'utf8') };
    assert.equal(auth(await ehloLines(port, untrusted)), doc.untrusted, 'with a certificate from a CA the listener does not trust');

    // The same listener without an auth script (removed, and the reload taken by the worker): nothing could accept an
    // untrusted certificate, so EXTERNAL is not offered.
    const mark = c.logs.length;
    const worker = (await c.cluster()).processes.find((p) => p.role === 'worker')!.pid;
    await rm(join(c.dir, 'scripts', 'auth.ts'));
    await c.waitFor('the worker reloaded', () => c.logs.slice(mark).some((l) => l.msg === 'reloaded' && l.pid === worker));
    const lines = await ehloLines(port, untrusted);
    assert.equal(lines.find((l) => /^250.AUTH/.test(l))?.replace(/^250 /, '250-'), doc.untrustedWithoutAuthScript, 'untrusted, without an auth script');
  } finally {
    await c.stop();
    await rm(root, { recursive: true, force: true });
  }
});
