/**
 * A port for a server a test starts in another process (Postern under `serve`, Postfix, Redis, HAProxy), which
 * binds it later. Chosen below Linux's ephemeral range (32768–60999): a port from `listen(0)` is an ephemeral
 * one, and between this check and the server's bind any client socket of any test running beside it could
 * take it as its local port (EADDRINUSE at the server's start, seen on loaded CI runs). Here only another
 * test's server could, by drawing the same port in the same moment.
 */
import net from 'node:net';

const given = new Set<number>();

export async function freePort(): Promise<number> {
  for (;;) {
    const port = 10_000 + Math.floor(Math.random() * 22_000);
    if (given.has(port)) continue;
    given.add(port);
    if (await bindable(port)) return port;
  }
}

function bindable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}
