/**
 * The entry `name` of a table the configuration declares (delivery.clientCertificates, caFiles, dkim), by
 * own property only: a name a predelivery script gives, such as `constructor` or `__proto__`, must find
 * nothing rather than something of Object.prototype.
 */
export function declared<T>(table: Readonly<Record<string, T>>, name: string): T | undefined {
  return Object.hasOwn(table, name) ? table[name] : undefined;
}
