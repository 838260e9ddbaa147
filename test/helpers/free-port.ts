/**
 * A port for a server a test starts in another process (Postern under `serve`, Postfix, Redis, HAProxy), which
 * binds it later. Chosen below Linux's ephemeral range (32768–60999): a port from `listen(0)` is an ephemeral
 * one, and between this check and the server's bind any client socket of any test running beside it could
 * take it as its local port (EADDRINUSE at the server's start, seen on loaded CI runs). Here only another
 * test's server could, by drawing the same port in the same moment.
 */
import net from 'node:net';
import { closeSync, openSync } from 'node:fs';
import { join } from 'node:path';

const given = new Set<number>();

/**
 * Under `npm test` (test/run.ts names a folder for the run), a port is also claimed for the whole run by a file
 * made with O_EXCL: two test files drawing the same port in the same moment — which gave a server EADDRINUSE at
 * its start in a CI run — cannot both have it. Without the folder (one file run by hand), the draw alone.
 */
function claim(port: number): boolean {
  const dir = process.env.POSTERN_TEST_PORTS;
  if (!dir) return true;
  try {
    closeSync(openSync(join(dir, String(port)), 'wx'));
    return true;
  } catch {
    return false; // another test file of this run has it (or the folder is gone: a draw is as good as before)
  }
}

export async function freePort(): Promise<number> {
  for (let tries = 0; ; tries++) {
    const port = 10_000 + Math.floor(Math.random() * 22_000);
    if (given.has(port)) continue;
    given.add(port);
    // (Claims are never given back during a run: should a run ever have claimed most of the range, the draw alone.)
    if ((tries > 200 || claim(port)) && await bindable(port)) return port;
  }
}

function bindable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}
