// A client of the account page that pipelines requests and never reads the answers: once the socket buffers were
// full the server could write no more and read no more, and no timeout applied (the requests were whole, the
// connection not idle; keepAliveTimeout counts only after an answer has left), so the connection, and the answers
// queued for it, were held for good. The admin listener had a deadline for this (RESPONSE_DEADLINE_MS); the
// account page, which faces the users' networks, had none. Each answer now has that long to leave, on both.
// Here the page's deadline is DEADLINE_MS (POSTERN_RESPONSE_DEADLINE_MS) rather than the product's 30 s, which was
// waited out idle (a third of this file's 35 s): the fault is "for good", not 30 s. The product's value is checked
// in test/connection-limits/response-deadline.test.ts.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import tls from 'node:tls';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { until } from '../helpers/wait.ts';
import { startAccounts, type AccountsSetup } from './helpers.ts';

let s: AccountsSetup;
let dir = '';
let ca = '';
let port = 0;

/** The page's response deadline here: long enough for the sign-in page on a loaded machine. */
const DEADLINE_MS = 3000;

before(async () => {
  // Read by the page at each request (connection-room.ts); the server runs in this process.
  process.env.POSTERN_RESPONSE_DEADLINE_MS = String(DEADLINE_MS);
  dir = await mkdtemp(join(tmpdir(), 'postern-accounts-unread-'));
  s = await startAccounts(dir);
  ca = await readFile(s.pki.ca.cert, 'utf8');
  port = Number(new URL(s.url).port);
});
after(async () => {
  await s?.server.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

test('a client that pipelines requests and never reads the answers is closed once an answer cannot leave', { timeout: DEADLINE_MS + 120_000 }, async () => {
  const socket = tls.connect({ host: '127.0.0.1', port, ca, servername: 'localhost' });
  socket.on('error', () => undefined);
  await once(socket, 'secureConnect');
  socket.pause(); // never reads
  // The sign-in page (some KB) 5000 times: far more than any socket buffers hold. Fifty at a time, as a client
  // sends them while its requests are read (paced: a burst of a thousand Node's parser resets at once).
  const request = 'GET /signin HTTP/1.1\r\nHost: localhost\r\n\r\n';
  for (let i = 0; i < 100 && !socket.destroyed; i++) {
    socket.write(request.repeat(50));
    await sleep(30);
  }
  // A client that does not read does not see the close either: it learns of it when a write fails (a CRLF between
  // requests, which HTTP ignores). The deadline is a guard: without the fix the connection stays open for good.
  await until('the page closed the connection', () => socket.destroyed || (socket.write('\r\n'), false),
    { timeoutMs: DEADLINE_MS + 60_000, intervalMs: 250 });
  assert.ok(socket.destroyed);
});
