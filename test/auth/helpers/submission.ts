/** What the password-AUTH tests share: the replies they expect, AUTH PLAIN lines, the submission listener. */
import type { TestPki } from '../../helpers/pki.ts';

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
