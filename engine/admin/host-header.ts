/**
 * The Host header against DNS rebinding: a page on attacker.example whose name its owner's DNS rebinds to
 * one of our addresses makes the browser send `Host: attacker.example`, and its script is then same-origin
 * with our answers. Names we answer to are listed by the caller; addresses and localhost always pass.
 */
import { isIP } from 'node:net';

/** A Host header's name: lowercase, without port, brackets or a final dot. */
export function hostName(host: string): string {
  const name = host.startsWith('[') ? host.slice(1).split(']')[0]! : host.replace(/:\d*$/, '');
  return name.toLowerCase().replace(/\.$/, '');
}

/** No Host (HTTP/1.0: no browser), an IP address, localhost, or a name `known` takes. */
export function hostAllowed(host: string | undefined, known: (name: string) => boolean): boolean {
  if (host === undefined) return true;
  const name = hostName(host);
  return isIP(name) !== 0 || name === 'localhost' || known(name);
}
