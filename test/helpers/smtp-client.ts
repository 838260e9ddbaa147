/**
 * A tiny line-level SMTP client for tests: send exact commands, read exact replies, STARTTLS or
 * implicit TLS with a client certificate. Nothing is hidden, so tests can pin the wire format.
 */
import net from 'node:net';
import tls from 'node:tls';

export interface Reply {
  code: number;
  lines: string[];
  /** The whole reply, lines joined with \n (code prefixes included). */
  text: string;
}

export interface TlsClientOptions {
  cert?: string;
  key?: string;
  ca?: string;
  servername?: string;
  maxVersion?: tls.SecureVersion;
  /** OpenSSL cipher string, e.g. `DEFAULT@SECLEVEL=0` for a legacy client that still presents a weak key. */
  ciphers?: string;
  /** A TLS session from an earlier connection, to ask for resumption. */
  session?: Buffer;
}

/** A recipient refused at RCPT and the reply it got. */
export interface Refusal {
  rcpt: string;
  reply: Reply;
}

export interface SendOptions {
  /**
   * The RCPT refusals this send expects: `true` for any (they are returned for the test to assert), or the
   * recipients that must be refused (each of them refused, every other one accepted). Default: none.
   */
  refusedOk?: true | string[];
}

export interface SendResult extends Reply {
  /** The recipients refused at RCPT, in the order sent. */
  refused: Refusal[];
}

/** Throws unless the refusals are the ones `expected` allows (see SendOptions.refusedOk). */
function checkRefusals(refused: Refusal[], expected: SendOptions['refusedOk']): void {
  if (expected === true) return;
  const allowed = new Set(expected ?? []);
  const unexpected = refused.filter((f) => !allowed.has(f.rcpt));
  const refusedNames = new Set(refused.map((f) => f.rcpt));
  const accepted = [...allowed].filter((rcpt) => !refusedNames.has(rcpt));
  const problems = [
    ...unexpected.map((f) => `RCPT TO:<${f.rcpt}> refused: ${f.reply.text}`),
    ...accepted.map((rcpt) => `RCPT TO:<${rcpt}> accepted, expected a refusal`),
  ];
  if (problems.length) throw new Error(problems.join('\n'));
}

export class SmtpTestClient {
  #socket: net.Socket;
  #buffer = '';
  #waiters: Array<() => void> = [];
  #closed = false;
  readonly transcript: string[] = [];

  private constructor(socket: net.Socket) {
    this.#socket = socket;
    this.#attach(socket);
  }

  /**
   * `localAddress`: the client's own address (e.g. 127.0.0.2, to be another client than 127.0.0.1).
   * `proxyHeader`: bytes sent first, before TLS (a load balancer's PROXY protocol header).
   */
  static async connect(port: number, opts: { implicitTls?: TlsClientOptions; host?: string; localAddress?: string; proxyHeader?: Buffer | string } = {}): Promise<SmtpTestClient> {
    const host = opts.host ?? '127.0.0.1';
    const local = opts.localAddress ? { localAddress: opts.localAddress } : {};
    let socket: net.Socket;
    if (opts.proxyHeader !== undefined) {
      const raw = await new Promise<net.Socket>((resolve, reject) => {
        const s = net.connect({ host, port, ...local }, () => resolve(s));
        s.once('error', reject);
      });
      raw.write(opts.proxyHeader);
      if (!opts.implicitTls) return new SmtpTestClient(raw);
      socket = await new Promise<tls.TLSSocket>((resolve, reject) => {
        const s = tls.connect({ socket: raw, ...tlsOptions(opts.implicitTls!) }, () => resolve(s));
        s.once('error', reject);
      });
    } else if (opts.implicitTls) {
      socket = await new Promise<tls.TLSSocket>((resolve, reject) => {
        const s = tls.connect({ host, port, ...local, ...tlsOptions(opts.implicitTls!) }, () => resolve(s));
        s.once('error', reject);
      });
    } else {
      socket = await new Promise<net.Socket>((resolve, reject) => {
        const s = net.connect({ host, port, ...local }, () => resolve(s));
        s.once('error', reject);
      });
    }
    return new SmtpTestClient(socket);
  }

  #attach(socket: net.Socket): void {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => { this.#buffer += chunk; this.#wake(); });
    socket.on('close', () => { this.#closed = true; this.#wake(); });
    socket.on('error', () => { this.#closed = true; this.#wake(); });
  }

  #wake(): void {
    const w = this.#waiters;
    this.#waiters = [];
    for (const f of w) f();
  }

  get closed(): boolean { return this.#closed; }
  get socket(): net.Socket { return this.#socket; }

  /** Read one (possibly multi-line) reply; rejects if the connection closes first or on timeout. */
  async read(timeoutMs = 15_000): Promise<Reply> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const reply = this.#takeReply();
      if (reply) return reply;
      if (this.#closed) throw new Error(`connection closed; transcript:\n${this.transcript.join('\n')}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timeout waiting for reply; transcript:\n${this.transcript.join('\n')}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.#waiters.push(() => { clearTimeout(t); resolve(); });
      });
    }
  }

  /** Every reply until the server closes the connection. */
  async repliesUntilClosed(): Promise<Reply[]> {
    const replies: Reply[] = [];
    for (;;) {
      try {
        replies.push(await this.read());
      } catch (e) {
        if (this.#closed) return replies;
        throw e;
      }
    }
  }

  #takeReply(): Reply | null {
    const lines: string[] = [];
    let offset = 0;
    for (;;) {
      const nl = this.#buffer.indexOf('\r\n', offset);
      if (nl < 0) return null;
      const line = this.#buffer.slice(offset, nl);
      lines.push(line);
      offset = nl + 2;
      if (/^\d{3}( |$)/.test(line)) break;
    }
    this.#buffer = this.#buffer.slice(offset);
    for (const l of lines) this.transcript.push(`S: ${l}`);
    return { code: Number(lines.at(-1)!.slice(0, 3)), lines, text: lines.join('\n') };
  }

  write(line: string): void {
    this.transcript.push(`C: ${line}`);
    this.#socket.write(`${line}\r\n`);
  }

  async command(line: string, timeoutMs?: number): Promise<Reply> {
    this.write(line);
    return this.read(timeoutMs);
  }

  /** Issue STARTTLS and upgrade; resolves after the handshake. */
  /** `beforeHandshake`: run between the server's 220 and the ClientHello. */
  async starttls(opts: TlsClientOptions, beforeHandshake?: () => Promise<void>): Promise<tls.TLSSocket> {
    const reply = await this.command('STARTTLS');
    if (reply.code !== 220) throw new Error(`STARTTLS refused: ${reply.text}`);
    await beforeHandshake?.();
    const raw = this.#socket;
    raw.removeAllListeners('data');
    raw.removeAllListeners('close');
    const secure = await new Promise<tls.TLSSocket>((resolve, reject) => {
      const s = tls.connect({ socket: raw, ...tlsOptions(opts) }, () => resolve(s));
      s.once('error', reject);
    });
    this.#socket = secure;
    this.#attach(secure);
    return secure;
  }

  /** Greeting + EHLO (+ STARTTLS + EHLO). Returns the last EHLO reply. */
  async hello(opts: { name?: string; starttls?: TlsClientOptions } = {}): Promise<Reply> {
    const greeting = await this.read();
    if (greeting.code !== 220) throw new Error(`greeting: ${greeting.text}`);
    let ehlo = await this.command(`EHLO ${opts.name ?? 'client.example'}`);
    if (opts.starttls) {
      await this.starttls(opts.starttls);
      ehlo = await this.command(`EHLO ${opts.name ?? 'client.example'}`);
    }
    return ehlo;
  }

  /**
   * MAIL, RCPT…, DATA, message; returns the final reply (or the MAIL or DATA failure). Strict about recipients:
   * a RCPT not answered 250/251 fails the send (naming the recipient and the reply, before DATA) unless
   * `refusedOk` expects it, so a test cannot silently send to fewer recipients than it meant. The refusals come
   * back in `refused`; when every recipient was refused the last RCPT reply is returned.
   */
  async sendMail(from: string, to: string[], body = 'Subject: test\r\n\r\nhello\r\n', opts: SendOptions = {}): Promise<SendResult> {
    let r = await this.command(`MAIL FROM:<${from}>`);
    if (r.code !== 250) return { ...r, refused: [] };
    const refused: Refusal[] = [];
    let last = r;
    for (const rcpt of to) {
      last = await this.command(`RCPT TO:<${rcpt}>`);
      if (last.code !== 250 && last.code !== 251) refused.push({ rcpt, reply: last });
    }
    checkRefusals(refused, opts.refusedOk);
    if (refused.length === to.length) return { ...last, refused };
    r = await this.command('DATA');
    if (r.code !== 354) return { ...r, refused };
    this.transcript.push('C: <message>');
    this.#socket.write(body.replace(/^\./gm, '..') + (body.endsWith('\r\n') ? '' : '\r\n') + '.\r\n');
    return { ...(await this.read()), refused };
  }

  async quit(): Promise<void> {
    if (this.#closed) return;
    try { await this.command('QUIT', 2000); } catch { /* closed */ }
    this.#socket.destroy();
  }

  destroy(): void { this.#socket.destroy(); }

  /** Wait until the server closes the connection. */
  async waitClosed(timeoutMs = 15_000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.#closed && Date.now() < deadline) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, deadline - Date.now());
        this.#waiters.push(() => { clearTimeout(t); resolve(); });
      });
    }
    return this.#closed;
  }
}

function tlsOptions(o: TlsClientOptions): tls.ConnectionOptions {
  return {
    cert: o.cert, key: o.key, ca: o.ca, servername: o.servername ?? 'localhost',
    rejectUnauthorized: !!o.ca, maxVersion: o.maxVersion, session: o.session, ciphers: o.ciphers,
  };
}

/**
 * One message on a greeted `c` with DSN or other parameters: `mail` and each of `rcpts` are whole command arguments
 * (`<a@b> SMTPUTF8`, `<c@d> NOTIFY=NEVER`), each must be accepted. Resolves with the queue id.
 */
export async function sendWithParams(c: SmtpTestClient, mail: string, rcpts: string[], body: string): Promise<string> {
  const expect = async (command: string, code: number): Promise<Reply> => {
    const r = await c.command(command);
    if (r.code !== code) throw new Error(`${command.slice(0, 80)}: ${r.text}`);
    return r;
  };
  await expect(`MAIL FROM:${mail}`, 250);
  for (const r of rcpts) await expect(`RCPT TO:${r}`, 250);
  await expect('DATA', 354);
  c.write(`${body}.`);
  const r = await c.read();
  const id = /queued as (\w+)/.exec(r.text)?.[1];
  if (!id) throw new Error(`not queued: ${r.text}`);
  return id;
}

/**
 * Submit one message over plain SMTP on 127.0.0.1:`port`; resolves with the queue id of `… queued as <id>`.
 * Every recipient must be accepted (see SmtpTestClient.sendMail). `login`: logged in first as that user (AUTH PLAIN;
 * the listener's auth script decides: see LOGIN_ANYONE).
 */
export async function submitMessage(port: number, from: string, to: string[], body?: string, helo?: string, login?: string): Promise<string> {
  const c = await SmtpTestClient.connect(port);
  try {
    await c.hello(helo === undefined ? undefined : { name: helo });
    if (login !== undefined) {
      const r = await c.command(authPlainAnyPassword(login));
      if (r.code !== 235) throw new Error(`not logged in: ${r.text}`);
    }
    const r = await c.sendMail(from, to, body);
    const id = /queued as ([0-9a-z]+)/.exec(r.text)?.[1];
    if (!id) throw new Error(`not queued: ${r.text}`);
    return id;
  } finally {
    await c.quit();
  }
}

/** A plain session on 127.0.0.1:`port` greeted (EHLO `helo`) with a transaction open (MAIL FROM accepted): ready for RCPT TO. */
export async function openTransaction(port: number, helo = 'client.example', from = 'a@sender.example'): Promise<SmtpTestClient> {
  const c = await SmtpTestClient.connect(port);
  await c.hello({ name: helo });
  const r = await c.command(`MAIL FROM:<${from}>`);
  if (!r.text.startsWith('250 ')) throw new Error(`MAIL FROM not accepted: ${r.text}`);
  return c;
}

/**
 * A listener's auth script that logs anyone in under the name given (with any password): for tests of what a
 * logged-in session gets (DKIM signing by sender domain), on a listener with `auth: { mechanisms: [PLAIN] }`.
 */
export const LOGIN_ANYONE = 'export default (ctx) => accept({ username: ctx.auth.username });\n';

/** AUTH PLAIN as `user`, with a password LOGIN_ANYONE takes. */
export const authPlainAnyPassword = (user: string): string => `AUTH PLAIN ${Buffer.from(`\0${user}\0any`).toString('base64')}`;
