// The keys of postern.yaml that name a file or folder, from the schema itself (format `path` in its JSON
// Schema), and their values in a parsed configuration: for tests that must cover every such key.
import { configJsonSchema } from '../../engine/config/describe.ts';

/** Every key of the schema that names a file or folder, as `listeners[].tls.cert`, `tables.<name>`. */
export function pathKeys(): string[] {
  type Node = { properties?: Record<string, Node>; items?: Node; additionalProperties?: Node | boolean; anyOf?: Node[]; format?: string };
  const out = new Set<string>();
  const walk = (n: Node, at: string): void => {
    if (n.format === 'path') out.add(at);
    for (const [k, child] of Object.entries(n.properties ?? {})) walk(child, at ? `${at}.${k}` : k);
    if (n.items && typeof n.items === 'object') walk(n.items, `${at}[]`);
    if (n.additionalProperties && typeof n.additionalProperties === 'object') walk(n.additionalProperties, `${at}.<name>`);
    for (const form of n.anyOf ?? []) walk(form, at);
  };
  walk(configJsonSchema() as Node, '');
  return [...out];
}

/** The string values at `key` (a pathKeys() form) in a parsed configuration. */
export function valuesAt(config: unknown, key: string): string[] {
  let nodes: unknown[] = [config];
  for (const part of key.split('.')) {
    const list = part.endsWith('[]');
    const name = list ? part.slice(0, -2) : part;
    nodes = nodes.flatMap((n) => {
      if (typeof n !== 'object' || n === null) return [];
      const v = name === '<name>' ? Object.values(n) : [(n as Record<string, unknown>)[name]];
      return list ? v.flatMap((x) => (Array.isArray(x) ? x : [])) : v;
    });
  }
  return nodes.filter((n): n is string => typeof n === 'string');
}
