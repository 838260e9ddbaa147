/**
 * Imported before the first isolate is created (see isolate-slot.ts). V8 frees dead WebAssembly code (in
 * this process: Node's TypeScript stripper, whose code V8 replaces with optimised code as it warms up) by
 * posting a task to every isolate from a background thread, holding the wasm engine's lock meanwhile.
 * When the reference that task takes to an isolated-vm isolate turns out to be the last one (the isolate
 * was disposed that instant: a reload, a rebuild after a memory blow-up), the isolate is torn down on that
 * thread, and the teardown takes the same lock again: the thread deadlocks, and the event loop with it as
 * soon as it creates the next isolate (seen once in CI, native stacks in the closing note of session 9;
 * the same family: nodejs/node#31752, V8's wasm code GC calling the platform for an isolate being disposed).
 * Without that collection dead wasm code is simply kept: the stripper's unoptimised code, a few MB at most.
 *
 * V8 reads the flag each time code dies, so from here on no collection is started. One that the stripping
 * of the modules loaded before this one already started (64 kB of dead code, reached on a loaded machine)
 * still runs to its end, and may schedule one more. So the installed command (bin/postern.js) and the
 * processes postern serve forks (engine/cluster/typescript-children.ts) switch it off before they strip
 * anything; this import covers every other way of loading the sandbox (npm start, tests).
 */
import v8 from 'node:v8';

v8.setFlagsFromString('--no-wasm-code-gc');
