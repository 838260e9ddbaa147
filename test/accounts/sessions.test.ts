// Sessions of the account page and the one-time .p12 downloads.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SessionBook } from '../../engine/accounts/sessions.ts';

test('a session ends after its idle time; each request moves it on', () => {
  const book = new SessionBook();
  const s = book.create('Alice@Example.com', 'password', null);
  assert.equal(s.identity, 'alice@example.com');
  const t0 = s.seen;
  assert.equal(book.get(s.id, 1000, t0 + 900)?.id, s.id);
  assert.equal(book.get(s.id, 1000, t0 + 1800)?.id, s.id, 'the request at +900 moved it on');
  assert.equal(book.get(s.id, 1000, t0 + 5000), null);
  assert.equal(book.get(s.id, 1000, t0 + 1800), null, 'ended for good');
  assert.equal(book.get(undefined, 1000), null);
  assert.equal(book.get('made-up', 1000), null);
});

test('a download is taken once and its password shown once, to the session that was offered it, and goes with the session', () => {
  const book = new SessionBook();
  const a = book.create('a@example.com', 'password', null);
  const b = book.create('b@example.com', 'password', null);
  const facts = { device: 'laptop', serial: '01', notAfter: '2030-01-01T00:00:00.000Z', password: 'pw' };
  const t = book.offer(a.id, 'a.p12', Buffer.from('p12'), { ...facts });
  assert.equal(book.show(b.id, t), null, 'another session sees nothing');
  assert.equal(book.show(a.id, t)?.password, 'pw');
  assert.equal(book.show(a.id, t)?.password, null, 'the password is shown once');
  assert.equal(book.take(b.id, t), null, 'another session');
  assert.equal(book.take(a.id, t)?.fileName, 'a.p12');
  assert.equal(book.take(a.id, t), null, 'only once');
  const u = book.offer(a.id, 'a2.p12', Buffer.from('p12'), { ...facts });
  book.end(a.id);
  assert.equal(book.take(a.id, u), null, 'signed out: gone');
});

test('one account signing in over and over ends its own idlest sessions, never another account\'s', () => {
  const book = new SessionBook();
  const alice = book.create('alice@example.com', 'password', null);
  // Far past the book's 10,000: before, the idlest of all went, alice among them.
  for (let i = 0; i < 10_050; i++) book.create('mallory@example.com', 'password', null);
  assert.equal(book.get(alice.id, 60_000)?.identity, 'alice@example.com', 'alice is still signed in');
  const latest = book.create('mallory@example.com', 'password', null);
  assert.equal(book.get(latest.id, 60_000)?.id, latest.id);
});

test('a session kept busy ends all the same twelve hours after its sign-in; a new sign-in starts afresh', () => {
  let now = 1_000_000;
  const book = new SessionBook(() => now);
  const signedInAt = now;
  const s = book.create('alice@example.com', 'password', null);
  const idle = 30 * 60_000;
  // A request every ten minutes: never idle, as a stolen cookie kept in use would be.
  for (now += 10 * 60_000; now - signedInAt <= 12 * 3600_000; now += 10 * 60_000) assert.equal(book.get(s.id, idle)?.id, s.id, `at ${now - signedInAt} ms`);
  assert.equal(book.get(s.id, idle), null, 'past twelve hours');
  const again = book.create('alice@example.com', 'password', null);
  assert.equal(book.get(again.id, idle)?.id, again.id);
});
