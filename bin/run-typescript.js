// Node 24 strips TypeScript types from files it loads, except under node_modules/ — which is where an
// installed package lives. This load hook strips them there too, with the same function Node uses,
// so the installed command runs the same source as `npm start` in a clone (no build step, no dist/).
import { registerHooks, stripTypeScriptTypes } from 'node:module';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

// stripTypeScriptTypes warns once that it is experimental; that line is noise for an administrator.
const emitWarning = process.emitWarning;
process.emitWarning = (warning, ...rest) => {
  if (String(warning).includes('stripTypeScriptTypes')) return;
  emitWarning.call(process, warning, ...rest);
};

// Child processes and worker threads register it too (engine/cluster/typescript-children.ts).
process.env.POSTERN_TS_HOOK = fileURLToPath(import.meta.url);

registerHooks({
  load(url, context, next) {
    if (url.startsWith('file:') && url.endsWith('.ts') && url.includes('/node_modules/')) {
      const source = readFileSync(fileURLToPath(url), 'utf8');
      return { format: 'module', source: stripTypeScriptTypes(source), shortCircuit: true };
    }
    return next(url, context);
  },
});
