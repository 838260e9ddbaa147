/**
 * Strips TypeScript types from policy scripts with Node's `stripTypeScriptTypes` in 'strip' mode (types
 * become spaces, so every line and column stays where the author wrote it).
 */
import { Worker } from 'node:worker_threads';
import { stripTypeScriptTypes } from 'node:module';
import { ScriptError } from './errors.ts';
import { strippingErrorPosition } from './locations.ts';

export interface StripInput {
  file: string;
  text: string;
}

type Outcome = { ok: true; code: string } | { ok: false; message: string; stack: string };

// stripTypeScriptTypes prints an ExperimentalWarning on first use. A short-lived worker with that one
// warning disabled keeps the server's stderr clean without touching the process's own warning handling.
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { stripTypeScriptTypes } = require('node:module');
parentPort.postMessage(workerData.map((text) => {
  try { return { ok: true, code: stripTypeScriptTypes(text, { mode: 'strip' }) }; }
  catch (e) { return { ok: false, message: String(e && e.message), stack: String(e && e.stack) }; }
}));
`;

function stripHere(text: string): Outcome {
  try {
    return { ok: true, code: stripTypeScriptTypes(text, { mode: 'strip' }) };
  } catch (e) {
    const err = e as Error;
    return { ok: false, message: String(err.message), stack: String(err.stack) };
  }
}

function stripInWorker(texts: string[]): Promise<Outcome[]> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: texts,
      execArgv: ['--disable-warning=ExperimentalWarning'],
    });
    let result: Outcome[] | null = null;
    worker.once('message', (m: Outcome[]) => { result = m; });
    worker.once('error', reject);
    worker.once('exit', () => (result ? resolve(result) : reject(new Error('type-stripping worker exited without an answer'))));
  });
}

/** The JavaScript for each input, or a ScriptError locating the TypeScript it could not strip. */
export async function stripTypes(inputs: readonly StripInput[]): Promise<Array<string | ScriptError>> {
  if (inputs.length === 0) return [];
  const texts = inputs.map((i) => i.text);
  let outcomes: Outcome[];
  try {
    outcomes = await stripInWorker(texts);
  } catch {
    outcomes = texts.map(stripHere); // no worker threads here: strip in-process and accept one warning
  }
  return outcomes.map((o, i) => {
    if (o.ok) return o.code;
    const at = strippingErrorPosition(o.stack, inputs[i]!.text) ?? { line: 1, column: 1 };
    return new ScriptError(inputs[i]!.file, at.line, at.column, `SyntaxError: ${o.message}`);
  });
}
