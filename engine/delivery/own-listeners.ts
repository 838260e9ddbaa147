/**
 * Whether a next hop is this server's own listener: an MX record (or a smarthost) that leads back here. Mail
 * for it would come in again and go out again, a copy each hop, until the hop count bounced it (50 copies);
 * Postfix bounces it at once ("mail for … loops back to myself"). A listener on a wildcard address is any
 * address of this machine's interfaces, loopback included; port 0 listeners (any free port) cannot be told.
 */
import { BlockList, isIP } from 'node:net';
import { readFileSync } from 'node:fs';
import { networkInterfaces } from 'node:os';

/** Is `address`:`port` one of ours? */
export type OwnAddress = (address: string, port: number) => boolean;

interface Bound { addresses: BlockList; anyV4: boolean; anyV6: boolean }

export function ownListeners(listens: readonly string[]): OwnAddress {
  const byPort = new Map<number, Bound>();
  for (const listen of listens) {
    const m = /^\[?([0-9a-fA-F:.]+)\]?:(\d+)$/.exec(listen);
    const port = m ? Number(m[2]) : 0;
    if (!m || port === 0 || !isIP(m[1]!)) continue; // unix sockets, host names, any free port
    const host = m[1]!;
    let bound = byPort.get(port);
    if (!bound) byPort.set(port, (bound = { addresses: new BlockList(), anyV4: false, anyV6: false }));
    if (host === '0.0.0.0') bound.anyV4 = true;
    else if (host === '::') bound.anyV4 = bound.anyV6 = true; // dual-stack: IPv4 clients too
    else bound.addresses.addAddress(host, isIP(host) === 6 ? 'ipv6' : 'ipv4');
  }
  if (!byPort.size) return () => false;
  return (address, port) => {
    const bound = byPort.get(port);
    if (!bound) return false;
    const v4 = loopbackFor(unmapped(address));
    const family = isIP(v4) === 4 ? 'ipv4' : 'ipv6';
    if (bound.addresses.check(v4, family)) return true;
    if (!(family === 'ipv4' ? bound.anyV4 : bound.anyV6)) return false;
    return localAddresses().check(v4, family);
  };
}

/**
 * The unspecified address as the loopback address it reaches: a connection to 0.0.0.0 (the address of a blackholed
 * domain's MX host) is a connection to this machine, a listener on 127.0.0.1 included; to `::`, to ::1.
 */
function loopbackFor(address: string): string {
  if (address === '0.0.0.0') return '127.0.0.1';
  return isIP(address) === 6 && /^[0:]+$/.test(address) ? '::1' : address;
}

/** `::ffff:192.0.2.1` as `192.0.2.1`. */
function unmapped(address: string): string {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  return m ? m[1]! : address;
}

/** This machine's addresses now (interfaces come and go), all of 127.0.0.0/8 with them. */
function localAddresses(): BlockList {
  const list = new BlockList();
  list.addSubnet('127.0.0.0', 8, 'ipv4');
  list.addAddress('::1', 'ipv6');
  for (const [address, family] of interfaceAddresses()) list.addAddress(address, family);
  return list;
}

/**
 * Node asks the kernel over a netlink socket, which a sandbox may forbid (the systemd unit's
 * RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX: EAFNOSUPPORT, thrown at every delivery to a port this
 * server listens on). /proc/net has the same addresses for any process.
 */
function interfaceAddresses(): Array<[string, 'ipv4' | 'ipv6']> {
  try {
    return Object.values(networkInterfaces()).flatMap((infos) => (infos ?? []).map((i): [string, 'ipv4' | 'ipv6'] => [i.address.replace(/%.*$/, ''), i.family === 'IPv4' ? 'ipv4' : 'ipv6']));
  } catch {
    return [...procAddresses('/proc/net/fib_trie', readIpv4Locals), ...procAddresses('/proc/net/if_inet6', readIpv6)];
  }
}

function procAddresses(file: string, parse: (text: string) => Array<[string, 'ipv4' | 'ipv6']>): Array<[string, 'ipv4' | 'ipv6']> {
  try { return parse(readFileSync(file, 'utf8')); } catch { return []; }
}

/** fib_trie's local table: an address line (`|-- 192.0.2.2`) followed by `/32 host LOCAL`. */
function readIpv4Locals(text: string): Array<[string, 'ipv4']> {
  const out: Array<[string, 'ipv4']> = [];
  let last = '';
  for (const line of text.split('\n')) {
    const address = /\|-- (\d+\.\d+\.\d+\.\d+)$/.exec(line.trim())?.[1];
    if (address) last = address;
    else if (/^\/32 host LOCAL$/.test(line.trim()) && last) out.push([last, 'ipv4']);
  }
  return out;
}

/** if_inet6: 32 hex digits per address, first on each line. */
function readIpv6(text: string): Array<[string, 'ipv6']> {
  return text.split('\n').map((l) => /^([0-9a-f]{32})\s/.exec(l)?.[1]).filter((h): h is string => !!h)
    .map((h) => [h.match(/.{4}/g)!.join(':'), 'ipv6']);
}
