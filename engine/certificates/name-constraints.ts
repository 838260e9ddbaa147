/**
 * RFC 5280 name constraints on e-mail addresses (rfc822Name subtrees) of a verified chain's CAs, for a subject
 * CN used as an account: OpenSSL checks a certificate's SAN e-mails and subject emailAddress against them, but
 * a CN only as a host name against DNS constraints, so a sub-CA limited to @sub.example could otherwise issue
 * CN=admin@example and be taken for that account.
 */
import type { TLSSocket } from 'node:tls';
import { children, oid, readTlv, type Tlv } from './der.ts';
import { isRoot, storeChain } from './peer-chain.ts';

const NAME_CONSTRAINTS_OID = '2.5.29.30';

/** One CA's rfc822Name subtrees (it has a NameConstraints extension with at least one). */
export interface EmailConstraints {
  permitted: string[];
  excluded: string[];
}

/**
 * The e-mail constraints of each CA above the leaf in the chain of `socket`'s handshake, or null when that chain
 * cannot be seen to its root: Node gives a server no intermediate the client sent, only what it finds in the
 * listener's caFiles (peer-chain.ts), and such an intermediate's constraints are unknown.
 */
export function chainEmailConstraints(socket: TLSSocket): EmailConstraints[] | null {
  const chain = storeChain(socket);
  const root = chain.at(-1);
  if (chain.length < 2 || !root || !isRoot(root)) return null;
  const out: EmailConstraints[] = [];
  for (const ca of chain.slice(1)) {
    const found = emailConstraintsOf(ca.raw);
    if (found) out.push(found);
  }
  return out;
}

/** A certificate's rfc822Name subtrees, or null when it has no NameConstraints extension naming e-mail. */
export function emailConstraintsOf(der: Buffer): EmailConstraints | null {
  try {
    const tbs = children(der, readTlv(der, 0, der.length))[0];
    const extensions = tbs ? children(der, tbs).find((t) => t.tag === 0xa3) : undefined;
    if (!extensions) return null;
    for (const ext of children(der, children(der, extensions)[0]!)) {
      const parts = children(der, ext);
      if (!parts[0] || oid(der, parts[0]) !== NAME_CONSTRAINTS_OID) continue;
      const octets = parts[parts.length - 1]!;
      const out: EmailConstraints = { permitted: [], excluded: [] };
      for (const subtrees of children(der, readTlv(der, octets.body, octets.end))) {
        const list = subtrees.tag === 0xa0 ? out.permitted : subtrees.tag === 0xa1 ? out.excluded : null;
        if (list) for (const subtree of children(der, subtrees)) rfc822Base(der, subtree, list);
      }
      return out.permitted.length || out.excluded.length ? out : null;
    }
    return null;
  } catch {
    // OpenSSL verified this chain, so it read the extension; one this walk cannot read binds as "nothing permitted".
    return { permitted: [], excluded: [''] };
  }
}

function rfc822Base(der: Buffer, subtree: Tlv, into: string[]): void {
  const base = children(der, subtree)[0];
  if (base?.tag === 0x81) into.push(der.toString('latin1', base.body, base.end)); // [1] rfc822Name
}

/**
 * May `address` be named under every CA's e-mail constraints (RFC 5280 §4.2.1.10)? A constraint with `@` is one
 * mailbox; one starting with `.` any host below that domain; otherwise that one host. Compared without case, the
 * mailbox's local part too: accounts are case-folded, so `Boss@x` would otherwise pass an excluded `boss@x`. The
 * caller passes the address in the form its account binds (IDNA-mapped A-labels, lower case).
 */
export function emailPermitted(address: string, constraints: readonly EmailConstraints[]): boolean {
  const at = address.lastIndexOf('@');
  if (at <= 0) return constraints.length === 0; // not an address: none of them can allow it
  const matches = (c: string): boolean => {
    if (c === '') return false;
    if (c.includes('@')) return c.toLowerCase() === address.toLowerCase();
    const host = address.slice(at + 1).toLowerCase();
    const base = c.toLowerCase();
    return base.startsWith('.') ? host.endsWith(base) : host === base;
  };
  return constraints.every((c) => (c.permitted.length === 0 || c.permitted.some(matches)) && !c.excluded.some((e) => e === '' || matches(e)));
}
