/** The PROXY header parser: v1 and v2 as HAProxy writes them, partial input, and what must be refused. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseProxyHeader, V2_SIGNATURE } from '../../engine/proxy-protocol/proxy-header.ts';
import { TrustedProxies } from '../../engine/proxy-protocol/trusted-proxies.ts';
import { proxyV1, proxyV2 } from '../helpers/proxy-header.ts';
import { runCli } from '../helpers/cli.ts';
import { useScratchDir } from '../helpers/scratch.ts';

const scratch = useScratchDir('postern-proxy-header-');

const ok = (data: Buffer | string) => {
  const r = parseProxyHeader(Buffer.from(data));
  assert.equal(r.status, 'ok', JSON.stringify(r));
  return (r as { header: ReturnType<typeof Object> }).header as Record<string, unknown>;
};
const invalid = (data: Buffer | string, reason: RegExp) => {
  const r = parseProxyHeader(Buffer.from(data));
  assert.equal(r.status, 'invalid', JSON.stringify(r));
  assert.match((r as { reason: string }).reason, reason);
};

test('v1: TCP4 and TCP6 name the source; UNKNOWN is local; the length excludes what follows', () => {
  const line = proxyV1('192.0.2.7', 40001, '198.51.100.1', 25);
  assert.deepEqual(ok(`${line}EHLO x\r\n`), { version: 1, command: 'proxy', source: { address: '192.0.2.7', port: 40001 }, destination: { address: '198.51.100.1', port: 25 }, length: line.length });
  assert.deepEqual((ok(proxyV1('2001:DB8::7', 1, '2001:db8::1', 587)) as { source: unknown }).source, { address: '2001:db8::7', port: 1 });
  assert.deepEqual(ok('PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n'), { version: 1, command: 'local', length: 59 });
  assert.deepEqual(ok('PROXY UNKNOWN\r\n'), { version: 1, command: 'local', length: 15 });
});

test('v1: an IPv6 address written any valid way is named as v2 names it (RFC 5952, IPv4-mapped as ::ffff:a.b.c.d); a zone is refused', () => {
  // Before: kept as written (lowercased), so one client had as many keys for its limits as ways to write it,
  // and a mapped address in hex (::ffff:c000:263) was an IPv6 client of the network ::/64 — every such client one.
  const source = (a: string) => (ok(`PROXY TCP6 ${a} ::1 1 25\r\n`) as { source: { address: string } }).source.address;
  assert.equal(source('2001:0DB8:0000:0000:0000:0000:0000:0007'), '2001:db8::7');
  assert.equal(source('2001:db8:0:0:1:0:0:1'), '2001:db8::1:0:0:1');
  assert.equal(source('::ffff:c000:263'), '::ffff:192.0.2.99');
  assert.equal(source('0:0:0:0:0:FFFF:192.0.2.99'), '::ffff:192.0.2.99');
  assert.equal(source('::'), '::');
  assert.deepEqual((ok('PROXY TCP6 ::1 0:0::0001 1 25\r\n') as { destination: unknown }).destination, { address: '::1', port: 25 });
  invalid('PROXY TCP6 fe80::1%eth0 ::1 1 25\r\n', /zone/);
});

test('v1: malformed lines are refused', () => {
  invalid('PROXY TCP4 192.0.2.7 198.51.100.1 40001\r\n', /two ports/);
  invalid('PROXY TCP4 2001:db8::1 198.51.100.1 1 2\r\n', /not TCP4/);
  invalid('PROXY TCP6 192.0.2.7 198.51.100.1 1 2\r\n', /not TCP6/);
  invalid('PROXY TCP4 192.0.2.7 198.51.100.1 65536 25\r\n', /port/);
  invalid('PROXY TCP4 192.0.2.7 198.51.100.1 025 25\r\n', /port/);
  invalid('PROXY TCP4 192.0.2.7 198.51.100.1 1 25\n', /CRLF/);
  invalid('PROXY UDP4 192.0.2.7 198.51.100.1 1 25\r\n', /not TCP4, TCP6 or UNKNOWN/);
  invalid('PROXY TCP4 host.example 198.51.100.1 1 25\r\n', /not TCP4/);
  invalid('PROXY TCP4 192.0.002.7 198.51.100.1 1 25\r\n', /not TCP4/); // leading zeros: octal to some parsers
  invalid(`PROXY TCP4 ${'1'.repeat(120)}`, /longer than 107/);
  invalid('EHLO client\r\n', /not a PROXY protocol header/);
  invalid('PROXX TCP4', /not a PROXY protocol header/);
});

test('v2: IPv4 and IPv6 PROXY, TLVs skipped, LOCAL and UNSPEC keep the balancer', () => {
  const v4 = proxyV2('192.0.2.7', 40001, { destination: '198.51.100.1', destinationPort: 465, tlv: Buffer.from([0x03, 0x00, 0x04, 1, 2, 3, 4]) });
  assert.deepEqual(ok(Buffer.concat([v4, Buffer.from([0x16, 0x03, 0x01])])),
    { version: 2, command: 'proxy', source: { address: '192.0.2.7', port: 40001 }, destination: { address: '198.51.100.1', port: 465 }, length: v4.length });
  assert.deepEqual((ok(proxyV2('2001:db8::7', 2)) as { source: unknown }).source, { address: '2001:db8::7', port: 2 });
  assert.deepEqual((ok(proxyV2('2001:db8:0:0:1:0:0:1', 2)) as { source: { address: string } }).source.address, '2001:db8::1:0:0:1');
  assert.deepEqual((ok(proxyV2('::ffff:c000:209', 2)) as { source: { address: string } }).source.address, '::ffff:192.0.2.9');
  assert.deepEqual(ok(proxyV2('192.0.2.7', 1, { local: true })), { version: 2, command: 'local', length: 28 });
  const unspec = Buffer.concat([V2_SIGNATURE, Buffer.from([0x21, 0x00, 0x00, 0x00])]);
  assert.deepEqual(ok(unspec), { version: 2, command: 'local', length: 16 });
  // AF_UNIX (two 108-byte paths): no IP to name, the balancer's own address.
  const unix = Buffer.concat([V2_SIGNATURE, Buffer.from([0x21, 0x31, 0x00, 216]), Buffer.alloc(216, 0x2f)]);
  assert.deepEqual(ok(unix), { version: 2, command: 'local', length: 232 });
  // TLVs are skipped unread: one of length 0, one claiming more than the header holds.
  const tlvs = proxyV2('192.0.2.7', 1, { tlv: Buffer.from([0x04, 0x00, 0x00, 0x05, 0xff, 0xff, 0x01]) });
  assert.deepEqual((ok(tlvs) as { source: unknown }).source, { address: '192.0.2.7', port: 1 });
});

test('v2: partial input waits; malformed headers are refused', () => {
  const full = proxyV2('192.0.2.7', 40001);
  for (const n of [1, 5, 12, 15, 16, full.length - 1]) assert.equal(parseProxyHeader(full.subarray(0, n)).status, 'incomplete', `${n} bytes`);
  const bad = (patch: (b: Buffer) => void) => { const b = Buffer.from(full); patch(b); return b; };
  invalid(bad((b) => { b[12] = 0x11; }), /version 1/);
  invalid(bad((b) => { b[12] = 0x22; }), /command 2/);
  invalid(bad((b) => { b[13] = 0x12; }), /transport 2 is not STREAM/);
  invalid(bad((b) => { b[13] = 0x41; }), /family 4/);
  invalid(bad((b) => { b.writeUInt16BE(8, 14); }), /shorter than 12/);
  invalid(bad((b) => { b.writeUInt16BE(60000, 14); }), /at most 4096/);
  invalid(bad((b) => { b[13] = 0x21; }), /shorter than 36/);
  invalid(bad((b) => { b[3] = 0; }), /not a PROXY protocol header/);
});

test('trusted proxies: addresses and CIDRs, IPv4 peers of dual-stack sockets', () => {
  const t = new TrustedProxies(['127.0.0.1', '10.1.0.0/16', 'fd00::/64']);
  assert.ok(t.has('127.0.0.1'));
  assert.ok(t.has('::ffff:127.0.0.1'));
  assert.ok(t.has('10.1.200.3'));
  assert.ok(!t.has('10.2.0.1'));
  assert.ok(!t.has('127.0.0.2'));
  assert.ok(t.has('fd00::5'));
  assert.ok(!t.has('fd00:0:0:1::5'));
  assert.ok(!t.has(undefined));
  assert.throws(() => new TrustedProxies(['10.0.0.0/33']), /not an address or CIDR/);
});

test('changing a listener\'s proxyProtocol needs a restart (the supervisor decides trust at accept)', async () => {
  const { restartNeeded } = await import('../../engine/reload/restart-needed.ts');
  const { parseConfig } = await import('../../engine/config/load-config.ts');
  const cfg = (extra: string) => parseConfig(`listeners: [{ name: mx, listen: "127.0.0.1:2525"${extra} }]\n`, 'p.yaml', '/tmp').config;
  assert.deepEqual(restartNeeded(cfg(''), cfg('')), []);
  assert.deepEqual(restartNeeded(cfg(''), cfg(', proxyProtocol: { trusted: [10.0.0.1] }')), ['listener mx changes proxyProtocol']);
  assert.deepEqual(restartNeeded(cfg(', proxyProtocol: { trusted: [10.0.0.1] }'), cfg(', proxyProtocol: { trusted: [10.0.0.2] }')), ['listener mx changes proxyProtocol']);
  assert.throws(() => cfg(', proxyProtocol: { trusted: [10.0.0.0/40] }'), /expected an address or CIDR/);
  assert.throws(() => cfg(', proxyProtocol: { trusted: [] }'), /proxyProtocol\.trusted/);
});

test('postern check warns about a trusted list that takes a PROXY header from every address (0.0.0.0/0, ::/0)', async () => {
  // Set when the balancers' addresses change (containers): any client could then name any address, and pass
  // per-address limits and scripts' address checks. Allowed (a private network may be the boundary), but said.
  const config = (trusted: string) => scratch.file('postern.yaml', `dataDir: ${scratch.path}/data\nlisteners:\n  - { name: mx, listen: "127.0.0.1:0", proxyProtocol: { trusted: [${trusted}] } }\n`);
  const open = await runCli(['check', '--config', await config('10.0.0.1, "::/0"')]);
  assert.equal(open.code, 0, open.stderr);
  assert.match(open.stderr, /warning: .*postern\.yaml:3:\d+: listeners\[0\]\.proxyProtocol\.trusted\[1\]: ::\/0 trusts every address/);
  // Every IPv4 client in its mapped spelling (a dual-stack listener names them so, and the check is made in both): as open.
  for (const mapped of ['"::ffff:0.0.0.0/96"', '"::/64"']) {
    const r = await runCli(['check', '--config', await config(`10.0.0.1, ${mapped}`)]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /trusts every address/, mapped);
  }
  const narrow = await runCli(['check', '--config', await config('10.0.0.0/8, "fd00::/8", "::ffff:10.0.0.0/104"')]);
  assert.equal(narrow.code, 0, narrow.stderr);
  assert.doesNotMatch(narrow.stderr, /trusts every address/);
});
