/**
 * The embedded default: what `npm start` runs when no --config is given. Paths are relative to the
 * working directory; the development PKI under data/pki is created on first start.
 */
import { join } from 'node:path';

export const DEFAULT_CONFIG_YAML = `# Postern embedded default (development). Copy to postern.yaml and edit for real use.
hostname: localhost
dataDir: ./data
scripts: ./scripts
localDomains: [localhost, example.test]
listeners:
  - name: inbound
    listen: 127.0.0.1:2525
    tls: &tls
      mode: starttls
      cert: ./data/pki/server.crt
      key: ./data/pki/server.key
      clientCertificates: request
      caFiles: [./data/pki/ca.crt]
      crlFiles: [./data/pki/ca.crl]
  - name: submission
    listen: 127.0.0.1:2587
    tls: *tls
    requireTls: true
    auth: { mechanisms: [EXTERNAL, PLAIN, LOGIN], required: true }
    certificateIdentity: { field: emailAddress, autoLogin: true }
    senderLogin: { enforce: true }
  - name: submissions
    listen: 127.0.0.1:2465
    tls: { <<: *tls, mode: implicit }
    auth: { mechanisms: [EXTERNAL, PLAIN, LOGIN], required: true }
    certificateIdentity: { field: emailAddress, autoLogin: true }
    senderLogin: { enforce: true }
delivery:
  enabled: false
`;

export const DEMO_USER = { name: 'demo', email: 'demo@example.test' };

/** Where `postern serve` writes the development PKI the embedded default's listeners use, on its first start. */
export function developmentPkiDir(dataDir: string): string {
  return join(dataDir, 'pki');
}
