/** Delivery benchmark next hop: smtp-server with STARTTLS asking for a client certificate; counts and discards. */
import { SMTPServer } from 'smtp-server';
import { readFileSync } from 'node:fs';
import type { TLSSocket } from 'node:tls';

const { port, cert, key, ca } = JSON.parse(process.argv[2]!) as { port: number; cert: string; key: string; ca: string };
let messages = 0;
let withCertificate = 0;
const verified = new Set<string>();
const server = new SMTPServer({
  logger: false, authOptional: true, disabledCommands: ['AUTH'], disableReverseLookup: true,
  key: readFileSync(key), cert: readFileSync(cert), ca: [readFileSync(ca)], requestCert: true, rejectUnauthorized: false,
  minVersion: 'TLSv1.2', size: 10 * 1024 * 1024,
  onSecure(socket, session, cb) {
    if ((socket as TLSSocket).authorized) verified.add(session.id);
    cb();
  },
  onData(stream, session, callback) {
    stream.on('end', () => {
      messages++;
      if (verified.has(session.id)) withCertificate++;
      callback();
    });
    stream.resume();
  },
  onClose(session) { verified.delete(session.id); },
});
server.listen(port, '127.0.0.1', () => process.send?.('ready'));
process.on('message', () => process.send?.({ messages, withCertificate }));
