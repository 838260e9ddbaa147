/** What the password-AUTH tests share: the replies they expect, AUTH PLAIN lines, the submission listener. */
import { readFile } from 'node:fs/promises';
import { makeTestPki, type TestPki } from '../../helpers/pki.ts';
import type { TestServer } from '../../helpers/postern.ts';
import { SmtpTestClient, type TlsClientOptions } from '../../helpers/smtp-client.ts';
import { hashPassword } from '../../../engine/auth/password-hash.ts';

export const INVALID = '535 5.7.8 Authentication credentials invalid';
export const TOO_MANY = '421 4.7.0 Too many authentication failures, try again later';

export const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64');

/** `AUTH PLAIN` with its initial response. */
export const plain = (user: string, password: string, authzid = ''): string => `AUTH PLAIN ${b64(`${authzid}\0${user}\0${password}`)}`;

/** A submission listener: STARTTLS, client certificate requested, identity from emailAddress, PLAIN + LOGIN (or `opts.auth`); users in ./users. */
export function submissionConfig(pki: TestPki, limits: string, opts: { crl?: boolean; auth?: string } = {}): string {
  const crl = opts.crl ? `, crlFiles: [${pki.crl}]` : '';
  return `
localDomains: [example.com]
users: ./users
listeners:
  - name: sub
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${pki.ca.cert}]${crl} }
    auth: ${opts.auth ?? '{ mechanisms: [PLAIN, LOGIN] }'}
    certificateIdentity: { field: emailAddress }
    limits: ${limits}
`;
}

export interface Submission {
  pki: TestPki;
  /** The test CA, PEM. */
  ca: string;
  server: TestServer;
  /** Connected, EHLO'd, STARTTLS done (presenting `cert`'s certificate, if given) and EHLO'd again. */
  tlsClient(cert?: TlsClientOptions): Promise<SmtpTestClient>;
}

/** A server with the submission listener (submissionConfig); `users` (name → password) hashed into its users file. */
export async function startSubmission(limits: string, opts: { users?: Record<string, string>; scripts?: Record<string, string>; auth?: string } = {}): Promise<Submission> {
  const pki = await makeTestPki();
  const ca = await readFile(pki.ca.cert, 'utf8');
  let users = '# test users\n';
  for (const [name, password] of Object.entries(opts.users ?? {})) users += `${name}:${await hashPassword(password)}\n`;
  // Loaded here, not at the top: the cluster tests that import this file for its replies and plain() start no server in-process.
  const { startTestServer } = await import('../../helpers/postern.ts');
  const server = await startTestServer({ config: submissionConfig(pki, limits, { auth: opts.auth }), files: { users }, scripts: opts.scripts });
  const tlsClient = async (cert?: TlsClientOptions): Promise<SmtpTestClient> => {
    const c = await SmtpTestClient.connect(server.port('sub'));
    await c.hello({ starttls: { ca, ...cert } });
    return c;
  };
  return { pki, ca, server, tlsClient };
}
