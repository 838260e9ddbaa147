/**
 * DKIM signing of outbound mail (dkim-signature.ts), with the keys of `delivery.dkim`. Which keys sign a
 * delivery (one signature each): those a predelivery verdict names, else those listing the sender's domain, else none.
 * The sender domain's keys sign only mail a logged-in client sent: anyone may write any envelope sender.
 * Keys are read in this process only (the queue's), once per configuration generation; nothing of them
 * reaches a script. The signature covers the exact bytes sent: line ends (bare LF, bare CR) are made CRLF
 * before signing, which is what the SMTP client would otherwise do to them on the wire.
 */
import { createHash, createPrivateKey, type KeyObject } from 'node:crypto';
import { readInputFile, readProblem } from '../config/input-file.ts';
import type { DeliveryConfig } from '../config/schema.ts';
import { DeliveryFailure } from './outcome.ts';
import { declared } from './declared.ts';
import { encryptedKeyProblem } from '../certificates/index.ts';
import { domainKey } from '../policy/domain-key.ts';
import { dkimSignatureField, UnsignableMessage } from './dkim-signature.ts';

export interface DkimKey {
  name: string;
  domain: string;
  selector: string;
  algorithm: 'rsa-sha256' | 'ed25519-sha256';
  /** The checked key (it stays in this process). */
  privateKey: KeyObject;
  /** Changes with the key's content (for logs: which key signed). */
  id: string;
}

/**
 * The key names for a delivery, one signature each ([]: unsigned): the verdict's choice, else, for a message a
 * logged-in client sent (`loggedIn`: SMTP AUTH or a certificate identity), the keys that list the sender's domain,
 * in the configuration's order (an RSA and an Ed25519 key: both sign). The envelope sender of any other message is
 * whatever its client wrote: mail from the internet taken in for an internal host, its sender forged as one of
 * ours, went out signed with our key (DMARC passing for it there, and wherever it was forwarded). Domains compare by
 * their A-labels (domain-key.ts): an ASCII transaction's sender is `alice@xn--bcher-kva.example`, an SMTPUTF8
 * one's `alice@bücher.example`, and `senderDomains` may list it either way.
 */
export function chooseDkimKeys(delivery: DeliveryConfig, chosen: readonly string[] | undefined, sender: string, loggedIn: boolean): readonly string[] {
  if (chosen !== undefined) return chosen;
  if (!loggedIn) return [];
  const at = sender.lastIndexOf('@');
  if (at < 0) return []; // the null sender (bounces): no domain to sign for by default
  const domain = domainKey(sender.slice(at + 1));
  if (!domain) return [];
  return Object.entries(delivery.dkim).filter(([, key]) => key.senderDomains.some((d) => domainKey(d) === domain)).map(([name]) => name);
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
    throw new Error(`${where}: ${encryptedKeyProblem(text) ?? 'not a PEM private key'}`);
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
    name, domain: entry.domain, selector: entry.selector, algorithm: type === 'rsa' ? 'rsa-sha256' : 'ed25519-sha256', privateKey: key,
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

/**
 * The message with a DKIM-Signature header per key in front, the first key's on top (and CRLF line ends). Each
 * signs the message as received, not the others' signatures: none depends on another. Throws DeliveryFailure
 * when signing fails.
 */
export async function signMessage(message: Buffer, keys: readonly DkimKey[]): Promise<Buffer> {
  const { fields, message: crlf } = await signatureFields(message, keys);
  return Buffer.concat([fields, crlf]);
}

/**
 * The same, apart: the DKIM-Signature fields, and the message they sign (CRLF line ends), which delivery sends after
 * them. Not joined: a signed copy of a large message was a second whole copy per attempt, held until the next hop
 * had read it. `message` is the message given when its line ends are all CRLF already.
 */
export async function signatureFields(message: Buffer, keys: readonly DkimKey[]): Promise<{ fields: Buffer; message: Buffer }> {
  const crlf = withCrlf(message);
  const fields: Buffer[] = [];
  for (const key of keys) {
    try {
      fields.push(Buffer.from(await dkimSignatureField(crlf, key), 'latin1'));
    } catch (err) {
      // A message no retry can sign bounces now; anything else (the key) is retried.
      if (err instanceof UnsignableMessage) throw new DeliveryFailure(`DKIM signing with delivery.dkim.${key.name} refused: ${err.message}`, { permanent: true, enhanced: '5.6.0' });
      throw new DeliveryFailure(`DKIM signing with delivery.dkim.${key.name} failed: ${(err as Error).message}`, { permanent: false, enhanced: '4.7.0' });
    }
  }
  return { fields: Buffer.concat(fields), message: crlf };
}

/**
 * Bare LF and bare CR line ends made CRLF: the message as the SMTP client sends it (nodemailer's data
 * stream turns both into CRLF; a lone CR left alone would be an SMTP smuggling vector), and a CRLF at the end
 * if there is no line end there. The same buffer when there is nothing to change.
 *
 * Two passes over the bytes in JS, a few milliseconds a megabyte whatever the lines: a native search per line
 * end cost a call per line (24 MB of short lines held the queue's thread ~0.5 s with nothing to change), and
 * the rewrite with a regex over the message as a string ~2 s for 24 MB of bare LFs, past the queue's watchdog.
 */
export function withCrlf(message: Buffer): Buffer {
  const bare = bareLineEnds(message);
  const crlf = bare === 0 ? message : crlfCopy(message, bare);
  // The SMTP client ends a message that does not end with a line end with one before the final dot: signed too.
  return crlf.length && crlf[crlf.length - 1] !== 0x0a ? Buffer.concat([crlf, Buffer.from('\r\n')]) : crlf;
}

/** The bytes withCrlf(message) allocates for its copy: 0 when it returns the message as it is. */
export function crlfCopyBytes(message: Buffer): number {
  const bare = bareLineEnds(message);
  const unended = message.length > 0 && message[message.length - 1] !== 0x0a;
  return bare === 0 && !unended ? 0 : message.length + bare + (unended ? 2 : 0);
}

const CR = 0x0d;
const LF = 0x0a;

/** Line ends that are not CRLF: an LF without its CR, a CR without its LF. */
function bareLineEnds(message: Buffer): number {
  let bare = 0;
  const n = message.length;
  for (let i = 0; i < n; i++) {
    const b = message[i];
    if (b === LF) bare++;
    else if (b === CR) {
      if (message[i + 1] === LF) i++;
      else bare++;
    }
  }
  return bare;
}

/** `message` with each of its `bare` bare line ends written CRLF. */
function crlfCopy(message: Buffer, bare: number): Buffer {
  const out = Buffer.allocUnsafe(message.length + bare);
  const n = message.length;
  let o = 0;
  for (let i = 0; i < n; i++) {
    const b = message[i]!;
    if (b === LF || b === CR) {
      if (b === CR && message[i + 1] === LF) i++; // a CRLF: as it is
      out[o++] = CR;
      out[o++] = LF;
    } else {
      out[o++] = b;
    }
  }
  return out;
}
