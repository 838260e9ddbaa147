/**
 * zod, for the configuration's schema (schema.ts, describe.ts): from its CommonJS build, with its `locales`
 * namespace (64 files of error-message translations; zod sets English by itself, and nothing here asks for another)
 * loaded only if something reads it. Its ES build re-exports that namespace statically (`export * as locales`), so
 * every process that reads a configuration (each of postern serve, each command) loaded all 64 at start: importing
 * zod took 73 ms of CPU that way, 34 ms this way (six runs each, interleaved).
 */
import { createRequire } from 'node:module';
import type * as Zod from 'zod';
import { deferModule } from '../loading/deferred-module.ts';

const require = createRequire(import.meta.url);

// `__esModule` is asked by the build's import helper at once: answered without loading (the real module says the same).
deferModule(require, 'zod/v4/locales', { early: { __esModule: true } });
export const z: typeof Zod.z = (require('zod') as typeof Zod).z;
// Without zod's JIT: it compiles a parser for each object schema (new Function) at its first parse, and the
// configuration's is parsed once a start (and once a reload): its first parse took 23 ms of CPU that way, 7 ms
// without; later parses take the same either way (five runs each, interleaved).
z.config({ jitless: true });
/** zod's types, under the same name as its functions (`z.infer<…>`, `z.ZodType`), as `import { z } from 'zod'` gives them. */
// eslint-disable-next-line @typescript-eslint/no-namespace
export declare namespace z {
  export type infer<T extends Zod.z.ZodType> = Zod.z.infer<T>;
  export type input<T extends Zod.z.ZodType> = Zod.z.input<T>;
  export type output<T extends Zod.z.ZodType> = Zod.z.output<T>;
  export type ZodType = Zod.z.ZodType;
}
