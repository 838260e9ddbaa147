/**
 * A CommonJS module that a package requires at load but the server seldom or never uses, loaded at its first use
 * instead: its place in `require.cache` holds a stand-in whose first property read (or `in`, or key listing) loads the
 * real module and answers from it. Start-up is module loading for the most part (every process of `postern serve`,
 * every command), and a few such modules cost tens of milliseconds each (zod's locales, @opentelemetry/api through
 * prom-client). Only for modules read through their exports object, not kept by identity.
 */
import { createRequire } from 'node:module';

type Exports = Record<PropertyKey, unknown>;

/**
 * Defer the module `request` resolves to, as `requirer` (a file of the package that requires it; by default the
 * caller itself) would resolve it, `from` being the caller's require. `early`: keys the requirer asks at once,
 * answered without loading (as the real module answers them). Nothing is deferred when the module is already loaded
 * or cannot be found (a package upgrade that moved it): it then loads as usual.
 */
export function deferModule(from: NodeJS.Require, request: string, opts: { requirer?: string; early?: Exports } = {}): void {
  const early = opts.early ?? {};
  let path: string;
  try {
    path = (opts.requirer ? createRequire(from.resolve(opts.requirer)) : from).resolve(request);
  } catch {
    return;
  }
  if (from.cache[path]) return;
  let real: Exports | undefined;
  const load = (): Exports => {
    if (!real) {
      delete from.cache[path];
      real = from(path) as Exports;
    }
    return real;
  };
  const exports = new Proxy({}, {
    get: (_, key) => (Object.hasOwn(early, key) ? early[key] : load()[key]),
    has: (_, key) => key in load(),
    ownKeys: () => Reflect.ownKeys(load()),
    getOwnPropertyDescriptor: (_, key) => {
      const d = Reflect.getOwnPropertyDescriptor(load(), key);
      return d && { ...d, configurable: true };
    },
  });
  from.cache[path] = { id: path, filename: path, loaded: true, exports, children: [], paths: [] } as unknown as NodeJS.Module;
}
