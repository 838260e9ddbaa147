/**
 * Shared test fixtures for the sandbox: script sources, a host bridge that records what scripts did,
 * and a realistic AUTH context (about 3 KB of JSON with a PEM certificate).
 */
import { randomBytes } from 'node:crypto';
import type { AuthContext, HookName } from '../../engine/sandbox/api/index.ts';
import type { HostBridge, LogLevel, ScriptSource } from '../../engine/sandbox/index.ts';

export const SCRIPT_DIR = '/srv/postern/scripts';

/** A JavaScript script for `hook`, named like the file the loader would have read. */
export function js(hook: HookName, source: string): ScriptSource {
  return { hook, file: `${SCRIPT_DIR}/${hook}.js`, source };
}

export interface LogEntry {
  connectionId: string | null;
  file: string;
  level: LogLevel;
  message: string;
}

export function recordingHost(tables: Record<string, Record<string, string>> = {}): HostBridge & { logs: LogEntry[]; lookups: Array<[string, string]> } {
  const logs: LogEntry[] = [];
  const lookups: Array<[string, string]> = [];
  return {
    logs,
    lookups,
    lookup(table, key) {
      lookups.push([table, key]);
      return tables[table]?.[key] ?? null;
    },
    log(connectionId, file, level, message) {
      logs.push({ connectionId, file, level, message });
    },
  };
}

function fakePem(): string {
  const body = randomBytes(900).toString('base64').match(/.{1,64}/g)!.join('\n');
  return `-----BEGIN CERTIFICATE-----\n${body}\n-----END CERTIFICATE-----\n`;
}

export function authContext(): AuthContext {
  const name = (cn: string, o: string) => ({
    dn: `CN=${cn},O=${o},C=SE`, CN: cn, O: o, C: 'SE', emailAddress: `${cn}@example.com`,
    attributes: [['CN', cn], ['O', o], ['C', 'SE'], ['emailAddress', `${cn}@example.com`]] as Array<[string, string]>,
  });
  return {
    connection: {
      id: 'c-7f3a9d2e', source: 'smtp', remoteAddress: '192.0.2.44', remotePort: 51234, localAddress: '198.51.100.7', localPort: 587,
      listener: 'submission', helo: 'laptop.example.com', auth: null,
      tls: { protocol: 'TLSv1.3', cipher: 'TLS_AES_256_GCM_SHA384', sni: 'mail.example.com', mode: 'starttls' },
      clientCertificate: {
        subject: name('alice', 'Example Org'),
        issuer: name('Example Client CA', 'Example Org'),
        san: { email: ['alice@example.com'], dns: [], ip: [], uri: [] },
        serial: '4f2a9c01d3e5b7a8',
        notBefore: '2025-01-01T00:00:00.000Z',
        notAfter: '2027-01-01T00:00:00.000Z',
        keyType: 'ec', keyBits: 256,
        fingerprint: {
          sha1: 'a'.repeat(40), sha256: 'b'.repeat(64), md5: 'c'.repeat(32),
          sha1Colon: 'AA:'.repeat(19) + 'AA', sha256Colon: 'BB:'.repeat(31) + 'BB', md5Colon: 'CC:'.repeat(15) + 'CC',
        },
        pin: { sha256: 'd'.repeat(64), sha256Colon: 'DD:'.repeat(31) + 'DD', sha256Base64: 'x'.repeat(43) + '=', sha256Base64Url: 'y'.repeat(43), sha1: 'e'.repeat(40), sha1Colon: 'EE:'.repeat(19) + 'EE', md5: 'f'.repeat(32), md5Colon: 'FF:'.repeat(15) + 'FF' },
        pem: fakePem(),
        verified: true, verifyError: null, verifyErrorCode: null,
      },
      certificateIdentity: 'alice',
    },
    auth: { mechanism: 'EXTERNAL', username: '', password: '', authzid: '' },
    builtin: { accepted: true, username: 'alice', reason: 'certificate-identity' },
  };
}
