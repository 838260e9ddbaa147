/**
 * A host name in lowercase ASCII as DNS holds it: labels of letters, digits, hyphens (not first or last) and
 * underscores (some sites use them), each at most 63 characters, at most 253 in all.
 */
const LABELS = /^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*$/;

export function isHostName(name: string): boolean {
  return name.length <= 253 && LABELS.test(name);
}
