/** A temporary folder for one test file: created before its tests, removed after them. */
import { after } from 'node:test';
import { mkdtempSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface ScratchDir {
  /** The folder, made when the file called useScratchDir. */
  readonly path: string;
  /** Write `name` into the folder; resolves with its path. */
  file(name: string, content: string | Buffer): Promise<string>;
}

export function useScratchDir(prefix: string): ScratchDir {
  // Made at once, not in a before() hook: a file's own top-level before() may run while that hook's mkdtemp is
  // still pending (it did in test/config/open-by-mistake once the PKI it awaited first came sooner).
  const path = mkdtempSync(join(tmpdir(), prefix));
  after(() => rm(path, { recursive: true, force: true }));
  return {
    path,
    async file(name, content) {
      const p = join(path, name);
      await writeFile(p, content);
      return p;
    },
  };
}
