/**
 * DKIM for delivery tests: key pairs made with openssl, and an independent verifier, Debian's dkimpy
 * (python3-dkim, run with /usr/bin/python3), given each public key directly (its dnsfunc answers the
 * `<selector>._domainkey.<domain>` TXT query; no DNS).
 */
import { execFileSync, spawn } from 'node:child_process';
import { createPublicKey } from 'node:crypto';

export interface DkimKeyPair {
  /** PEM private key. */
  privateKey: string;
  /** The TXT record that publishes it: `v=DKIM1; k=…; p=…`. */
  txt: string;
}

/** A fresh RSA (2048 bits) or Ed25519 key pair, from openssl. */
export function dkimKeyPair(type: 'rsa' | 'ed25519'): DkimKeyPair {
  const args = type === 'rsa' ? ['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048'] : ['genpkey', '-algorithm', 'ed25519'];
  const privateKey = execFileSync('openssl', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  const pub = createPublicKey(privateKey);
  // RSA: the SubjectPublicKeyInfo; Ed25519: the raw 32-byte key (RFC 8463 §4.2), the SPKI's last 32 bytes.
  const der = pub.export({ type: 'spki', format: 'der' });
  const p = (type === 'rsa' ? der : der.subarray(der.length - 32)).toString('base64');
  return { privateKey, txt: `v=DKIM1; k=${type}; p=${p}` };
}

const VERIFY = `
import sys, json, dkim
records = json.loads(sys.argv[1])
def dnsfunc(name, timeout=5):
    value = records.get(name.decode() if isinstance(name, bytes) else name)
    return value.encode() if value else None
message = sys.stdin.buffer.read()
results = []
d = dkim.DKIM(message)
for i in range(len([l for l in message.split(b'\\r\\n\\r\\n', 1)[0].split(b'\\r\\n') if l.lower().startswith(b'dkim-signature:')])):
    try:
        results.append(bool(d.verify(idx=i, dnsfunc=dnsfunc)))
    except dkim.ValidationError:  # a body hash mismatch is raised, not returned
        results.append(False)
print(json.dumps({"results": results, "signatures": len(results)}))
`;

/**
 * Verify every DKIM-Signature of `message` with dkimpy; `records`: TXT records by name
 * (`sel._domainkey.example.com.` with the final dot, as dkimpy asks). One boolean per signature.
 */
export function verifyDkim(message: Buffer, records: Record<string, string>): Promise<boolean[]> {
  return new Promise((resolve, reject) => {
    const py = spawn('/usr/bin/python3', ['-c', VERIFY, JSON.stringify(records)], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    py.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    py.stderr.on('data', (d: Buffer) => { err += d.toString(); });
    py.on('error', reject);
    py.on('close', (code) => {
      if (code !== 0) return reject(new Error(`dkimpy exited with ${code}: ${err}`));
      resolve((JSON.parse(out) as { results: boolean[] }).results);
    });
    py.stdin.end(message);
  });
}
