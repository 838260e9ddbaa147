/**
 * Imported before the first isolate is created (see isolate-slot.ts). V8 frees dead WebAssembly code (in
 * this process: Node's TypeScript stripper, whose code V8 replaces with optimised code as it warms up) by
 * posting a task to every isolate from a background thread, holding the wasm engine's lock meanwhile.
 * When the reference that task takes to an isolated-vm isolate turns out to be the last one (the isolate
 * was disposed that instant: a reload, a rebuild after a memory blow-up), the isolate is torn down on that
 * thread, and the teardown takes the same lock again: the thread deadlocks, and the event loop with it as
 * soon as it creates the next isolate (seen once in CI, native stacks in the closing note of session 9).
 * Without that collection dead wasm code is simply kept: the stripper's unoptimised code, a few MB at most.
 * The flag is read each time code dies, so setting it here, at run time, is enough.
 */
import v8 from 'node:v8';

v8.setFlagsFromString('--no-wasm-code-gc');
