/**
 * The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2) that a load balancer sends
 * before the client's first byte, naming the client it accepted the connection from. Parsed strictly:
 * anything malformed is refused, since the address it carries ends up in limits, logs and Received.
 */
import { isIPv4, isIPv6 } from 'node:net';
import { ipv6Groups, ipv6Text, ipv6TextGroups } from '../addresses/ip-text.ts';

/** The v2 signature: 12 bytes no text protocol can start with. */
export const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
/** A v1 line is at most 107 bytes, CRLF included (proxy-protocol.txt §2.1). */
export const V1_MAX = 107;
/** v2 address block plus TLVs we accept; HAProxy's own stay far below (the spec allows 65535). */
export const V2_MAX_PAYLOAD = 4096;

export interface ProxiedAddress { address: string; port: number }

export type ProxyHeader =
  /** The balancer relays a client: use `source` as the client. */
  | { version: 1 | 2; command: 'proxy'; source: ProxiedAddress; destination: ProxiedAddress; length: number }
  /**
   * No client to name (v2 LOCAL: the balancer's own health check; v1 UNKNOWN; v2 with an unspecified or
   * non-IP family): the connection is the balancer's own, and is taken with the balancer's address.
   */
  | { version: 1 | 2; command: 'local'; length: number };

export type ParseResult =
  /** `length`: the whole header's, once its fixed part says it (v2); until then, parse again with more. */
  | { status: 'incomplete'; length?: number }
  | { status: 'invalid'; reason: string }
  | { status: 'ok'; header: ProxyHeader };

const V1_PREFIX = Buffer.from('PROXY ');
const incomplete = { status: 'incomplete' } as const;
const invalid = (reason: string): ParseResult => ({ status: 'invalid', reason });

/** Parse the header at the start of `data` (which may hold more: the client's first bytes). */
export function parseProxyHeader(data: Buffer): ParseResult {
  if (data.length === 0) return incomplete;
  if (data[0] === V2_SIGNATURE[0]) return parseV2(data);
  if (data[0] === V1_PREFIX[0]) return parseV1(data);
  return invalid('not a PROXY protocol header');
}

function parseV1(data: Buffer): ParseResult {
  const prefix = Math.min(data.length, V1_PREFIX.length);
  if (!data.subarray(0, prefix).equals(V1_PREFIX.subarray(0, prefix))) return invalid('not a PROXY protocol header');
  const lf = data.indexOf(0x0a);
  if (lf < 0) return data.length >= V1_MAX ? invalid('v1 header longer than 107 bytes') : incomplete;
  if (lf + 1 > V1_MAX) return invalid('v1 header longer than 107 bytes');
  if (data[lf - 1] !== 0x0d) return invalid('v1 header does not end with CRLF');
  const line = data.subarray(0, lf - 1).toString('latin1');
  const length = lf + 1;
  const fields = line.split(' ');
  if (fields[1] === 'UNKNOWN') return { status: 'ok', header: { version: 1, command: 'local', length } };
  if (fields.length !== 6) return invalid('v1 header needs protocol, two addresses and two ports');
  const [, family, src, dst, sport, dport] = fields as [string, string, string, string, string, string];
  const isFamily = family === 'TCP4' ? isIPv4 : family === 'TCP6' ? isIPv6 : null;
  if (!isFamily) return invalid(`v1 protocol ${family.slice(0, 16)} is not TCP4, TCP6 or UNKNOWN`);
  if (!isFamily(src) || !isFamily(dst)) return invalid(`v1 address is not ${family}`);
  // A zone (fe80::1%eth0) names an interface of the balancer, not one the client's address could be on here.
  if (src.includes('%') || dst.includes('%')) return invalid('v1 address with a zone');
  const sourcePort = v1Port(sport);
  const destinationPort = v1Port(dport);
  if (sourcePort === null || destinationPort === null) return invalid('v1 port is not 0 to 65535 in decimal');
  const text = family === 'TCP6' ? canonicalIpv6 : (a: string): string => a;
  return { status: 'ok', header: { version: 1, command: 'proxy', source: { address: text(src), port: sourcePort }, destination: { address: text(dst), port: destinationPort }, length } };
}

/**
 * A v1 IPv6 address in the text a v2 header's bytes give (RFC 5952, an IPv4-mapped one as ::ffff:a.b.c.d):
 * written any other valid way (leading zeros, no ::, the mapped IPv4 part in hex) it named the same client
 * under another key — for the per-address limits, scripts and logs — and a mapped one was not taken as the
 * IPv4 client it is.
 */
function canonicalIpv6(text: string): string {
  return ipv6Text(ipv6TextGroups(text));
}

/** Decimal without leading zeros (as the spec writes them), 0–65535. */
function v1Port(text: string): number | null {
  if (!/^(0|[1-9]\d{0,4})$/.test(text)) return null;
  const port = Number(text);
  return port <= 65535 ? port : null;
}

function parseV2(data: Buffer): ParseResult {
  const sig = Math.min(data.length, V2_SIGNATURE.length);
  if (!data.subarray(0, sig).equals(V2_SIGNATURE.subarray(0, sig))) return invalid('not a PROXY protocol header');
  if (data.length < 16) return incomplete;
  const versionCommand = data[12]!;
  if (versionCommand >> 4 !== 2) return invalid(`v2 header with version ${versionCommand >> 4}`);
  const command = versionCommand & 0x0f;
  if (command > 1) return invalid(`v2 header with command ${command}`);
  const familyProtocol = data[13]!;
  const payload = data.readUInt16BE(14);
  if (payload > V2_MAX_PAYLOAD) return invalid(`v2 header of ${payload} bytes (at most ${V2_MAX_PAYLOAD} accepted)`);
  const length = 16 + payload;
  if (data.length < length) return { status: 'incomplete', length };
  // LOCAL: the balancer speaks for itself (health checks); the address block, if any, is to be ignored.
  if (command === 0) return { status: 'ok', header: { version: 2, command: 'local', length } };
  const family = familyProtocol >> 4;
  const transport = familyProtocol & 0x0f;
  if (family === 0) return { status: 'ok', header: { version: 2, command: 'local', length } }; // AF_UNSPEC: unknown origin
  if (transport !== 1) return invalid(`v2 transport ${transport} is not STREAM`);
  const block = data.subarray(16, length);
  if (family === 1) {
    if (block.length < 12) return invalid('v2 IPv4 address block shorter than 12 bytes');
    return ok2(ipv4(block.subarray(0, 4)), ipv4(block.subarray(4, 8)), block.readUInt16BE(8), block.readUInt16BE(10), length);
  }
  if (family === 2) {
    if (block.length < 36) return invalid('v2 IPv6 address block shorter than 36 bytes');
    return ok2(ipv6(block.subarray(0, 16)), ipv6(block.subarray(16, 32)), block.readUInt16BE(32), block.readUInt16BE(34), length);
  }
  if (family === 3) return { status: 'ok', header: { version: 2, command: 'local', length } }; // AF_UNIX: no IP to name
  return invalid(`v2 address family ${family}`);
}

function ok2(src: string, dst: string, sport: number, dport: number, length: number): ParseResult {
  return { status: 'ok', header: { version: 2, command: 'proxy', source: { address: src, port: sport }, destination: { address: dst, port: dport }, length } };
}

const ipv4 = (b: Buffer): string => `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;

/** RFC 5952 text, as Node names IPv6 peers (an IPv4-mapped one stays mapped: clientAddress() unmaps it). */
const ipv6 = (b: Buffer): string => ipv6Text(ipv6Groups(b));
