/**
 * Outbound TLS: turns a TLS policy (mode none|may|encrypt|verify, client certificate and CA by name, server
 * name) into nodemailer connection options. Key material is read from the configured files once per
 * policy generation (a rotated file makes a new generation), so the next connection uses the new key.
 */
import { createHash } from 'node:crypto';
import { isIP } from 'node:net';
import type { ConnectionOptions } from 'node:tls';
import type { DeliveryConfig } from '../config/schema.ts';
import { loadKeyPair, loadTrustMaterial } from '../certificates/index.ts';
import { DeliveryFailure } from './outcome.ts';

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
  servername?: string;
  mode: TlsMode;
  /** Connections with equal keys are interchangeable (same TLS settings and key material). */
  key: string;
}

interface Material { pem: { cert?: string; key?: string; ca?: string[] }; id: string }

/** Material per generation: `scope` is the generation object, so a reload starts from fresh files. */
export class OutboundTlsMaterial {
  readonly #cache = new WeakMap<object, Map<string, Promise<Material>>>();

  #get(scope: object, key: string, load: () => Promise<Material>): Promise<Material> {
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

  clientCertificate(delivery: DeliveryConfig, scope: object, name: string): Promise<Material> {
    const files = delivery.clientCertificates[name];
    if (!files) return Promise.reject(new DeliveryFailure(`no client certificate named "${name}" under delivery.clientCertificates`, { permanent: false, enhanced: '4.7.0' }));
    return this.#get(scope, `cert ${name}`, async () => {
      const { cert, key } = await loadKeyPair(files.cert, files.key).catch((err: Error) => {
        throw new DeliveryFailure(`client certificate "${name}": ${err.message}`, { permanent: false, enhanced: '4.7.0' });
      });
      return { pem: { cert, key }, id: createHash('sha256').update(cert).update('\0').update(key).digest('hex').slice(0, 16) };
    });
  }

  ca(delivery: DeliveryConfig, scope: object, name: string): Promise<Material> {
    const file = delivery.caFiles[name];
    if (!file) return Promise.reject(new DeliveryFailure(`no CA named "${name}" under delivery.caFiles`, { permanent: false, enhanced: '4.7.0' }));
    return this.#get(scope, `ca ${name}`, async () => {
      const { ca } = await loadTrustMaterial({ caFiles: [file], crlFiles: [] }).catch((err: Error) => {
        throw new DeliveryFailure(`CA "${name}": ${err.message}`, { permanent: false, enhanced: '4.7.0' });
      });
      return { pem: { ca }, id: createHash('sha256').update(ca.join('')).digest('hex').slice(0, 16) };
    });
  }

  /** Read every declared certificate and CA now; returns the problems (for a log line after a reload). */
  async preload(delivery: DeliveryConfig, scope: object): Promise<string[]> {
    const jobs = [
      ...Object.keys(delivery.clientCertificates).map((n) => this.clientCertificate(delivery, scope, n)),
      ...Object.keys(delivery.caFiles).map((n) => this.ca(delivery, scope, n)),
    ];
    const results = await Promise.allSettled(jobs);
    return results.flatMap((r) => (r.status === 'rejected' ? [(r.reason as Error).message] : []));
  }

  /** Options for one connection to `host` under `policy`. Throws DeliveryFailure for unknown names or unreadable files. */
  async security(delivery: DeliveryConfig, scope: object, policy: TlsPolicy, host: string, implicitTls: boolean): Promise<ConnectionSecurity> {
    const mode = policy.mode;
    const servername = policy.serverName ?? (isIP(host) ? undefined : host);
    const tls: ConnectionOptions = { minVersion: 'TLSv1.2', rejectUnauthorized: mode === 'verify' };
    if (servername) tls.servername = servername;
    const ids: string[] = [mode, implicitTls ? 'implicit' : 'starttls', servername ?? ''];
    if (mode !== 'none' || implicitTls) {
      if (policy.clientCertificate) {
        const m = await this.clientCertificate(delivery, scope, policy.clientCertificate);
        tls.cert = m.pem.cert;
        tls.key = m.pem.key;
        ids.push(`cert:${m.id}`);
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
      ...(servername ? { servername } : {}),
      mode,
      key: ids.join('|'),
    };
  }
}
