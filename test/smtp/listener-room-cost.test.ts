// What a client that finds an SMTP listener full costs the server's thread: makeRoomFor looks at every held
// connection (500 at the default maxConnections). It parsed each one's address again (countedAddress: an IPv6
// client's /64) for every such client: about 5 µs an IPv6 address, some 3 ms of the event loop per refused
// connect, so a few hundred connects a second from addresses under their per-IP limit held the server. Each
// connection's counted address is now worked out once, when it is accepted, and the room only reads it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { makeRoomFor, type RoomMember } from '../../engine/smtp/listener-room.ts';
import type { Standing } from '../../engine/connection-limits/closing-order.ts';

let progress = 0;
/** A held connection: its client address may not be parsed again (the getter counts the reads). */
type Held = RoomMember & { closed: boolean; counted: boolean; readonly remoteAddress: string };
function member(network: string, reads: { n: number }): Held {
  const standing: Standing = { advanced: true, sentAnything: true, progress: ++progress };
  return {
    get remoteAddress(): string { reads.n++; return `${network.split('/')[0]!.replace(/::$/, '')}::1`; },
    countedAddress: network,
    addressOpenAtAccept: 0,
    counted: true,
    closed: false,
    standing: () => standing,
    closeForAnotherClient() { this.closed = true; this.counted = false; },
    slowTransfer: () => null,
    closeForSlowTransfer() { this.closed = true; this.counted = false; },
    idleWhenFull: () => null,
    idleWhenFullMs: 0,
    closeForIdleness() { this.closed = true; this.counted = false; },
  };
}

test('a client finding the listener full costs no parse of each held connection\'s address', () => {
  const reads = { n: 0 };
  // 500 held: 2001:db8:1::/64 holds 20, 48 other networks 10 each.
  const held = [
    ...Array.from({ length: 20 }, () => member('2001:db8:1::/64', reads)),
    ...Array.from({ length: 480 }, (_, i) => member(`2001:db8:${(i % 48) + 2}::/64`, reads)),
  ];
  const newcomer = member('2001:db8:ff::/64', reads);
  for (let i = 0; i < 3; i++) assert.equal(makeRoomFor(newcomer, [...held, newcomer]), true);
  assert.equal(reads.n, 0, 'addresses parsed again');
  // The biggest holder paid, the oldest of its connections first.
  assert.deepEqual(held.map((m, i) => (m.closed ? i : -1)).filter((i) => i >= 0), [0, 1, 2]);
});
