/**
 * Benchmark (h): Haraka in this process (so its CPU is this process's), configured like the others: one
 * process (no cluster), STARTTLS asking for a client certificate verified against the test CA, no reverse
 * DNS, local domain example.com, messages accepted and discarded, logging at warn.
 */
import { createRequire } from 'node:module';
import { cpSync, mkdirSync, mkdtempSync, copyFileSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const { port, cert, key, ca, harakaDir } = JSON.parse(process.argv[2]!) as { port: number; cert: string; key: string; ca: string; harakaDir: string };
const root = mkdtempSync(join(tmpdir(), 'postern-bench-haraka-'));
const config = join(root, 'config');
cpSync(join(harakaDir, 'node_modules', 'Haraka', 'config'), config, { recursive: true });
const write = (file: string, text: string): void => writeFileSync(join(config, file), text);
write('smtp.ini', `listen=127.0.0.1:${port}\nnodes=0\n`);
write('plugins', 'no_rdns\ntls\nrcpt_to.in_host_list\nqueue/discard\n');
write('host_list', 'example.com\n');
write('log.ini', '[main]\nlevel=warn\n');
write('tls.ini', '[main]\nrequestCert=true\nrejectUnauthorized=false\nminVersion=TLSv1.2\nca=tls_ca.pem\n');
copyFileSync(cert, join(config, 'tls_cert.pem'));
copyFileSync(key, join(config, 'tls_key.pem'));
copyFileSync(ca, join(config, 'tls_ca.pem'));
// Without dhparams.pem Haraka starts `openssl dhparam 2048` in the background, which eats a core for
// minutes; the RFC 7919 group is instant.
writeFileSync(join(config, 'dhparams.pem'), execFileSync('openssl', ['genpkey', '-genparam', '-algorithm', 'DH', '-pkeyopt', 'group:ffdhe2048']));
// Haraka looks up every client's reverse DNS unless a plugin answers first; smtp-server and Postern don't here.
mkdirSync(join(root, 'plugins'));
writeFileSync(join(root, 'plugins', 'no_rdns.js'), 'exports.hook_lookup_rdns = (next) => next(OK, "localhost")\n');

process.env.HARAKA = root;
process.env.YES_REALLY_DO_DISCARD = '1'; // queue/discard's safety switch
createRequire(join(harakaDir, 'package.json'))(join(harakaDir, 'node_modules', 'Haraka', 'haraka.js'));

// Ready once it greets.
const probe = (): void => {
  const s = net.connect(port, '127.0.0.1');
  s.once('data', (d) => { s.destroy(); if (String(d).startsWith('220')) process.send?.('ready'); else setTimeout(probe, 100); });
  s.once('error', () => setTimeout(probe, 100));
};
probe();
