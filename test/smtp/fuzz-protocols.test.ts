// Grammar fuzzing, seeded, over real sockets: SMTP sessions (commands, MAIL/RCPT parameters, odd spacing and
// case, long lines, lines cut across writes, pipelined mixes, DATA bodies with or without their end, STARTTLS
// mid-pipeline), SASL exchanges after STARTTLS, PROXY protocol headers, Postfix policy requests and admin
// HTTP requests. After every case: each reply is a well-formed SMTP reply (or policy answer, or HTTP
// response), the connection got its replies or a close before a deadline, no message was acknowledged that
// was not fully sent, no error-level log line appeared, and a fresh ordinary client still gets a message in.
//
// FUZZ_SEED=<n> picks the seed (default fixed), FUZZ_CASES=<n> the number of cases (default small, for CI).
// A failure names the case's seed: FUZZ_SEED=<that> FUZZ_CASES=1 replays it alone.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import tls from 'node:tls';
import { readFile } from 'node:fs/promises';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { closed } from '../helpers/wait.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { Random, dataBody, httpRequest, pieces, policyRequest, proxyHeader, smtpSession } from './fuzz-grammar.ts';

const SEED = Number(process.env.FUZZ_SEED ?? 20261206);
const CASES = Number(process.env.FUZZ_CASES ?? 200);
/** A fuzzing connection must get its replies and its close within this (a guard, not a speed test). */
const CLOSE_DEADLINE_MS = 20_000;

let pki: TestPki;
let ca: string;
let alice: { cert: string; key: string };
let server: TestServer;

before(async () => {
  pki = await makeTestPki();
  ca = await readFile(pki.ca.cert, 'utf8');
  alice = { cert: await readFile(pki.clients.alice.cert, 'utf8'), key: await readFile(pki.clients.alice.key, 'utf8') };
  const limits = '{ greetingDelayMs: 0, authFailuresPerIp: 1000000, authFailuresBeforeDelay: 1000000, maxConnectionsPerIp: 1000 }';
  server = await startTestServer({
    config: `
localDomains: [example.com]
users: ./users
admin: { listen: 127.0.0.1:0, maxConnectionsPerIp: 64 }
listeners:
  - name: mx
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key} }
    # A STARTTLS case's plain bytes after the 220 are no handshake: waited for this long, then closed.
    limits: { greetingDelayMs: 0, authFailuresPerIp: 1000000, maxConnectionsPerIp: 1000, tlsHandshakeTimeoutMs: 1000 }
  - name: sub
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${pki.ca.cert}] }
    auth: { mechanisms: [PLAIN, LOGIN, EXTERNAL] }
    certificateIdentity: { field: emailAddress }
    limits: ${limits}
  - name: px
    listen: 127.0.0.1:0
    reverseDns: false
    proxyProtocol: { trusted: [127.0.0.0/8], headerTimeoutMs: 2000 }
    limits: ${limits}
policyServices:
  - name: policy
    listen: 127.0.0.1:0
    limits: { maxLineBytes: 2048 }
`,
    files: { users: `alice@example.com:${await hashPassword('alice-Secret-1')}\n` },
  });
});
after(() => server.stop());

interface Outcome { received: Buffer; closedInTime: boolean }
/** The last case's bytes, for FUZZ_VERBOSE. */
let last: { input: string; output: string } | undefined;
const squeeze = (s: string) => s.replace(/(.)\1{40,}/g, (m, c: string) => `${c}<×${m.length}>`);

/** Write `input` in pieces on `socket` (already connected), half-close, and collect until the server closes. */
async function exchange(socket: net.Socket, chunks: Buffer[], r: Random): Promise<Outcome> {
  const got: Buffer[] = [];
  socket.on('data', (b: Buffer | string) => got.push(Buffer.isBuffer(b) ? b : Buffer.from(b)));
  socket.on('error', () => undefined);
  const done = closed(socket);
  for (const c of chunks) {
    if (socket.destroyed) break;
    socket.write(c);
    if (chunks.length > 1 && r.chance(0.3)) await new Promise((resolve) => setImmediate(resolve));
  }
  if (!socket.destroyed) socket.end();
  last = { input: Buffer.concat(chunks).toString('latin1'), output: '' };
  let timer: NodeJS.Timeout | undefined;
  const closedInTime = await Promise.race([done.then(() => true), new Promise<boolean>((resolve) => { timer = setTimeout(() => resolve(false), CLOSE_DEADLINE_MS); })]);
  clearTimeout(timer);
  socket.destroy();
  last.output = Buffer.concat(got).toString('latin1');
  return { received: Buffer.concat(got), closedInTime };
}

function connect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port }, () => resolve(s));
    s.once('error', reject);
  });
}

/** Problems with `text` as a stream of SMTP replies (RFC 5321 4.2, 4.5.3.1.5). */
export function smtpReplyProblems(text: string): string[] {
  const problems: string[] = [];
  if (text && !text.endsWith('\r\n')) problems.push(`output does not end with CRLF: ${JSON.stringify(text.slice(-80))}`);
  const lines = text.split('\r\n').slice(0, -1);
  let open: string | null = null;
  for (const l of lines) {
    if (Buffer.byteLength(l) + 2 > 512) problems.push(`reply line of ${Buffer.byteLength(l) + 2} octets: ${JSON.stringify(l.slice(0, 80))}`);
    const m = /^([2-5][0-5]\d)([ -]?)(.*)$/s.exec(l);
    if (!m || (m[2] === '' && m[3] !== '')) { problems.push(`not a reply line: ${JSON.stringify(l.slice(0, 120))}`); continue; }
    if (/[\r\n\0]/.test(m[3]!)) problems.push(`control character in reply: ${JSON.stringify(l.slice(0, 120))}`);
    if (open !== null && m[1] !== open) problems.push(`multi-line reply changes code ${open} -> ${m[1]}`);
    open = m[2] === '-' ? m[1]! : null;
  }
  if (open !== null) problems.push(`multi-line reply ${open} never ended`);
  return problems;
}

/** How many messages the input fully sent: its DATA ends (a line of one dot), over-counted, never under. */
function messageEnds(input: string): number {
  return (input.match(/(^|\n)\.\r?\n/g) ?? []).length;
}

async function queuedProblems(replies: string, input: string): Promise<string[]> {
  const ids = [...replies.matchAll(/^250 .*queued as (\S+)\r$/gm)].map((m) => m[1]!);
  const problems: string[] = [];
  if (ids.length > messageEnds(input)) problems.push(`${ids.length} messages acknowledged, only ${messageEnds(input)} ends sent`);
  for (const id of ids) {
    try { await server.runtime.spool.readEnvelope(id); } catch (e) { problems.push(`acknowledged ${id} is not in the spool: ${String(e)}`); }
  }
  return problems;
}

type CaseKind = 'smtp' | 'starttls-pipeline' | 'sasl' | 'proxy' | 'policy' | 'http';
const KINDS: CaseKind[] = ['smtp', 'smtp', 'smtp', 'starttls-pipeline', 'sasl', 'sasl', 'proxy', 'policy', 'http'];

async function runCase(seed: number): Promise<{ kind: CaseKind; problems: string[] }> {
  const r = new Random(seed);
  const kind = r.pick(KINDS);
  const problems: string[] = [];
  const logged = server.logs.length;
  switch (kind) {
    case 'smtp': {
      const input = smtpSession(r, { sasl: r.chance(0.3) });
      const s = await connect(server.port('mx'));
      const out = await exchange(s, pieces(r, Buffer.from(input)), r);
      const text = out.received.toString('utf8');
      if (!out.closedInTime) problems.push('no close before the deadline');
      problems.push(...smtpReplyProblems(text), ...(await queuedProblems(text, input)));
      break;
    }
    case 'starttls-pipeline': {
      // STARTTLS with more commands behind it in the same write: never read as if under TLS (RFC 3207 6).
      const input = `EHLO x\r\n${smtpSession(r, { sasl: false })}STARTTLS\r\n${smtpSession(r, { sasl: false })}`;
      const s = await connect(server.port('mx'));
      const out = await exchange(s, pieces(r, Buffer.from(input)), r);
      const text = out.received.toString('latin1');
      if (!out.closedInTime) problems.push('no close before the deadline');
      // After a 220 to STARTTLS the rest is TLS, or nothing; check the plain part only.
      const at = text.search(/^220 2\.0\.0 .*\r\n/m);
      const plain = at >= 0 ? text.slice(0, text.indexOf('\r\n', at) + 2) : text;
      problems.push(...smtpReplyProblems(plain), ...(await queuedProblems(plain, input)));
      break;
    }
    case 'sasl': {
      const c = await SmtpTestClient.connect(server.port('sub'));
      await c.hello({ starttls: { ca, ...(r.chance(0.5) ? alice : {}) } });
      const input = smtpSession(r, { sasl: true }) + (r.chance(0.3) ? `MAIL FROM:<alice@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n${dataBody(r)}` : '');
      const out = await exchange(c.socket, pieces(r, Buffer.from(input)), r);
      const text = out.received.toString('utf8');
      if (!out.closedInTime) problems.push('no close before the deadline');
      problems.push(...smtpReplyProblems(text), ...(await queuedProblems(text, input)));
      break;
    }
    case 'proxy': {
      const header = proxyHeader(r);
      const rest = smtpSession(r, { sasl: false });
      const s = await connect(server.port('px'));
      const out = await exchange(s, pieces(r, Buffer.concat([header, Buffer.from(rest)])), r);
      const text = out.received.toString('utf8');
      if (!out.closedInTime) problems.push('no close before the deadline');
      problems.push(...smtpReplyProblems(text), ...(await queuedProblems(text, rest)));
      break;
    }
    case 'policy': {
      const port = Number(server.policyAddresses.get('policy')!.split(':').pop());
      const s = await connect(port);
      const out = await exchange(s, pieces(r, policyRequest(r)), r);
      if (!out.closedInTime) problems.push('no close before the deadline');
      const text = out.received.toString('utf8');
      if (text && !text.endsWith('\n\n')) problems.push(`policy output does not end with an empty line: ${JSON.stringify(text.slice(-80))}`);
      for (const answer of text.split('\n\n').slice(0, -1)) {
        if (!/^action=[^\n]+$/.test(answer)) problems.push(`not a policy answer: ${JSON.stringify(answer.slice(0, 120))}`);
      }
      break;
    }
    case 'http': {
      const s = await connect(server.admin!.address.port);
      const out = await exchange(s, pieces(r, httpRequest(r)), r);
      if (!out.closedInTime) problems.push('no close before the deadline');
      const text = out.received.toString('latin1');
      if (text && !/^HTTP\/1\.[01] \d{3} /.test(text)) problems.push(`not an HTTP response: ${JSON.stringify(text.slice(0, 80))}`);
      if (/^HTTP\/1\.[01] 5\d\d/m.test(text)) problems.push(`server error: ${JSON.stringify(text.slice(0, 200))}`);
      break;
    }
  }
  if (process.env.FUZZ_VERBOSE && last) console.log(`seed ${seed} ${kind}\nC: ${JSON.stringify(squeeze(last.input))}\nS: ${JSON.stringify(squeeze(last.output))}`);
  for (const l of server.logs.slice(logged)) {
    // The policy service logs a malformed request (its client's own input) at error level: Postfix sent it.
    if (Number(l.level) >= 50 && !/^(malformed policy request|policy request refused)/.test(String(l.msg))) problems.push(`error log: ${JSON.stringify(l).slice(0, 400)}`);
  }
  return { kind, problems };
}

/** An ordinary client still gets a whole transaction through: the server lives and is not wedged. */
async function healthy(): Promise<void> {
  const c = await SmtpTestClient.connect(server.port('mx'));
  await c.hello();
  const r = await c.sendMail('health@example.org', ['b@example.com']);
  await c.quit();
  assert.match(r.text, /^250 2\.0\.0 Ok: queued as /, 'an ordinary client after the case');
}

test(`${CASES} fuzz cases from seed ${SEED}: well-formed replies, no hang, nothing acknowledged unsent, the server keeps serving`, async () => {
  const counts: Record<string, number> = {};
  const failures: string[] = [];
  for (let i = 0; i < CASES; i++) {
    const seed = (SEED + i * 7919) >>> 0;
    const started = Date.now();
    const { kind, problems } = await runCase(seed);
    counts[kind] = (counts[kind] ?? 0) + 1;
    if (process.env.FUZZ_VERBOSE) console.log(`seed ${seed} ${kind}: ${Date.now() - started} ms`);
    if (problems.length) failures.push(`case seed ${seed} (${kind}):\n  ${[...new Set(problems)].join('\n  ')}`);
    await healthy().catch((e: Error) => { throw new Error(`after case seed ${seed} (${kind}): ${e.message}`); });
  }
  if (process.env.FUZZ_CASES) console.log(`fuzz: ${CASES} cases ${JSON.stringify(counts)}`);
  assert.deepEqual(failures, [], `replay one with FUZZ_SEED=<seed> FUZZ_CASES=1\n${failures.join('\n')}`);
});
