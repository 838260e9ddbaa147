/**
 * Outbound TLS: turns a TLS policy (mode none|may|encrypt|verify, client certificate and CA by name, server
 * name) into nodemailer connection options. Key material is read from the configured files once per
 * policy generation (a rotated file makes a new generation), so the next connection uses the new key.
 * The same loaders check the files for `postern check` (checkOutboundTls).
 */
import { X509Certificate, createHash } from 'node:crypto';
import { isIP } from 'node:net';
import { checkServerIdentity, createSecureContext, type ConnectionOptions } from 'node:tls';
import type { DeliveryConfig } from '../config/schema.ts';
import { loadKeyPair, loadTrustMaterial, MIN_EC_BITS, MIN_RSA_BITS, spkiFacts, TlsFileError, type TrustMaterial } from '../certificates/index.ts';
import { DeliveryFailure } from './outcome.ts';
import { declared } from './declared.ts';

export type TlsMode = 'none' | 'may' | 'encrypt' | 'verify';

export interface TlsPolicy {
  mode: TlsMode;
  /** Name under delivery.clientCertificates. */
  clientCertificate?: string;
  /** SNI, and the name checked in verify mode (default: the next hop's host name). */
  serverName?: string;
  /** Name under delivery.caFiles (verify; default: Node's root store). */
  ca?: string;
}

export interface ConnectionSecurity {
  /** Implicit TLS from the first byte. */
  secure: boolean;
  ignoreTLS: boolean;
  requireTLS: boolean;
  opportunisticTLS: boolean;
  /** Passed to tls.connect (both for implicit TLS and STARTTLS). */
  tls: ConnectionOptions;
  /** The client certificate in `tls`, by its name, for the reason of a failed handshake. */
  clientCertificate?: { name: string; notAfter: Date };
  servername?: string;
  mode: TlsMode;
  /** Connections with equal keys are interchangeable (same TLS settings and key material). */
  key: string;
}

/** The lowest TLS version of every outbound connection. */
const MIN_TLS_VERSION = 'TLSv1.2';

/** Days before a client certificate's notAfter from which `postern check` and the queue runner warn. */
export const EXPIRY_WARNING_DAYS = 14;

/** What reading the outbound TLS files found; every line is `<file>: <config key>: <message>`. */
export interface OutboundTlsReport {
  /** Unusable: a file that cannot be read, no certificate in it, a key that does not match its certificate. */
  errors: string[];
  /** The same, as thrown (an OutboundFileError names the configuration key of the file). */
  failures: unknown[];
  /** Usable but wrong: an expired client certificate (delivery still presents it; the next hop decides). */
  problems: OutboundFinding[];
  /** Worth a look: expiring within EXPIRY_WARNING_DAYS, not yet valid, an expired or non-CA certificate in a CA file. */
  warnings: OutboundFinding[];
}

/**
 * A finding about a usable file: `line` is `<file>: <config key>: <message>` (a log line); `path` is the key and
 * `fileProblem` `<file>: <message>`, so that a build can put the configuration's line in front, as for errors.
 */
export interface OutboundFinding { line: string; path: string[]; fileProblem: string }

function finding(fileProblem: string, file: string, path: string[]): OutboundFinding {
  return { line: naming(fileProblem, file, path.join('.')), path, fileProblem };
}

/** Checked PEM material plus an id that changes with the content (part of the connection pool key). */
export interface OutboundMaterial {
  pem: { cert?: string; key?: string; ca?: string[] };
  id: string;
  /** A client certificate's leaf's end of validity. */
  notAfter?: Date;
  /** For OutboundTlsReport.problems and .warnings. */
  problems: OutboundFinding[];
  warnings: OutboundFinding[];
}

/** `<file>: <rest>` (the certificates module's errors) → `<file>: <config key>: <rest>`. */
function naming(message: string, file: string, key: string): string {
  return message.startsWith(`${file}: `) ? `${file}: ${key}: ${message.slice(file.length + 2)}` : `${key}: ${message}`;
}

/**
 * An outbound TLS file that cannot be used: `<file>: <config key>: <problem>`, and the key's path, so that a
 * build can name the line of the configuration that points at the file.
 */
export class OutboundFileError extends Error {
  /** e.g. `['delivery', 'clientCertificates', 'laptop', 'key']`. */
  readonly path: string[];
  /** `<file>: <problem>`, as the certificates module said it. */
  readonly fileProblem: string;
  constructor(err: TlsFileError, path: string[]) {
    super(naming(err.message, err.file, path.join('.')));
    this.name = 'OutboundFileError';
    this.path = path;
    this.fileProblem = err.message;
  }
}

/**
 * Read `delivery.clientCertificates.<name>`: the certificate chain (PEM, leaf first; a combined key+cert
 * file works) and the private key (PEM: RSA, ECDSA, Ed25519, …), which must match the leaf. Throws with
 * `<file>: delivery.clientCertificates.<name>.cert|key: …`; the leaf's validity period becomes problems
 * (expired) and warnings (not yet valid, expiring within EXPIRY_WARNING_DAYS). Shared by the queue runner
 * and `postern check`.
 */
export async function loadOutboundCertificate(delivery: DeliveryConfig, name: string, now = new Date()): Promise<OutboundMaterial> {
  const files = declared(delivery.clientCertificates, name);
  const at = `delivery.clientCertificates.${name}`;
  if (!files) throw new Error(`${at}: no such client certificate`);
  let pair: { cert: string; key: string };
  try {
    pair = await loadKeyPair(files.cert, files.key);
  } catch (err) {
    if (!(err instanceof TlsFileError)) throw err;
    // Which of the two settings is at fault: the key's for key problems (a mismatch among them), else the certificate's.
    throw new OutboundFileError(err, ['delivery', 'clientCertificates', name, err.role === 'key' ? 'key' : 'cert']);
  }
  const leaf = new X509Certificate(pair.cert); // the first block, already parsed once by loadKeyPair
  const refused = tlsRefusal(pair, leaf);
  if (refused) throw new OutboundFileError(new TlsFileError(files.cert, 'cert', refused), ['delivery', 'clientCertificates', name, 'cert']);
  const problems: OutboundFinding[] = [];
  const warnings: OutboundFinding[] = [];
  const subject = `certificate "${leaf.subject.replace(/\n/g, ', ')}"`;
  const about = (message: string): OutboundFinding => finding(`${files.cert}: ${subject} ${message}`, files.cert, ['delivery', 'clientCertificates', name, 'cert']);
  const notAfter = leaf.validToDate;
  const notBefore = leaf.validFromDate;
  if (notAfter.getTime() < now.getTime()) {
    problems.push(about(`expired on ${notAfter.toISOString()}`));
  } else if (notAfter.getTime() - now.getTime() < EXPIRY_WARNING_DAYS * 86400_000) {
    const days = Math.floor((notAfter.getTime() - now.getTime()) / 86400_000);
    warnings.push(about(`expires on ${notAfter.toISOString()} (in ${days === 0 ? 'less than a day' : days === 1 ? '1 day' : `${days} days`})`));
  }
  if (notBefore.getTime() > now.getTime()) warnings.push(about(`is not valid before ${notBefore.toISOString()}`));
  const id = createHash('sha256').update(pair.cert).update('\0').update(pair.key).digest('hex').slice(0, 16);
  return { pem: { cert: pair.cert, key: pair.key }, id, notAfter, problems, warnings };
}

/**
 * Why TLS would refuse to present this pair, or null. OpenSSL checks a certificate as it is loaded for a
 * connection (security level 2: an RSA key under 2048 bits, say): such a pair passed the checks above but
 * failed every delivery, and in `may` mode the retry without TLS sent the mail in plaintext, uncertified.
 */
function tlsRefusal(pair: { cert: string; key: string }, leaf: X509Certificate): string | null {
  try {
    createSecureContext({ cert: pair.cert, key: pair.key, minVersion: MIN_TLS_VERSION });
    return null;
  } catch (err) {
    const subject = leaf.subject.replace(/\n/g, ', ');
    if ((err as { code?: string }).code === 'ERR_SSL_EE_KEY_TOO_SMALL') {
      const { keyType, keyBits } = spkiFacts(leaf.publicKey.export({ type: 'spki', format: 'der' }));
      return `certificate "${subject}" has a ${keyBits}-bit ${keyType.toUpperCase()} key, which TLS refuses to present ` +
        `(OpenSSL security level 2: RSA at least ${MIN_RSA_BITS} bits, EC at least ${MIN_EC_BITS}): issue one with a stronger key`;
    }
    return `certificate "${subject}" cannot be presented over TLS: ${(err as Error).message}`;
  }
}

/** Read `delivery.caFiles.<name>` (PEM certificates). Throws with `<file>: delivery.caFiles.<name>: …`. */
export async function loadOutboundCa(delivery: DeliveryConfig, name: string): Promise<OutboundMaterial> {
  const file = declared(delivery.caFiles, name);
  const at = `delivery.caFiles.${name}`;
  if (file === undefined) throw new Error(`${at}: no such CA file`);
  let trust: TrustMaterial;
  try {
    trust = await loadTrustMaterial({ caFiles: [file], crlFiles: [] });
  } catch (err) {
    if (!(err instanceof TlsFileError)) throw err;
    throw new OutboundFileError(err, ['delivery', 'caFiles', name]);
  }
  const id = createHash('sha256').update(trust.ca.join('')).digest('hex').slice(0, 16);
  return { pem: { ca: trust.ca }, id, problems: [], warnings: trust.warnings.map((w) => finding(w, file, ['delivery', 'caFiles', name])) };
}

/** Read every declared client certificate and CA file (`postern check`, a reload): all findings at once. */
export function checkOutboundTls(delivery: DeliveryConfig, now = new Date()): Promise<OutboundTlsReport> {
  return report([
    ...Object.keys(delivery.clientCertificates).map((n) => loadOutboundCertificate(delivery, n, now)),
    ...Object.keys(delivery.caFiles).map((n) => loadOutboundCa(delivery, n)),
  ]);
}

async function report(jobs: Array<Promise<OutboundMaterial>>): Promise<OutboundTlsReport> {
  const out: OutboundTlsReport = { errors: [], failures: [], problems: [], warnings: [] };
  for (const r of await Promise.allSettled(jobs)) {
    if (r.status === 'rejected') {
      out.errors.push((r.reason as Error).message);
      out.failures.push(r.reason);
    }
    else { out.problems.push(...r.value.problems); out.warnings.push(...r.value.warnings); }
  }
  return out;
}

/** Material per generation: `scope` is the generation object, so a reload starts from fresh files. */
export class OutboundTlsMaterial {
  readonly #cache = new WeakMap<object, Map<string, Promise<OutboundMaterial>>>();

  #get(scope: object, key: string, load: () => Promise<OutboundMaterial>): Promise<OutboundMaterial> {
    let m = this.#cache.get(scope);
    if (!m) this.#cache.set(scope, (m = new Map()));
    let p = m.get(key);
    if (!p) {
      const map = m;
      p = load();
      map.set(key, p);
      p.catch(() => map.delete(key)); // a file caught mid-rotation is read again next time
    }
    return p;
  }

  clientCertificate(delivery: DeliveryConfig, scope: object, name: string): Promise<OutboundMaterial> {
    if (!declared(delivery.clientCertificates, name)) return Promise.reject(new DeliveryFailure(`no client certificate named "${name}" under delivery.clientCertificates`, { permanent: false, enhanced: '4.7.0' }));
    return this.#get(scope, `cert ${name}`, () => loadOutboundCertificate(delivery, name).catch((err: Error) => {
      throw new DeliveryFailure(err.message, { permanent: false, enhanced: '4.7.0' });
    }));
  }

  ca(delivery: DeliveryConfig, scope: object, name: string): Promise<OutboundMaterial> {
    if (declared(delivery.caFiles, name) === undefined) return Promise.reject(new DeliveryFailure(`no CA named "${name}" under delivery.caFiles`, { permanent: false, enhanced: '4.7.0' }));
    return this.#get(scope, `ca ${name}`, () => loadOutboundCa(delivery, name).catch((err: Error) => {
      throw new DeliveryFailure(err.message, { permanent: false, enhanced: '4.7.0' });
    }));
  }

  /** Read every declared certificate and CA now, into this generation's cache; returns what is worth a log line. */
  preload(delivery: DeliveryConfig, scope: object): Promise<OutboundTlsReport> {
    return report([
      ...Object.keys(delivery.clientCertificates).map((n) => this.clientCertificate(delivery, scope, n)),
      ...Object.keys(delivery.caFiles).map((n) => this.ca(delivery, scope, n)),
    ]);
  }

  /** Options for one connection to `host` under `policy`. Throws DeliveryFailure for unknown names or unreadable files. */
  async security(delivery: DeliveryConfig, scope: object, policy: TlsPolicy, host: string, implicitTls: boolean): Promise<ConnectionSecurity> {
    const mode = policy.mode;
    // The name the next hop's certificate must carry (verify). SNI is a host name only (RFC 6066 §3): an address,
    // the script's `serverName` included, is never sent in it (Node sends what it is given); it is checked as an IP SAN.
    const name = policy.serverName ?? host;
    const servername = isIP(name) ? undefined : name.replace(/\.$/, ''); // nor with a trailing dot (an absolute name)
    const tls: ConnectionOptions = { minVersion: MIN_TLS_VERSION, rejectUnauthorized: mode === 'verify' };
    if (servername) tls.servername = servername;
    // Node checks the SNI name, or without one the address connected to, which need not be the name given.
    else tls.checkServerIdentity = (_address, cert) => checkServerIdentity(name, cert);
    const ids: string[] = [mode, implicitTls ? 'implicit' : 'starttls', name];
    let clientCertificate: ConnectionSecurity['clientCertificate'];
    if (mode !== 'none' || implicitTls) {
      if (policy.clientCertificate) {
        const m = await this.clientCertificate(delivery, scope, policy.clientCertificate);
        tls.cert = m.pem.cert;
        tls.key = m.pem.key;
        ids.push(`cert:${m.id}`);
        clientCertificate = { name: policy.clientCertificate, notAfter: m.notAfter! };
      }
      if (mode === 'verify' && policy.ca) {
        const m = await this.ca(delivery, scope, policy.ca);
        tls.ca = m.pem.ca;
        ids.push(`ca:${m.id}`);
      }
    }
    return {
      secure: implicitTls,
      ignoreTLS: mode === 'none' && !implicitTls,
      requireTLS: (mode === 'encrypt' || mode === 'verify') && !implicitTls,
      opportunisticTLS: mode === 'may',
      tls,
      ...(clientCertificate ? { clientCertificate } : {}),
      ...(servername ? { servername } : {}),
      mode,
      key: ids.join('|'),
    };
  }
}
