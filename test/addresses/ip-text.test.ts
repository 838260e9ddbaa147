/**
 * Postern writes an IPv6 address it reads as bytes or text (a PROXY header, a certificate's iPAddress name, a
 * policy request, a table key) in the text Node gives a peer's address: written another way, one client would
 * be two keys to the per-address limits and tables. Checked against Node's own naming (libuv's inet_ntop) over
 * addresses made mostly of zero groups, where the forms differ (which run becomes `::`, mapped and
 * IPv4-compatible forms).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SocketAddress } from 'node:net';
import { canonicalIp, ipv6Groups, ipv6Text, ipv6TextGroups } from '../../engine/addresses/ip-text.ts';

/** A seeded generator (mulberry32): the same addresses in every run. */
function random(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const nodeText = (address: string): string => new SocketAddress({ address, family: 'ipv6' }).address;

test('every IPv6 address is written as Node names it, from its bytes and from any spelling of its text', () => {
  const next = random(5952);
  const picks = [0, 0, 0, 0, 1, 0xffff, 0xdb8, 0x102];
  for (let n = 0; n < 20_000; n++) {
    const groups = Array.from({ length: 8 }, () => next() < 0.7 ? picks[Math.floor(next() * picks.length)]! : Math.floor(next() * 0x10000));
    if (n % 7 === 0) groups.splice(0, 6, 0, 0, 0, 0, 0, 0xffff); // mapped
    const full = groups.map((g) => g.toString(16).toUpperCase().padStart(4, '0')).join(':');
    const expected = nodeText(full);
    const bytes = Buffer.alloc(16);
    groups.forEach((g, i) => bytes.writeUInt16BE(g, 2 * i));
    assert.equal(ipv6Text(ipv6Groups(bytes)), expected, full);
    assert.equal(ipv6Text(ipv6TextGroups(full)), expected, full);
    assert.equal(ipv6Text(ipv6TextGroups(expected)), expected, expected);
  }
});

test('canonicalIp: a mapped address is its IPv4 client; a zone is kept; anything else as given', () => {
  assert.equal(canonicalIp('0:0:0:0:0:FFFF:c000:201'), '192.0.2.1');
  assert.equal(canonicalIp('::ffff:192.0.2.1'), '192.0.2.1');
  assert.equal(canonicalIp('2001:DB8:0:0:0:0:0:1'), '2001:db8::1');
  assert.equal(canonicalIp('FE80:0:0:0:0:0:0:1%eth0'), 'fe80::1%eth0');
  assert.equal(canonicalIp('192.0.2.1'), '192.0.2.1');
  assert.equal(canonicalIp('example.com'), 'example.com');
  assert.equal(canonicalIp('1::2::3'), '1::2::3');
});
