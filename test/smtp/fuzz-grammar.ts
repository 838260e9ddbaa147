/**
 * Seeded generators of hostile input for the protocols Postern reads from the network: SMTP commands and
 * their parameters, SASL exchanges, PROXY protocol headers, Postfix policy requests and admin HTTP requests.
 * Each draws from a Random, so a failing case is replayed from its seed.
 */

/** mulberry32: small, fast, and the same sequence for a seed on every machine. */
export class Random {
  #s: number;
  constructor(seed: number) { this.#s = seed >>> 0; }
  next(): number {
    let t = (this.#s = (this.#s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(n: number): number { return Math.floor(this.next() * n); }
  chance(p: number): boolean { return this.next() < p; }
  pick<T>(xs: readonly T[]): T { return xs[this.int(xs.length)]!; }
  bytes(n: number): Buffer { return Buffer.from(Array.from({ length: n }, () => this.int(256))); }
  /** Printable ASCII, sometimes with a space, tab or a UTF-8 character. */
  text(max: number): string {
    const n = this.int(max + 1);
    let s = '';
    for (let i = 0; i < n; i++) s += this.chance(0.9) ? String.fromCharCode(33 + this.int(94)) : this.pick([' ', '\t', 'é', 'ö', '€', '\u{1F600}', '\u00a0']);
    return s;
  }
}

const DOMAINS = ['example.com', 'example.org', 'elsewhere.example', '[127.0.0.1]', '[IPv6:::1]', 'xn--bcher-kva.example', 'bücher.example', 'a', ''];

function mixCase(r: Random, s: string): string {
  return r.chance(0.7) ? s : [...s].map((ch) => (r.chance(0.5) ? ch.toLowerCase() : ch.toUpperCase())).join('');
}

function space(r: Random): string {
  return r.pick([' ', ' ', ' ', '  ', '\t', ' \t', '', '   ']);
}

function localPart(r: Random): string {
  return r.pick(['a', 'alice', 'b', 'postmaster', '"quoted local"', '"a\\"b"', 'jörg', 'x'.repeat(65), 'a.b', '.a', 'a..b', r.text(12), 'a+tag', '']);
}

export function path(r: Random): string {
  const addr = `${localPart(r)}@${r.pick(DOMAINS)}`;
  switch (r.int(10)) {
    case 0: return '<>';
    case 1: return addr;
    case 2: return `<@relay.example:${addr}>`;
    case 3: return `<${addr}`;
    case 4: return `<<${addr}>>`;
    case 5: return `<${'l'.repeat(r.int(400))}@${'d'.repeat(r.int(300))}.example>`;
    case 6: return `<${r.text(30)}>`;
    default: return `<${addr}>`;
  }
}

function xtext(r: Random): string {
  return r.pick(['abc', 'a+2Bb', '+', '+2', '+ZZ', '+2b', 'a=b', r.text(20), 'x'.repeat(r.int(600)), '']);
}

function mailParameter(r: Random): string {
  const p = r.pick([
    () => `SIZE=${r.pick(['0', '1', '100', '99999999999999999999', '-1', '1e9', 'abc', '', '0x10', String(r.int(1e9))])}`,
    () => `BODY=${r.pick(['7BIT', '8BITMIME', 'BINARYMIME', 'junk', '', '8bitmime'])}`,
    () => r.pick(['SMTPUTF8', 'SMTPUTF8=', 'SMTPUTF8=yes']),
    () => `RET=${r.pick(['FULL', 'HDRS', 'hdrs', 'NONE', ''])}`,
    () => `ENVID=${xtext(r)}`,
    () => `AUTH=${r.pick(['<>', 'alice@example.com', 'a+2Bb@example.com', xtext(r)])}`,
    () => r.pick(['REQUIRETLS', 'MT-PRIORITY=3', 'HOLDFOR=10', 'X-EVIL=1', '=', '==', 'SIZE', `${r.text(8)}=${r.text(8)}`]),
  ])();
  return mixCase(r, p);
}

function rcptParameter(r: Random): string {
  const p = r.pick([
    () => `NOTIFY=${r.pick(['NEVER', 'SUCCESS', 'SUCCESS,FAILURE', 'SUCCESS,FAILURE,DELAY', 'NEVER,SUCCESS', 'junk', '', ',', 'SUCCESS,,DELAY'])}`,
    () => `ORCPT=${r.pick(['rfc822;a@example.com', 'rfc822;', 'utf-8;a\\x{E9}@example.com', 'x;y', ';', 'rfc822', 'rfc822;a+2Bb@x', `rfc822;${xtext(r)}`])}`,
    () => r.pick(['SIZE=1', 'BODY=8BITMIME', 'FOO=bar', '=', 'NOTIFY', 'ORCPT']),
  ])();
  return mixCase(r, p);
}

function line(r: Random, verb: string, rest: string): string {
  return `${mixCase(r, verb)}${rest}`;
}

/** One SMTP command line (without its line end). */
export function smtpCommand(r: Random): string {
  switch (r.int(22)) {
    case 0: case 1: return line(r, r.pick(['EHLO', 'HELO']), r.pick(['', space(r) + r.pick(['client.example', '[127.0.0.1]', r.text(30), 'x'.repeat(r.int(2000)), 'a b c'])]));
    case 2: case 3: case 4: {
      let s = line(r, 'MAIL', `${space(r)}${mixCase(r, 'FROM')}:${r.chance(0.2) ? space(r) : ''}${path(r)}`);
      for (let i = r.int(4); i > 0; i--) s += space(r) + mailParameter(r);
      return s;
    }
    case 5: case 6: case 7: {
      let s = line(r, 'RCPT', `${space(r)}${mixCase(r, 'TO')}:${r.chance(0.2) ? space(r) : ''}${path(r)}`);
      for (let i = r.int(3); i > 0; i--) s += space(r) + rcptParameter(r);
      return s;
    }
    case 8: return line(r, 'DATA', r.pick(['', '', ' ', ' x']));
    case 9: return line(r, r.pick(['RSET', 'NOOP', 'HELP', 'VRFY', 'EXPN', 'ETRN', 'TURN', 'SEND', 'SAML', 'SOML', 'XCLIENT', 'XFORWARD']), r.pick(['', ' ', ` ${r.text(20)}`]));
    case 10: return line(r, 'BDAT', r.pick([' 0', ' 5 LAST', ' -1', ' 99999999999', ' x', '']));
    case 11: return line(r, 'AUTH', ` ${r.pick(['PLAIN', 'LOGIN', 'EXTERNAL', 'CRAM-MD5', 'XOAUTH2', ''])}${r.pick(['', ' =', ` ${saslToken(r)}`])}`);
    case 12: return r.text(40);
    case 13: return '';
    case 14: return line(r, 'STARTTLS', r.pick(['', ' x']));
    case 15: return `${r.pick(['MAIL FROM:', 'RCPT TO:', 'EHLO '])}${'A'.repeat(400 + r.int(20000))}`;
    case 16: return line(r, 'MAIL', `${r.pick([' FROM', 'FROM:', ' FROM :', ' TO:', ':'])}${path(r)}`);
    case 17: return line(r, 'RCPT', `${r.pick([' TO', 'TO:', ' TO :', ' FROM:', ':'])}${path(r)}`);
    case 18: return `${r.pick(['MAIL', 'RCPT', 'EHLO', 'DATA'])}\0${r.text(10)}`;
    case 19: return r.pick(['GET / HTTP/1.1', 'POST / HTTP/1.0', 'Host: x', 'PROXY TCP4 1.2.3.4 5.6.7.8 1 2', 'USER x', 'LOGIN a b']);
    default: return line(r, 'NOOP', '');
  }
}

/** A base64 response or initial response to a SASL challenge, well-formed or not. */
export function saslToken(r: Random): string {
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  return r.pick([
    () => '*',
    () => '',
    () => '=',
    () => '==',
    () => b64(`\0alice@example.com\0${r.text(12)}`),
    () => b64(`${r.text(10)}\0${r.text(10)}\0${r.text(10)}`),
    () => b64(r.text(20)),
    () => b64(`\0\0`),
    () => b64('\0'.repeat(r.int(5))),
    () => b64('alice@example.com'),
    () => r.bytes(r.int(30)).toString('base64').replace(/=+$/, ''),
    () => `${r.bytes(6).toString('base64')}=`,
    () => `${r.bytes(5).toString('base64')}==x`,
    () => `${b64('abc')} ${b64('def')}`,
    () => r.text(30),
    () => 'A'.repeat(r.int(20000)),
    () => b64('x'.repeat(r.int(20000))),
  ])();
}

/** A message body as sent after 354: lines with dots, bare CRs and LFs, long lines, maybe no terminator. */
export function dataBody(r: Random): string {
  let s = r.chance(0.8) ? 'Subject: fuzz\r\n\r\n' : '';
  for (let i = r.int(8); i > 0; i--) {
    s += r.pick(['hello', '.', '..', '.hidden', ' .', 'a\rb', 'a\nb', r.text(60), 'x'.repeat(r.int(3000)), 'From: x', '', 'QUIT', 'MAIL FROM:<z@example.org>']);
    s += r.pick(['\r\n', '\r\n', '\r\n', '\n', '\r']);
  }
  return s + r.pick(['.\r\n', '.\r\n', '.\r\n', '\r\n.\r\n', '.\n', '', 'QUIT\r\n']);
}

/** A client's session as the bytes it writes, and how it writes them. */
export function smtpSession(r: Random, opts: { sasl: boolean }): string {
  let s = '';
  if (r.chance(0.8)) s += `EHLO fuzz.example\r\n`;
  const n = 1 + r.int(12);
  for (let i = 0; i < n; i++) {
    const kind = r.int(10);
    if (kind < 2) {
      s += `MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n${dataBody(r)}`;
      continue;
    }
    if (opts.sasl && kind < 4) {
      s += `AUTH ${r.pick(['PLAIN', 'LOGIN', 'EXTERNAL', 'plain', 'login'])}${r.pick(['', ` ${saslToken(r)}`])}\r\n`;
      for (let j = r.int(3); j > 0; j--) s += `${saslToken(r)}\r\n`;
      continue;
    }
    const cmd = smtpCommand(r);
    s += cmd + (cmd.startsWith('DATA') && r.chance(0.5) ? `\r\n${dataBody(r)}` : r.pick(['\r\n', '\r\n', '\r\n', '\r\n', '\n', '\r', '\r\r\n']));
  }
  return s;
}

/** Cut `bytes` into pieces for separate TCP writes (a piece may end mid-line or mid-CRLF). */
export function pieces(r: Random, bytes: Buffer): Buffer[] {
  if (r.chance(0.5)) return [bytes];
  const out: Buffer[] = [];
  let at = 0;
  while (at < bytes.length) {
    const n = 1 + r.int(r.chance(0.3) ? 4 : 200);
    out.push(bytes.subarray(at, at + n));
    at += n;
  }
  return out;
}

const SIGNATURE = Buffer.from('0d0a0d0a000d0a515549540a', 'hex');

/** A PROXY protocol header, v1 or v2, right or broken in one of its fields. */
export function proxyHeader(r: Random): Buffer {
  if (r.chance(0.45)) {
    const fam = r.pick(['TCP4', 'TCP6', 'UNKNOWN', 'TCP5', 'tcp4', '']);
    const src = r.pick(['192.0.2.1', '::1', '2001:db8::1', '999.1.1.1', '1.2.3', '01.2.3.4', '::ffff:1.2.3.4', r.text(15), '']);
    const dst = r.pick(['127.0.0.1', '::1', 'x']);
    const port = () => r.pick(['25', '0', '65535', '65536', '-1', '025', 'x', String(r.int(70000))]);
    const sep = () => r.pick([' ', ' ', ' ', '  ', '\t']);
    let s = `${r.pick(['PROXY', 'PROXY', 'proxy', 'PROXY2', 'PROX'])}${sep()}${fam}${sep()}${src}${sep()}${dst}${sep()}${port()}${sep()}${port()}`;
    if (r.chance(0.1)) s += ' extra';
    if (r.chance(0.1)) s += 'x'.repeat(r.int(200));
    s += r.pick(['\r\n', '\r\n', '\r\n', '\n', '', '\r']);
    if (r.chance(0.15)) s = s.slice(0, r.int(s.length));
    return Buffer.from(s, 'latin1');
  }
  const v4 = r.chance(0.6);
  const addrLen = r.pick(v4 ? [12, 12, 12, 0, 4, 36] : [36, 36, 12, 216]);
  const tlvs: Buffer[] = [];
  for (let i = r.int(4); i > 0; i--) {
    const value = r.bytes(r.int(40));
    const head = Buffer.alloc(3);
    head[0] = r.pick([0x01, 0x02, 0x03, 0x04, 0x05, 0x20, 0x21, 0x22, 0x25, 0x30, 0xe0, 0xee, r.int(256)]);
    head.writeUInt16BE(r.chance(0.8) ? value.length : r.int(65536), 1);
    tlvs.push(head, value);
  }
  const block = Buffer.concat([r.bytes(addrLen), ...tlvs]);
  const head = Buffer.alloc(4);
  head[0] = r.pick([0x21, 0x21, 0x21, 0x20, 0x22, 0x11, 0x2f]);
  head[1] = r.pick([0x11, 0x21, 0x12, 0x31, 0x00, 0x22, 0xff, v4 ? 0x11 : 0x21]);
  head.writeUInt16BE(r.chance(0.75) ? block.length : r.pick([0, 1, 11, 65535, block.length + 1, Math.max(0, block.length - 1)]), 2);
  let out = Buffer.concat([r.chance(0.95) ? SIGNATURE : r.bytes(12), head, block]);
  if (r.chance(0.15)) out = out.subarray(0, r.int(out.length));
  return out;
}

/** One Postfix policy request (or several, or a broken one) as bytes. */
export function policyRequest(r: Random): Buffer {
  const attrs: string[] = [];
  const names = ['request', 'protocol_state', 'protocol_name', 'client_address', 'client_name', 'helo_name', 'sender', 'recipient',
    'recipient_count', 'size', 'ccert_fingerprint', 'ccert_pubkey_fingerprint', 'ccert_subject', 'encryption_protocol', 'sasl_username',
    'queue_id', 'instance', 'client_port', 'server_port', 'x_unknown', '__proto__', 'constructor', ''];
  const values = () => r.pick(['smtpd_access_policy', 'RCPT', 'DATA', 'END-OF-MESSAGE', 'MAIL', 'CONNECT', '192.0.2.10', '::1', 'alice@example.org',
    'bob@elsewhere.example', '', '0', '-1', '99999999999999999999', 'AB:'.repeat(31) + 'AB', r.text(40), 'x'.repeat(r.int(5000)), 'a=b', 'é']);
  if (r.chance(0.8)) attrs.push('request=smtpd_access_policy');
  for (let i = r.int(12); i > 0; i--) {
    const name = r.chance(0.9) ? r.pick(names) : r.text(10);
    attrs.push(r.pick([`${name}=${values()}`, `${name}=${values()}`, name, `=${values()}`, `${name} = ${values()}`, `${name}=${values()}\r`]));
  }
  let s = attrs.join('\n') + r.pick(['\n\n', '\n\n', '\n\n', '\n', '', '\r\n\r\n', '\n\n\n']);
  if (r.chance(0.1)) s += 'x'.repeat(r.int(20000));
  if (r.chance(0.2)) s += s;
  const bytes = Buffer.from(s);
  return r.chance(0.05) ? Buffer.concat([bytes, r.bytes(20)]) : bytes;
}

/** One HTTP/1.x request (or something near one) as bytes. */
export function httpRequest(r: Random): Buffer {
  const method = r.pick(['GET', 'GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'OPTIONS', 'TRACE', 'CONNECT', 'get', 'PRI', 'X'.repeat(r.int(100)), '']);
  const path = r.pick(['/', '/metrics', '/health', '/ready', '/status', '/metrics?x=1', '//metrics', '/%2e%2e/', '/../etc/passwd', '*',
    'http://x/metrics', '/' + 'a'.repeat(r.int(20000)), r.text(20), '/%', '/\u00e9']);
  const version = r.pick(['HTTP/1.1', 'HTTP/1.1', 'HTTP/1.0', 'HTTP/2.0', 'HTTP/0.9', '', 'HTTP/1.1 x']);
  const headers: string[] = [];
  if (r.chance(0.8)) headers.push(`Host: ${r.pick(['127.0.0.1', 'localhost', '', 'evil.example', r.text(20)])}`);
  for (let i = r.int(5); i > 0; i--) {
    headers.push(r.pick([`Content-Length: ${r.pick(['0', '5', '-1', 'x', '99999999999'])}`, 'Transfer-Encoding: chunked', 'Connection: close',
      'Connection: keep-alive', `X-${r.text(5)}: ${r.text(30)}`, 'Expect: 100-continue', `Cookie: ${'a'.repeat(r.int(20000))}`, ' folded', 'no-colon']));
  }
  let s = `${method} ${path} ${version}\r\n${headers.join('\r\n')}${headers.length ? '\r\n' : ''}${r.pick(['\r\n', '\r\n', '', '\n'])}`;
  if (r.chance(0.2)) s += r.pick(['hello', '0\r\n\r\n', '5\r\nhello\r\n0\r\n\r\n', 'zz\r\n']);
  if (r.chance(0.2)) s += s;
  return Buffer.from(s);
}
