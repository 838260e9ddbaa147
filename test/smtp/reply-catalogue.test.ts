// The reply catalogue (engine/smtp/replies.ts) and docs/scripts.md agree: every reply the lifecycle diagram
// and the tables show is in the catalogue, and every catalogue entry is documented there. Also: the one
// verdict check is strict, so a misspelled option fails closed on the wire instead of being ignored.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { REPLIES, documentedForm, type ReplySpec } from '../../engine/smtp/replies.ts';
import { checkVerdict, FAIL_CLOSED } from '../../engine/policy/verdict.ts';
import { verdictReply } from '../../engine/smtp/verdict-replies.ts';
import type { HookName, PredeliveryVerdict, Verdict } from '../../engine/sandbox/api/index.ts';
import { startTestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

const DOC = readFileSync(new URL('../../docs/scripts.md', import.meta.url), 'utf8');

/** Replies smtp-server writes itself, with its own text; the docs show them, the catalogue need not. */
const SMTP_SERVER_OWN = new Set(['220 2.0.0 Ready to start TLS']);

interface DocumentedReply { code: string; enhanced: string; text: string | null; where: string }

/** Reply lines of the lifecycle diagram: `<code> <enhanced> <text>`, the text ending at two spaces, an arrow or the line's end. */
function diagramReplies(): DocumentedReply[] {
  const section = DOC.slice(DOC.indexOf('## Lifecycle'));
  const diagram = section.slice(section.indexOf('```\n') + 4, section.indexOf('\n```', section.indexOf('```\n') + 4));
  assert.ok(diagram.includes('[connect]'), 'the lifecycle diagram was found');
  const found: DocumentedReply[] = [];
  for (const line of diagram.split('\n')) {
    for (const m of line.matchAll(/\b([2-5]\d\d) ([2-5]\.\d{1,3}\.\d{1,3}) (.+?)(?= {2,}| ─▶|$)/g)) {
      found.push({ code: m[1]!, enhanced: m[2]!, text: m[3]!.trim(), where: `diagram: ${line.trim()}` });
    }
  }
  return found;
}

/** Replies in table cells: a code span that starts with `<code> <enhanced>`. */
function tableReplies(): DocumentedReply[] {
  const found: DocumentedReply[] = [];
  for (const line of DOC.split('\n')) {
    if (!line.startsWith('|')) continue;
    for (const m of line.matchAll(/`([2-5]\d\d) ([2-5]\.\d{1,3}\.\d{1,3})(?: ([^`]*))?`/g)) {
      found.push({ code: m[1]!, enhanced: m[2]!, text: m[3] ?? null, where: `table: ${line.slice(0, 80)}` });
    }
  }
  return found;
}

const catalogue = Object.entries(REPLIES) as Array<[string, ReplySpec]>;

test('every reply in the lifecycle diagram and the tables of docs/scripts.md is in the catalogue', () => {
  const documented = [...diagramReplies(), ...tableReplies()];
  assert.ok(documented.length > 30, `found ${documented.length} documented replies`);
  const forms = new Set(catalogue.map(([, spec]) => documentedForm(spec)));
  for (const d of documented) {
    const line = `${d.code} ${d.enhanced}${d.text === null ? '' : ` ${d.text}`}`;
    if (SMTP_SERVER_OWN.has(line)) continue;
    // "…", a bare code, or a script's own `<text>`: only the codes are shown.
    if (d.text === null || d.text === '…' || d.text.startsWith('<text>')) {
      assert.ok(catalogue.some(([, s]) => `${s.code}` === d.code && s.enhanced === d.enhanced), `no catalogue reply has ${d.code} ${d.enhanced} (${d.where})`);
      continue;
    }
    assert.ok(forms.has(line), `not in the catalogue: "${line}" (${d.where})`);
  }
});

test('every catalogue reply is documented in docs/scripts.md, and every refusal has a reason', () => {
  const documented = new Set([...diagramReplies(), ...tableReplies()].filter((d) => d.text !== null).map((d) => `${d.code} ${d.enhanced} ${d.text}`));
  for (const [name, spec] of catalogue) {
    assert.ok(documented.has(documentedForm(spec)), `${name} (${documentedForm(spec)}) is not in docs/scripts.md's lifecycle diagram or tables`);
    if (spec.code >= 400) assert.ok(spec.reason, `${name} has no reason for the decision log`);
    assert.match(spec.enhanced, new RegExp(`^${String(spec.code)[0]}\\.\\d{1,3}\\.\\d{1,3}$`), `${name}: enhanced code class matches the reply code`);
  }
});

test('the verdict check is strict: unknown or mistyped options are script errors', () => {
  assert.throws(() => checkVerdict('mailfrom', { verdict: 'reject', dissconnect: true }), /no option "dissconnect"/);
  assert.throws(() => checkVerdict('mailfrom', { verdict: 'reject', disconnect: 'yes' }), /disconnect must be a boolean/);
  assert.throws(() => checkVerdict('auth', { verdict: 'reject', username: 'alice' }), /no option "username"/);
  assert.throws(() => checkVerdict('predelivery', { verdict: 'deliver', hots: 'mx.example' }), /no option "hots"/);
  assert.throws(() => checkVerdict('predelivery', { verdict: 'deliver', port: 0 }), /invalid port/);
  assert.deepEqual(checkVerdict('mailfrom', { verdict: 'reject', text: 'no', code: 553, enhanced: '5.7.1', disconnect: true }),
    { verdict: 'reject', text: 'no', code: 553, enhanced: '5.7.1', disconnect: true });
  assert.deepEqual(checkVerdict('predelivery', { verdict: 'deliver', host: '[192.0.2.1]', tls: { clientCertificate: null } }),
    { verdict: 'deliver', host: '[192.0.2.1]', tls: { clientCertificate: null } });
});

test('the verdict table: defaults per hook, codes chosen by the verdict, disconnect, accept texts, fail closed', () => {
  const wire = (hook: HookName, v: Verdict | PredeliveryVerdict, id?: string): string | null => {
    const r = verdictReply(hook, v, id);
    return r && `${r.responseCode} ${r.message}${r.disconnect ? ' (closed)' : ''} [${r.reason ?? ''}]`;
  };
  assert.equal(wire('connect', { verdict: 'reject' }), '554 5.7.1 Connection refused by policy [script connect: reject]');
  assert.equal(wire('auth', { verdict: 'reject' }), '535 5.7.8 Authentication credentials invalid [script auth: reject]');
  assert.equal(wire('rcptto', { verdict: 'reject', code: 535 }), '535 5.7.8 Recipient refused by policy [script rcptto: reject]');
  assert.equal(wire('mailfrom', { verdict: 'reject', code: 553, text: 'No\r\nInjected: yes', disconnect: true }), '553 5.7.1 No Injected: yes (closed) [script mailfrom: reject]');
  assert.equal(wire('auth', { verdict: 'defer' }), '454 4.7.0 Temporary policy failure, try again later [script auth: defer]');
  assert.equal(wire('helo', { verdict: 'defer', disconnect: true }), '421 4.7.0 Temporary policy failure, try again later (closed) [script helo: defer]');
  assert.equal(wire('data', { verdict: 'defer', code: 452, enhanced: '4.3.1' }), '452 4.3.1 Temporary policy failure, try again later [script data: defer]');
  assert.equal(wire('data', FAIL_CLOSED), '451 4.3.0 Temporary policy failure, try again later [script data failed (fail closed)]');
  assert.equal(wire('mailfrom', { verdict: 'accept' }), null);
  assert.equal(wire('connect', { verdict: 'accept', text: 'ignored here' }), null);
  assert.equal(wire('rcptto', { verdict: 'accept', text: 'Welcome' }), '250 2.1.5 Welcome []');
  assert.equal(wire('data', { verdict: 'accept', text: 'Thanks {id} $&' }, 'Q1'), '250 2.0.0 Thanks {id} $&: queued as Q1 []');
  // predelivery: no connection to close; the same enhanced-code rule as the SMTP hooks.
  assert.equal(wire('predelivery', { verdict: 'defer', disconnect: true }), '451 4.3.0 Delivery deferred by policy [script predelivery: defer]');
  assert.equal(wire('predelivery', { verdict: 'defer', code: 454 }), '454 4.7.0 Delivery deferred by policy [script predelivery: defer]');
  assert.equal(wire('predelivery', { verdict: 'reject' }), '550 5.7.1 Delivery refused by policy [script predelivery: reject]');
  assert.equal(wire('predelivery', { verdict: 'deliver' }), null);
});

test('a literal verdict with a misspelled option fails closed (451 4.3.0) instead of being applied without it', async () => {
  const s = await startTestServer({
    config: 'listeners:\n  - { name: mx, listen: "127.0.0.1:0", reverseDns: false, limits: { greetingDelayMs: 0 } }\n',
    scripts: { 'mailfrom.ts': `export default () => ({ verdict: 'reject', text: 'Go away', dissconnect: true });` },
  });
  try {
    const c = await SmtpTestClient.connect(s.port('mx'));
    await c.hello();
    assert.equal((await c.command('MAIL FROM:<a@b.example>')).text, '451 4.3.0 Temporary policy failure, try again later');
    await c.quit();
    const line = s.logs.find((l) => l.decision === 'defer' && l.stage === 'MAIL');
    assert.equal(line?.reason, 'script mailfrom failed (fail closed)');
    const failure = s.logs.find((l) => typeof l.msg === 'string' && l.msg.startsWith('policy script mailfrom failed'));
    assert.match(String(failure?.err), /dissconnect/);
    // Named as any other script failure is: which script returned it (a listener may have its own folder).
    const file = join(s.dir, 'scripts', 'mailfrom.ts');
    assert.equal(failure?.kind, 'verdict');
    assert.equal(failure?.script, file);
    assert.ok(String(failure?.msg).startsWith(`policy script mailfrom failed: ${file}: verdict: `), String(failure?.msg));
  } finally { await s.stop(); }
});

test('replies Postern decides itself (HELO verdict, AUTH refusal) are logged once with their stage and reason, and a disconnect closes after the reply', async () => {
  const s = await startTestServer({
    config: 'listeners:\n  - { name: mx, listen: "127.0.0.1:0", reverseDns: false, tls: { mode: none }, auth: { mechanisms: [PLAIN] }, limits: { greetingDelayMs: 0 } }\n',
    scripts: { 'helo.ts': `export default (ctx) => ctx.helo.name === 'bad.example' ? reject('Not you', { disconnect: true }) : undefined;` },
  });
  try {
    const c = await SmtpTestClient.connect(s.port('mx'));
    await c.read();
    assert.equal((await c.command('EHLO good.example')).code, 250);
    assert.equal((await c.command('AUTH CRAM-MD5')).text, '504 5.5.4 Unrecognized authentication type');
    assert.equal((await c.command('EHLO bad.example')).text, '550 5.7.1 Not you');
    await assert.rejects(c.read(), /connection closed/);
    const lines = s.logs.filter((l) => l.decision === 'reject');
    assert.deepEqual(lines.map((l) => [l.stage, l.code, l.reason]), [['AUTH', 504, 'auth.mechanisms: not offered'], ['HELO', 550, 'script helo: reject']]);
  } finally { await s.stop(); }
});

test('no reply is built outside the catalogue: no SmtpReply constructed, no reply line written as a literal, anywhere in engine/', async () => {
  const { readdir } = await import('node:fs/promises');
  const root = new URL('../../engine/', import.meta.url);
  const files = (await readdir(root, { recursive: true })).filter((f) => f.endsWith('.ts'));
  assert.ok(files.length > 100, `found ${files.length} files`);
  /**
   * `postern try` replays smtp-server's own sequence refusals (503 need MAIL/RCPT), which smtp-server writes
   * itself on the wire and are not Postern's decisions; nothing else may spell a reply out.
   */
  const ALLOWED_LITERALS = new Set(['try/try-session.ts']);
  const problems: string[] = [];
  for (const file of files) {
    const text = readFileSync(new URL(file, root), 'utf8');
    // Code only: comments and .describe() texts may quote replies.
    const code = text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|[^:'"`])\/\/.*$/gm, '$1');
    if (file !== 'smtp/replies.ts' && /\bnew SmtpReply\(/.test(code)) problems.push(`${file}: new SmtpReply(…)`);
    if (ALLOWED_LITERALS.has(file) || file === 'config/schema.ts') continue;
    for (const m of code.matchAll(/['"`]([2-5]\d\d[ -][2-5]\.\d{1,3}\.\d{1,3} [^'"`]*)['"`]/g)) problems.push(`${file}: ${m[1]}`);
  }
  assert.deepEqual(problems, []);
});

test('every whole reply line the other pages show (docs/*.md, README.md, examples/*/README.md) is what the server sends', () => {
  const root = new URL('../../', import.meta.url).pathname;
  const pages = ['README.md', ...readdirSync(join(root, 'docs')).filter((f) => f.endsWith('.md') && f !== 'scripts.md').map((f) => `docs/${f}`),
    ...readdirSync(join(root, 'examples')).map((d) => `examples/${d}/README.md`).filter((f) => existsSync(join(root, f)))];
  // Where a reply text may come from besides the catalogue: smtp-server's own replies, and the scripts of the
  // examples (their string and template literals, `${…}` standing for anything).
  const smtpServerDir = dirname(createRequire(import.meta.url).resolve('smtp-server'));
  const smtpServerSource = readdirSync(smtpServerDir).filter((f) => f.endsWith('.js')).map((f) => readFileSync(join(smtpServerDir, f), 'utf8')).join('\n');
  const scriptTexts = readdirSync(join(root, 'examples')).map((d) => join(root, 'examples', d, 'scripts')).filter((d) => existsSync(d))
    .flatMap((d) => readdirSync(d).map((f) => readFileSync(join(d, f), 'utf8')))
    .flatMap((source) => [...source.matchAll(/(['"`])((?:\\.|(?!\1).)*)\1/g)].map((m) => m[2]!))
    .map((literal) => new RegExp(literal.split(/\$\{[^}]*\}/).map((p) => p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('.+')));
  const byScript = (text: string): boolean => {
    // Behind Postfix (check_policy_service) a refusal reads "<rcpt>: Recipient address rejected: <the script's text>".
    const own = text.replace(/^<[^>]*>: (?:Recipient|Sender|Client host|Helo command) (?:address )?rejected: /, '');
    return scriptTexts.some((r) => r.test(own) && r.source.length > 8);
  };
  // `<address>` in a page and `{sender}` in the catalogue are both a placeholder.
  const pattern = (text: string): RegExp => new RegExp(`^${text.split(/<\w+>|\{\w+\}/).map((p) => p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('<?[^ ]*>?')}$`);
  const catalogueLines = catalogue.map(([, spec]) => `${spec.code} ${spec.enhanced} ${spec.text}`);
  let checked = 0;
  const unknown: string[] = [];
  for (const page of pages) {
    for (const m of readFileSync(join(root, page), 'utf8').matchAll(/`([2-5]\d\d) ([2-5]\.\d{1,3}\.\d{1,3}) ([^`\n]+)`/g)) {
      const [, code, enhanced, text] = m as unknown as [string, string, string, string];
      if (text.includes('…') || /^<text>/.test(text)) continue; // shortened, or a script's own text
      checked++;
      const line = `${code} ${enhanced} ${text}`;
      if (catalogueLines.some((l) => pattern(l).test(line) || pattern(line).test(l))) continue;
      if (SMTP_SERVER_OWN.has(line) || byScript(text)) continue;
      const literal = text.split(/<\w+>/).map((p) => p.trim()).filter(Boolean);
      if (literal.every((p) => smtpServerSource.includes(p))) continue;
      unknown.push(`${page}: ${line}`);
    }
  }
  assert.ok(checked > 20, `${checked} reply lines checked`);
  assert.deepEqual(unknown, [], 'reply lines no code sends');
});

/** The top-level arguments of a call, from the text after its `(` (quotes, parentheses and brackets kept whole). */
function callArguments(source: string, from: number): string[] {
  const args: string[] = [];
  let depth = 0;
  let quote: string | null = null;
  let start = from;
  for (let i = from; i < source.length; i++) {
    const c = source[i]!;
    if (quote !== null) {
      if (c === '\\') i++;
      else if (c === quote) quote = null;
    } else if (c === '\'' || c === '"' || c === '`') quote = c;
    else if (c === '(' || c === '[' || c === '{') depth++;
    else if (c === ',' && depth === 0) { args.push(source.slice(start, i).trim()); start = i + 1; }
    else if (c === ')' || c === ']' || c === '}') {
      if (depth-- === 0) { args.push(source.slice(start, i).trim()); return args; }
    }
  }
  throw new Error(`unclosed call at ${from}`);
}

test('every refusal smtp-server (or Postern through it) writes goes out with an enhanced status code (ENHANCEDSTATUSCODES is offered)', async () => {
  // Each this.send(<4xx or 5xx>, text, context) of smtp-server's and of PosternConnection: its text evaluated where it
  // can be (the listener's name, the options), its context as written; a reply to a command named at run time taken as
  // one to EHLO, whose replies smtp-server writes without a code. Only the greeting and EHLO's 250 lines have none
  // (RFC 2034 §3); a code given at run time (a handler's error) is an SmtpReply's, whose text starts with its own.
  const { SMTPConnection } = await import('smtp-server/lib/smtp-connection.js');
  const { catalogueReplyFor, refusalContext } = await import('../../engine/smtp/smtp-server-replies.ts');
  const { ENHANCED_CODE_PREFIX } = await import('../../engine/smtp/reply.ts');
  const smtpServerDir = dirname(createRequire(import.meta.url).resolve('smtp-server'));
  const sources = [join(smtpServerDir, 'smtp-connection.js'), join(smtpServerDir, 'sasl.js'), new URL('../../engine/smtp/postern-connection.ts', import.meta.url).pathname,
    new URL('../../engine/smtp/recipient-count.ts', import.meta.url).pathname]; // the listener's 452 past maxRecipients, sent through its connection
  const connection = { name: 'mx.test', _server: { options: { lmtp: false, size: 1000, hideENHANCEDSTATUSCODES: false } } };
  const enhancedFor = (code: number, context: string | false | undefined): string =>
    (SMTPConnection.prototype as unknown as { _getEnhancedStatusCode(this: unknown, c: number, x: unknown): string })._getEnhancedStatusCode.call(
      { ...connection, _useEnhancedStatusCodes: () => true }, code, context);
  let checked = 0;
  const without: string[] = [];
  for (const file of sources) {
    const source = readFileSync(file, 'utf8');
    for (const m of source.matchAll(/(?:this|connection)\.send\(([45]\d\d),/g)) {
      const code = Number(m[1]);
      const [, textArg, contextArg] = callArguments(source, m.index + m[0].length - m[1]!.length - 1);
      const evaluate = (expression: string): unknown => new Function('commandName', 'err', 'error', `return (${expression});`).call(connection, 'EHLO', { message: 'x' }, 'Error: x');
      let text: unknown;
      try { text = textArg === undefined ? undefined : evaluate(textArg); } catch { text = undefined; } // built at run time
      const context = contextArg === undefined ? undefined : evaluate(contextArg) as string | false;
      checked++;
      for (const wait of ['delay', 'checks'] as const) {
        if (catalogueReplyFor(code, typeof text === 'string' ? text : null, 'mx.test', wait) !== null) continue;
        if (typeof text === 'string' && ENHANCED_CODE_PREFIX.test(text)) continue;
        if (enhancedFor(code, refusalContext(code, context)) === '') without.push(`${file.split('/').pop()}: ${m[0]} ${textArg}, ${contextArg}`);
      }
    }
  }
  assert.ok(checked > 50, `${checked} refusals checked`);
  assert.deepEqual([...new Set(without)], [], 'refusals without an enhanced status code');
});

test('HELO and EHLO refusals carry an enhanced status code, as Postfix\'s; their 250 replies do not', async () => {
  const s = await startTestServer({
    config: 'hostname: mx.test\nlisteners:\n  - { name: mx, listen: "127.0.0.1:0", reverseDns: false, tls: { mode: none }, limits: { greetingDelayMs: 0 } }\n',
  });
  try {
    const c = await SmtpTestClient.connect(s.port('mx'));
    assert.equal((await c.read()).text.startsWith('220 mx.test'), true);
    assert.equal((await c.command('EHLO bad\u0001name.example')).text, '501 5.5.2 Error: Bad hostname syntax');
    assert.equal((await c.command('HELO bad\u0001name.example')).text, '501 5.5.2 Error: Bad hostname syntax');
    assert.equal((await c.command('EHLO')).text, '501 5.5.4 Error: syntax: EHLO hostname');
    assert.equal((await c.command('HELO a b')).text, '501 5.5.4 Error: Syntax: HELO hostname');
    assert.match((await c.command('HELO client.example')).text, /^250 mx\.test /);
    assert.match((await c.command('EHLO client.example')).text, /^250-mx\.test /);
    await c.quit();
    const lines = s.logs.filter((l) => l.decision === 'reject');
    assert.deepEqual(lines.map((l) => [l.stage, l.code, l.enhanced]), [['EHLO', 501, '5.5.2'], ['HELO', 501, '5.5.2'], ['EHLO', 501, '5.5.4'], ['HELO', 501, '5.5.4']]);
    assert.match(String(lines[0]!.reason), /control character/);
  } finally { await s.stop(); }
});
