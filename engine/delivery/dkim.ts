/**
 * DKIM signing of outbound mail (mailauth's signer), with the keys of `delivery.dkim`. Which key signs a
 * delivery: the one a predelivery verdict names, else the one listing the sender's domain, else none.
 * Keys are read in this process only (the queue's), once per configuration generation; nothing of them
 * reaches a script. The signature covers the exact bytes sent: line ends (bare LF, bare CR) are made CRLF
 * before signing, which is what the SMTP client would otherwise do to them on the wire.
 * mailauth (with joi and undici, a large heap) is loaded at the first signature, so only a queue process
 * whose configuration has DKIM keys ever holds it.
 */
import { createHash, createPrivateKey, type KeyObject } from 'node:crypto';
import { readInputFile, readProblem } from '../config/input-file.ts';
import { Readable } from 'node:stream';
import type { DeliveryConfig } from '../config/schema.ts';
import { DeliveryFailure } from './outcome.ts';
import { declared } from './declared.ts';

export interface DkimKey {
  name: string;
  domain: string;
  selector: string;
  algorithm: 'rsa-sha256' | 'ed25519-sha256';
  /** PEM (PKCS#8) of the checked key, as mailauth takes it. */
  pem: string;
  /** Changes with the key's content (for logs: which key signed). */
  id: string;
}

/** The key name for a delivery: the verdict's choice (`null`: none), else the sender domain's default. */
export function chooseDkimKey(delivery: DeliveryConfig, chosen: string | null | undefined, sender: string): string | null {
  if (chosen !== undefined) return chosen;
  const at = sender.lastIndexOf('@');
  if (at < 0) return null; // the null sender (bounces): no domain to sign for by default
  const domain = sender.slice(at + 1).toLowerCase();
  for (const [name, key] of Object.entries(delivery.dkim)) {
    if (key.senderDomains.some((d) => d.toLowerCase() === domain)) return name;
  }
  return null;
}

/** Read and check `delivery.dkim.<name>`. Throws with `<file>: delivery.dkim.<name>.privateKey: …` (no key material). */
export async function loadDkimKey(delivery: DeliveryConfig, name: string): Promise<DkimKey> {
  const entry = declared(delivery.dkim, name);
  const at = `delivery.dkim.${name}`;
  if (!entry) throw new Error(`${at}: no such DKIM key`);
  const where = `${entry.privateKey}: ${at}.privateKey`;
  let text: string;
  try {
    text = (await readInputFile(entry.privateKey)).toString('utf8');
  } catch (err) {
    throw new Error(`${where}: cannot be read (${readProblem(err)})`);
  }
  let key: KeyObject;
  try {
    key = createPrivateKey(text);
  } catch {
    throw new Error(`${where}: not a PEM private key`);
  }
  const type = key.asymmetricKeyType;
  if (type === 'rsa') {
    const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
    if (bits < 1024) throw new Error(`${where}: an RSA key of ${bits} bits is too short for DKIM (at least 1024; RFC 8301)`);
  } else if (type !== 'ed25519') {
    throw new Error(`${where}: a ${type ?? 'unknown'} key; DKIM signs with RSA or Ed25519 keys`);
  }
  const pem = key.export({ type: 'pkcs8', format: 'pem' }).toString();
  return {
    name, domain: entry.domain, selector: entry.selector, algorithm: type === 'rsa' ? 'rsa-sha256' : 'ed25519-sha256', pem,
    id: createHash('sha256').update(pem).digest('hex').slice(0, 16),
  };
}

/** Every declared key, for `postern check` and a reload: the problems, one line each. */
export async function checkDkimKeys(delivery: DeliveryConfig): Promise<string[]> {
  const results = await Promise.allSettled(Object.keys(delivery.dkim).map((n) => loadDkimKey(delivery, n)));
  return results.flatMap((r) => (r.status === 'rejected' ? [(r.reason as Error).message] : []));
}

/** Keys per generation: `scope` is the generation object, so a reload reads the files again. */
export class DkimKeys {
  readonly #cache = new WeakMap<object, Map<string, Promise<DkimKey>>>();

  key(delivery: DeliveryConfig, scope: object, name: string): Promise<DkimKey> {
    if (!declared(delivery.dkim, name)) return Promise.reject(new DeliveryFailure(`no DKIM key named "${name}" under delivery.dkim`, { permanent: false, enhanced: '4.7.0' }));
    let m = this.#cache.get(scope);
    if (!m) this.#cache.set(scope, (m = new Map()));
    let p = m.get(name);
    if (!p) {
      const map = m;
      p = loadDkimKey(delivery, name).catch((err: Error) => {
        map.delete(name); // a file caught mid-rotation is read again next time
        throw new DeliveryFailure(err.message, { permanent: false, enhanced: '4.7.0' });
      });
      map.set(name, p);
    }
    return p;
  }
}

let signer: Promise<typeof import('mailauth').dkimSign> | null = null;
/**
 * mailauth, loaded at the first signature, or earlier: loading it holds the thread (synchronous CommonJS,
 * 0.4–0.8 s on a loaded machine), so a queue process with DKIM keys loads it while it starts, before its
 * watchdog (1 s) watches; loaded at the first message instead, a slow load got the process killed as hung.
 */
export function loadDkimSigner(): Promise<typeof import('mailauth').dkimSign> {
  signer ??= import('mailauth').then((m) => m.dkimSign, (err: Error) => {
    signer = null;
    throw new DeliveryFailure(`DKIM signer cannot be loaded: ${err.message}`, { permanent: false, enhanced: '4.7.0' });
  });
  return signer;
}

/** The message with its DKIM-Signature header in front (and CRLF line ends). Throws DeliveryFailure when signing fails. */
export async function signMessage(message: Buffer, key: DkimKey): Promise<Buffer> {
  const crlf = withCrlf(message);
  const signature = { signingDomain: key.domain, selector: key.selector, privateKey: key.pem, algorithm: key.algorithm, canonicalization: 'relaxed/relaxed' };
  // The signer reads only `signatureData` (its typings want the fields at the top level as well).
  const dkimSign = await loadDkimSigner();
  const result = await dkimSign(linesPaced(crlf), { ...signature, signatureData: [signature] });
  if (!result.signatures) {
    const why = result.errors.map((e) => e.err?.message ?? String(e)).join('; ') || 'no signature';
    throw new DeliveryFailure(`DKIM signing with delivery.dkim.${key.name} failed: ${why}`, { permanent: false, enhanced: '4.7.0' });
  }
  return Buffer.concat([Buffer.from(result.signatures), crlf]);
}

/** Bytes of the message handed to the signer per turn of the event loop (extended to the next line end). */
const SIGN_PIECE_BYTES = 256 * 1024;

/**
 * The message for the signer in pieces that end at a line end, one per turn of the event loop. Given a Buffer,
 * mailauth cuts it in 64 KiB pieces regardless of lines and joins a line it has not seen the end of onto each
 * next piece, scanning it again: quadratic in a line's length. And its writes drain through promises, so the
 * whole message went through in one turn: a message with a 24 MB line held the queue process's thread for
 * seconds, and its watchdog (1 s) killed the process at every attempt of that message — no mail went out.
 */
function linesPaced(message: Buffer): Readable {
  let at = 0;
  return new Readable({
    read() {
      setImmediate(() => {
        if (at >= message.length) { this.push(null); return; }
        const lf = message.indexOf(0x0a, Math.min(at + SIGN_PIECE_BYTES, message.length) - 1);
        const end = lf < 0 ? message.length : lf + 1;
        this.push(message.subarray(at, end));
        at = end;
      });
    },
  });
}

/**
 * Bare LF and bare CR line ends made CRLF: the message as the SMTP client sends it (nodemailer's data
 * stream turns both into CRLF; a lone CR left alone would be an SMTP smuggling vector). The same buffer
 * when there are none.
 */
export function withCrlf(message: Buffer): Buffer {
  // Found with indexOf (native) line end by line end, not byte by byte in JS: a 25 MB message held the thread 100+ ms.
  let bare = false;
  for (let at = message.indexOf(0x0a); at >= 0 && !bare; at = message.indexOf(0x0a, at + 1)) bare = at === 0 || message[at - 1] !== 0x0d;
  for (let at = message.indexOf(0x0d); at >= 0 && !bare; at = message.indexOf(0x0d, at + 1)) bare = message[at + 1] !== 0x0a;
  return bare ? Buffer.from(message.toString('latin1').replace(/\r\n|\r|\n/g, '\r\n'), 'latin1') : message;
}
