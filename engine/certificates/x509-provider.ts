/**
 * @peculiar/x509 needs reflect-metadata loaded first and a WebCrypto provider; this module does both once, at the
 * first use of `x509`, not at import: evaluating the library (its ASN.1 schemas, decorators and container) costs
 * 80-160 ms of CPU, which every process paid at start — each worker, the queue process, the supervisor and each CLI
 * command — though most never read a certificate with it (a server without TLS files, `postern queue …`).
 */
import { createRequire } from 'node:module';
import { webcrypto } from 'node:crypto';
import type * as X509 from '@peculiar/x509';

let library: typeof X509 | undefined;

function loaded(): typeof X509 {
  if (!library) {
    const require = createRequire(import.meta.url);
    require('reflect-metadata');
    const x = require('@peculiar/x509') as typeof X509;
    x.cryptoProvider.set(webcrypto as unknown as typeof globalThis.crypto);
    library = x;
  }
  return library;
}

/** The library's exports, loaded at the first property read (`x509.X509Certificate`, …). */
const x509 = new Proxy({} as typeof X509, {
  get: (_target, name) => Reflect.get(loaded(), name),
  has: (_target, name) => Reflect.has(loaded(), name),
}) as typeof X509;

/** The library's types the engine names in annotations (`x509` above is a value, not the library's namespace). */
declare namespace x509 {
  export type X509Certificate = X509.X509Certificate;
  export type X509Crl = X509.X509Crl;
  export type X509CrlReason = X509.X509CrlReason;
  export type Extension = X509.Extension;
  export type Name = X509.Name;
}

export { x509, webcrypto };
