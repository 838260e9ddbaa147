/**
 * The chain verdict of a client certificate given without its private key (`postern try --cert` with a
 * certificate alone, e.g. one copied from a log or a device's export): no handshake can present it, so
 * `openssl verify` judges it against the listener's CAs and CRLs, as the listener's OpenSSL would (purpose
 * sslclient, the leaf checked against the CRLs), and its error is named as Node names a handshake's.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** X509_V_ERR_* numbers as Node's TLSSocket.authorizationError names them. */
const ERROR_NAMES: Record<number, string> = {
  2: 'UNABLE_TO_GET_ISSUER_CERT', 3: 'UNABLE_TO_GET_CRL', 4: 'UNABLE_TO_DECRYPT_CERT_SIGNATURE',
  5: 'UNABLE_TO_DECRYPT_CRL_SIGNATURE', 6: 'UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY', 7: 'CERT_SIGNATURE_FAILURE',
  8: 'CRL_SIGNATURE_FAILURE', 9: 'CERT_NOT_YET_VALID', 10: 'CERT_HAS_EXPIRED', 11: 'CRL_NOT_YET_VALID',
  12: 'CRL_HAS_EXPIRED', 13: 'ERROR_IN_CERT_NOT_BEFORE_FIELD', 14: 'ERROR_IN_CERT_NOT_AFTER_FIELD',
  15: 'ERROR_IN_CRL_LAST_UPDATE_FIELD', 16: 'ERROR_IN_CRL_NEXT_UPDATE_FIELD', 17: 'OUT_OF_MEM',
  18: 'DEPTH_ZERO_SELF_SIGNED_CERT', 19: 'SELF_SIGNED_CERT_IN_CHAIN', 20: 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  21: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 22: 'CERT_CHAIN_TOO_LONG', 23: 'CERT_REVOKED', 24: 'INVALID_CA',
  25: 'PATH_LENGTH_EXCEEDED', 26: 'INVALID_PURPOSE', 27: 'CERT_UNTRUSTED', 28: 'CERT_REJECTED',
};

export interface OfflineVerdict { authorized: boolean; authorizationError: string | null }

/** `chain`: the certificate's PEM, then any chain certificates sent along; `ca`, `crl`: the listener's PEMs. */
export async function offlineVerdict(chain: string, ca: readonly string[], crl: readonly string[]): Promise<OfflineVerdict> {
  if (ca.length === 0) return { authorized: false, authorizationError: 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY' };
  const certs = chain.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  const dir = await mkdtemp(join(tmpdir(), 'postern-try-verify-'));
  try {
    const file = (name: string, text: string): Promise<string> => writeFile(join(dir, name), text).then(() => join(dir, name));
    const args = ['verify', '-purpose', 'sslclient', '-CAfile', await file('ca.pem', ca.join('\n'))];
    if (crl.length) args.push('-crl_check', '-CRLfile', await file('crl.pem', crl.join('\n')));
    if (certs.length > 1) args.push('-untrusted', await file('chain.pem', certs.slice(1).join('\n')));
    args.push(await file('cert.pem', certs[0] ?? chain));
    const out = await new Promise<string>((resolve, reject) => {
      execFile('openssl', args, { timeout: 30_000 }, (err, stdout, stderr) => {
        if (err && (err as NodeJS.ErrnoException).code === 'ENOENT') reject(new Error('openssl is needed to verify a certificate given without its key'));
        else resolve(`${stdout}\n${stderr}`);
      });
    });
    // "error 23 at 0 depth lookup: certificate revoked"; "…: OK" when it verified.
    const error = /error (\d+) at \d+ depth lookup/.exec(out);
    if (!error) return /: OK\b/.test(out) ? { authorized: true, authorizationError: null } : { authorized: false, authorizationError: 'UNKNOWN' };
    const n = Number(error[1]);
    return { authorized: false, authorizationError: ERROR_NAMES[n] ?? `X509_V_ERR_${n}` };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
