/**
 * A next hop without extensions that records the raw bytes of each DATA phase (ended strictly by CRLF.CRLF):
 * for tests of what Postern puts on the wire (line ends, dot-stuffing, line lengths). `maxLineOctets`: a line
 * of the message longer than that (CRLF not counted, as RFC 5321's 1000 with it) gets `500 5.5.2` after the
 * dot, as next hops that hold to the limit answer. `eightBitMime`: its EHLO reply offers 8BITMIME.
 */
import net from 'node:net';
import { once } from 'node:events';

export interface RawSink { port: number; messages: Buffer[]; close(): Promise<void> }

export async function startRawSink(opts: { maxLineOctets?: number; eightBitMime?: boolean } = {}): Promise<RawSink> {
  const messages: Buffer[] = [];
  const sockets = new Set<net.Socket>();
  const tooLong = (data: Buffer): boolean => opts.maxLineOctets !== undefined
    && data.toString('latin1').split('\r\n').some((l) => l.length > opts.maxLineOctets! + (l.startsWith('..') ? 1 : 0));
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    let buffered = Buffer.alloc(0);
    let inData = false;
    socket.write('220 sink ESMTP\r\n');
    socket.on('data', (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      for (;;) {
        if (inData) {
          const end = buffered.indexOf('\r\n.\r\n');
          if (end < 0) return;
          const data = buffered.subarray(0, end + 2);
          buffered = buffered.subarray(end + 5);
          inData = false;
          if (tooLong(data)) { socket.write('500 5.5.2 Line too long (RFC 5321 4.5.3.1.6)\r\n'); continue; }
          messages.push(data);
          socket.write('250 2.0.0 kept\r\n');
          continue;
        }
        const nl = buffered.indexOf('\r\n');
        if (nl < 0) return;
        const line = buffered.toString('latin1', 0, nl).toUpperCase();
        buffered = buffered.subarray(nl + 2);
        if (line.startsWith('DATA')) { inData = true; socket.write('354 go ahead\r\n'); }
        else if (line.startsWith('QUIT')) socket.end('221 bye\r\n');
        else socket.write(line.startsWith('EHLO') ? (opts.eightBitMime ? '250-sink\r\n250 8BITMIME\r\n' : '250 sink\r\n') : '250 ok\r\n');
      }
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as net.AddressInfo).port,
    messages,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
