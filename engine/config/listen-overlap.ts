/**
 * Whether two `address:port` settings would take the same port: the second bind fails with EADDRINUSE at
 * start, which `postern check` (run before each start by the systemd unit) must see first. A wildcard
 * takes its port on every address: `0.0.0.0` on every IPv4 one, `[::]` on every address of both families
 * (Node binds `::` dual-stack). An address is compared in one spelling: `[::ffff:127.0.0.1]` binds 127.0.0.1
 * (`[::ffff:0.0.0.0]` every IPv4 address), `[0:0:0:0:0:0:0:1]` is `[::1]`. Host names are compared as written
 * (what they resolve to is not known here).
 */
import { canonicalIp } from '../addresses/ip-text.ts';

interface Bind { host: string; port: number }

function parse(listen: string): Bind | null {
  const colon = listen.lastIndexOf(':');
  if (listen.startsWith('unix:') || colon < 0) return null;
  const host = canonicalIp(listen.slice(0, colon).replace(/^\[(.*)\]$/, '$1').toLowerCase());
  const port = Number(listen.slice(colon + 1));
  return Number.isInteger(port) && port > 0 ? { host, port } : null; // port 0: any free port, never shared
}

const IPV4 = /^\d{1,3}(\.\d{1,3}){3}$/;
const isAnyIpv6 = (host: string): boolean => host === '::';

/** Why `b` cannot bind beside `a` (null: it can). */
export function listenOverlap(a: string, b: string): string | null {
  const x = parse(a);
  const y = parse(b);
  if (!x || !y || x.port !== y.port) return null;
  if (x.host === y.host) return 'the same address and port';
  for (const [wild, other] of [[x, y], [y, x]] as const) {
    if (isAnyIpv6(wild.host)) return `[::]:${wild.port} takes port ${wild.port} on every address, IPv4 too`;
    if (wild.host === '0.0.0.0' && (IPV4.test(other.host) || isAnyIpv6(other.host))) return `0.0.0.0:${wild.port} takes port ${wild.port} on every IPv4 address`;
  }
  return null;
}
