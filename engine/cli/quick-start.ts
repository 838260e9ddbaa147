/** The commands printed on a development start: how to reach the listeners with the demo certificate. */
import { relative } from 'node:path';

export interface DevPkiPaths {
  ca: string;
  clientCert: string;
  clientKey: string;
  clientPem: string;
  clientP12?: string | null;
}

export function printQuickStart(pki: DevPkiPaths, listeners: Map<string, string>): void {
  process.stdout.write(quickStartText(pki, listeners));
}

/** The commands, as printed (test/cli/quick-start.test.ts runs them). */
export function quickStartText(pki: DevPkiPaths, listeners: Map<string, string>): string {
  const rel = (p: string): string => relative(process.cwd(), p) || p;
  const port = (name: string): string => (listeners.get(name) ?? '').split(':').pop() ?? '';
  const lines = [
    '',
    'Postern development server. Demo client certificate (demo@example.test):',
    `  ${rel(pki.clientCert)} + ${rel(pki.clientKey)}${pki.clientP12 ? `   (PKCS#12 for mail clients: ${rel(pki.clientP12)}, password "postern")` : ''}`,
    '',
    'Send with the certificate over STARTTLS (swaks):',
    `  swaks --server 127.0.0.1 --port ${port('submission')} --tls --tls-cert ${rel(pki.clientCert)} --tls-key ${rel(pki.clientKey)} \\`,
    '    --from demo@example.test --to someone@example.test',
    '',
    'AUTH EXTERNAL by hand (openssl s_client; then type EHLO me, AUTH EXTERNAL =):',
    `  openssl s_client -quiet -crlf -starttls smtp -connect 127.0.0.1:${port('submission')} -CAfile ${rel(pki.ca)} \\`,
    `    -cert ${rel(pki.clientCert)} -key ${rel(pki.clientKey)}`,
    '',
    'AUTH EXTERNAL with curl over implicit TLS:',
    `  printf 'From: demo@example.test\\r\\nSubject: hi\\r\\n\\r\\nhello\\r\\n' | curl -sS --url smtps://localhost:${port('submissions')}/laptop.example --cacert ${rel(pki.ca)} \\`,
    `    --cert ${rel(pki.clientPem)} --login-options AUTH=EXTERNAL --sasl-ir --mail-from demo@example.test --mail-rcpt someone@example.test -T -`,
    '',
  ];
  return lines.join('\n') + '\n';
}
