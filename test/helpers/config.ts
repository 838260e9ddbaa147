/**
 * Test configurations as data: the listener and delivery forms most tests share, typed by the schema's
 * input (a misspelled key is a type error), written out as YAML for startTestServer or `postern serve`.
 */
import { stringify } from 'yaml';
import type { z } from 'zod';
import type { configSchema, listenerSchema } from '../../engine/config/schema.ts';
import type { TestPki } from './pki.ts';

type ConfigInput = z.input<typeof configSchema>;
type ListenerInput = z.input<typeof listenerSchema>;
type DeliveryInput = NonNullable<ConfigInput['delivery']>;
type TlsInput = NonNullable<ListenerInput['tls']>;

/** A configuration without `dataDir` and `scripts` (startTestServer puts its temporary folders there). */
export type TestConfig = Omit<ConfigInput, 'dataDir' | 'scripts'>;

/** The YAML of a test configuration (with `dataDir` and `scripts` for a server started otherwise). */
export function configYaml(config: ConfigInput): string {
  return stringify(config);
}

/** A listener on 127.0.0.1 (any free port) that greets at once; `extra` is added, its `limits` to those. */
export function testListener(name: string, extra: Omit<Partial<ListenerInput>, 'name'> = {}): ListenerInput {
  return { name, listen: '127.0.0.1:0', ...extra, limits: { greetingDelayMs: 0, ...extra.limits } };
}

/** TLS with the test PKI's server certificate; with `clientCertificates`, checked against the PKI's CA. */
export function testServerTls(pki: TestPki, opts: Omit<TlsInput, 'cert' | 'key'> & { crl?: boolean } = {}): TlsInput {
  const { crl, ...tls } = opts;
  return {
    mode: 'starttls', cert: pki.server.cert, key: pki.server.key,
    ...(tls.clientCertificates && tls.clientCertificates !== 'none' ? { caFiles: [pki.ca.cert] } : {}),
    ...(crl ? { crlFiles: [pki.crl] } : {}),
    ...tls,
  };
}

/** Delivery switched on, every domain to a smarthost on 127.0.0.1 in plaintext; `extra` is added. */
export function smarthostDelivery(port: number, extra: Partial<DeliveryInput> = {}): DeliveryInput {
  return { enabled: true, route: { smarthost: { host: '127.0.0.1', port } }, tls: { mode: 'none' }, ...extra };
}
