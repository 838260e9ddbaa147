/** PROXY protocol headers as a load balancer sends them (HAProxy's proxy-protocol.txt), for tests. */
import { isIPv4 } from 'node:net';

const SIGNATURE = Buffer.from('0d0a0d0a000d0a515549540a', 'hex');

export function proxyV1(source: string, sourcePort: number, destination = '127.0.0.1', destinationPort = 25): string {
  return `PROXY ${isIPv4(source) ? 'TCP4' : 'TCP6'} ${source} ${destination} ${sourcePort} ${destinationPort}\r\n`;
}

/** A v2 PROXY (or LOCAL) header; `tlv`: extra bytes after the address block. */
export function proxyV2(source: string, sourcePort: number, opts: { destination?: string; destinationPort?: number; local?: boolean; tlv?: Buffer } = {}): Buffer {
  const v4 = isIPv4(source);
  const addr = (a: string): Buffer => (v4 ? Buffer.from(a.split('.').map(Number)) : ipv6Bytes(a));
  const ports = Buffer.alloc(4);
  ports.writeUInt16BE(sourcePort, 0);
  ports.writeUInt16BE(opts.destinationPort ?? 25, 2);
  const block = Buffer.concat([addr(source), addr(opts.destination ?? (v4 ? '127.0.0.1' : '::1')), ports, opts.tlv ?? Buffer.alloc(0)]);
  const head = Buffer.alloc(4);
  head[0] = opts.local ? 0x20 : 0x21;
  head[1] = v4 ? 0x11 : 0x21;
  head.writeUInt16BE(block.length, 2);
  return Buffer.concat([SIGNATURE, head, block]);
}

function ipv6Bytes(a: string): Buffer {
  const [left, right = ''] = a.split('::');
  const l = left ? left.split(':') : [];
  const r = right ? right.split(':') : [];
  const groups = a.includes('::') ? [...l, ...Array(8 - l.length - r.length).fill('0'), ...r] : l;
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}
