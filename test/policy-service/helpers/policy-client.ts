/**
 * A client of the Postfix policy protocol, as Postfix's smtpd speaks it: `name=value` lines, an empty
 * line, then read `action=…` and an empty line. Over TCP or a unix socket.
 */
import net from 'node:net';

export type Attributes = Record<string, string | number>;

/** A request's text (the attributes in order, then the empty line). */
export function requestText(attrs: Attributes): string {
  return Object.entries({ request: 'smtpd_access_policy', ...attrs }).map(([k, v]) => `${k}=${v}\n`).join('') + '\n';
}

/** A typical RCPT request of a TLS client with a certificate, as Postfix 3.x sends it. */
export function rcptRequest(extra: Attributes = {}): Attributes {
  return {
    protocol_state: 'RCPT', protocol_name: 'ESMTP', client_address: '192.0.2.10', client_name: 'laptop.example.org',
    reverse_client_name: 'laptop.example.org', client_port: 50123, helo_name: 'laptop.example.org', sender: 'alice@example.org',
    recipient: 'bob@elsewhere.example', recipient_count: 0, queue_id: '', instance: '1a2b.3c4d5e.1.0', size: 0, etrn_domain: '',
    stress: '', sasl_method: '', sasl_username: '', sasl_sender: '', ccert_subject: '', ccert_issuer: '', ccert_fingerprint: '',
    ccert_pubkey_fingerprint: '', encryption_protocol: 'TLSv1.3', encryption_cipher: 'TLS_AES_256_GCM_SHA384', encryption_keysize: 256,
    policy_context: '', server_address: '127.0.0.1', server_port: 25, compatibility_level: '3.6', mail_version: '3.7.11',
    ...extra,
  };
}

export class PolicyClient {
  readonly socket: net.Socket;
  #buffer = '';
  #waiting: Array<(answer: string) => void> = [];
  #answers: string[] = [];
  readonly closed: Promise<void>;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.#buffer += chunk;
      for (let end = this.#buffer.indexOf('\n\n'); end >= 0; end = this.#buffer.indexOf('\n\n')) {
        const answer = this.#buffer.slice(0, end);
        this.#buffer = this.#buffer.slice(end + 2);
        const w = this.#waiting.shift();
        if (w) w(answer); else this.#answers.push(answer);
      }
    });
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('error', () => undefined);
  }

  static connect(target: { port: number; host?: string } | { path: string }): Promise<PolicyClient> {
    return new Promise((resolve, reject) => {
      const socket = 'path' in target ? net.connect(target.path) : net.connect(target.port, target.host ?? '127.0.0.1');
      socket.once('connect', () => resolve(new PolicyClient(socket)));
      socket.once('error', reject);
    });
  }

  /** The next answer (`action=…`, without the empty line). */
  next(): Promise<string> {
    const ready = this.#answers.shift();
    if (ready !== undefined) return Promise.resolve(ready);
    return new Promise((resolve) => this.#waiting.push(resolve));
  }

  send(text: string): void { this.socket.write(text); }

  async ask(attrs: Attributes): Promise<string> {
    this.send(requestText(attrs));
    return this.next();
  }

  /** Bytes received after the last whole answer. */
  get rest(): string { return this.#buffer; }

  close(): void { this.socket.end(); }
}
