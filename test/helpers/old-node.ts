// A Node older than 24 on this machine (Debian's /usr/bin/node, say), to run the installed command the way
// a unit file with `ExecStart=/usr/bin/node …` does: bin/postern.js then re-runs itself on the pinned Node 24.
import { spawnSync } from 'node:child_process';

export const OLD_NODE: string | undefined = ['/usr/bin/node', '/usr/local/bin/node'].find((node) => {
  const major = Number(/^v(\d+)/.exec(spawnSync(node, ['--version'], { encoding: 'utf8' }).stdout ?? '')?.[1] ?? 99);
  return major < 24;
});
