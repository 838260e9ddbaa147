/** @peculiar/x509 needs reflect-metadata loaded first and a WebCrypto provider; this module does both once. */
import 'reflect-metadata';
import { webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(webcrypto as unknown as typeof globalThis.crypto);

export { x509, webcrypto };
