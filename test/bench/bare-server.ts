/** Baseline (c): a bare smtp-server with STARTTLS + requested client certificate, accepting and discarding. */
import { SMTPServer } from 'smtp-server';
import { readFileSync } from 'node:fs';

const { port, cert, key, ca } = JSON.parse(process.argv[2]!) as { port: number; cert: string; key: string; ca: string };
const server = new SMTPServer({
  logger: false, authOptional: true, disabledCommands: ['AUTH'], disableReverseLookup: true, // as the Postern listener under test
  key: readFileSync(key), cert: readFileSync(cert), ca: [readFileSync(ca)], requestCert: true, rejectUnauthorized: false,
  minVersion: 'TLSv1.2',
  onData(stream, _session, callback) { stream.on('end', () => callback()); stream.resume(); },
});
process.on("SIGINT", () => process.exit(0));
server.listen(port, '127.0.0.1', () => process.send?.('ready'));
