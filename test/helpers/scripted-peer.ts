/**
 * A next hop for delivery tests that misbehaves on cue: a minimal SMTP command loop on a raw socket (EHLO,
 * MAIL, RCPT, DATA, the end of the message, QUIT) whose answers a test may take over at any of those points.
 * A hook returns 'answered' when it wrote the reply itself, 'stop' when it took the connection over (a drip,
 * a reset: nothing more is read from this chunk), or nothing for the usual reply. Each hook gets the command
 * line it answers (the message, without its final dot, for `endOfData`); `greeting` gets the new connection,
 * and a greeting it takes over replaces the 220 (a promise it returns delays it).
 */
import net from 'node:net';

type Taken = 'answered' | 'stop' | void;
export interface PeerHooks {
  /** A promise: the usual 220 once it resolves (a greet pause). */
  greeting?(s: net.Socket): Taken | Promise<void>;
  ehlo?(s: net.Socket, line: string): Taken;
  mail?(s: net.Socket, line: string): Taken;
  rcpt?(s: net.Socket, line: string): Taken;
  /** 'answered': no message follows (the peer stays in command mode). */
  data?(s: net.Socket, line: string): Taken;
  endOfData?(s: net.Socket, message: string): Taken;
  /** Anything but nothing: the QUIT is left unanswered (a next hop slow to let a session go). */
  quit?(s: net.Socket, line: string): Taken;
}

export interface ScriptedPeer { port: number; close(): void }

export async function startScriptedPeer(hooks: PeerHooks, host = '127.0.0.1', port = 0): Promise<ScriptedPeer> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
    s.on('error', () => undefined);
    const greeting = hooks.greeting?.(s);
    if (greeting instanceof Promise) void greeting.then(() => { if (!s.destroyed) s.write('220 peer ESMTP\r\n'); });
    else if (greeting) return;
    else s.write('220 peer ESMTP\r\n');
    let buf = '';
    let inData = false;
    s.on('data', (d) => {
      buf += d.toString('latin1');
      for (;;) {
        let taken: Taken = undefined;
        if (inData) {
          const end = buf.indexOf('\r\n.\r\n');
          if (end < 0) return;
          const message = buf.slice(0, end + 2);
          buf = buf.slice(end + 5);
          inData = false;
          taken = hooks.endOfData?.(s, message);
          if (!taken) s.write('250 2.0.0 queued\r\n');
        } else {
          const nl = buf.indexOf('\r\n');
          if (nl < 0) return;
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 2);
          if (/^EHLO/i.test(line)) { if (!(taken = hooks.ehlo?.(s, line))) s.write('250-peer\r\n250 8BITMIME\r\n'); }
          else if (/^MAIL/i.test(line)) { if (!(taken = hooks.mail?.(s, line))) s.write('250 2.1.0 ok\r\n'); }
          else if (/^RCPT/i.test(line)) { if (!(taken = hooks.rcpt?.(s, line))) s.write('250 2.1.5 ok\r\n'); }
          else if (/^DATA/i.test(line)) { if (!(taken = hooks.data?.(s, line))) { s.write('354 go on\r\n'); inData = true; } }
          else if (/^QUIT/i.test(line)) { if (!hooks.quit?.(s, line)) s.end('221 bye\r\n'); return; }
          else s.write('250 ok\r\n');
        }
        if (taken === 'stop') return;
      }
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return {
    port: (server.address() as net.AddressInfo).port,
    close: () => { for (const s of sockets) s.destroy(); server.close(); },
  };
}
