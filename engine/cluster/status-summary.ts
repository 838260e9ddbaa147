/**
 * The first line of `postern status`: what an on-call reads before anything else, in words — are all
 * processes up (and how often they were replaced), does it refuse new mail (/readyz), is a script fenced, did the last reload fail, is a
 * restart pending, how much mail waits and for how long. The JSON below it has the details.
 */
export interface SummaryFacts {
  processes: ReadonlyArray<{ role: string; index: number; ready: boolean; restarts: number }>;
  fences: ReadonlyArray<{ hook: string; file: string; shadow?: boolean }>;
  lastError: readonly string[] | null;
  pendingRestart: readonly string[];
  queue: { messages: number; held: number; oldestAgeSeconds: number } | { error: string };
  /** /readyz's failing checks (`spool: …`): the server refuses new mail. */
  notReady?: readonly string[];
  /** Why file changes are not watched (they are polled every `pollSeconds`), or null/absent while they are. */
  watching?: string | null;
  pollSeconds?: number;
  /** Inputs that shrank and are waited for before they are reloaded (`file (before → now bytes)`), or null/absent. */
  settling?: readonly string[] | null;
}

export function statusSummary(f: SummaryFacts): string {
  const parts: string[] = [];
  const workers = f.processes.filter((p) => p.role === 'worker');
  const down = f.processes.filter((p) => !p.ready).map((p) => `${p.role} ${p.index}`);
  const restarts = f.processes.reduce((n, p) => n + p.restarts, 0);
  parts.push(`${workers.length - down.filter((d) => d.startsWith('worker')).length}/${workers.length} workers ready` +
    `${down.length ? ` (not ready: ${down.join(', ')})` : ''}, ${restarts} restart${restarts === 1 ? '' : 's'}`);
  if (f.notReady?.length) parts.push(`NOT READY: ${f.notReady.join('; ')}`);
  // Shadow or live: a shadow script's fence costs no mail (its calls count as errors), a live one's hook answers 451.
  parts.push(f.fences.length ? `FENCED: ${f.fences.map((x) => `${x.shadow === true ? 'shadow' : 'live'} ${x.hook} (${x.file})`).join(', ')}` : 'no fenced script');
  parts.push(f.lastError ? `LAST RELOAD REFUSED: ${f.lastError[0]}` : 'last reload ok');
  // An edit takes up to a poll period to be seen, instead of at once: the administrator must know why.
  if (f.watching) parts.push(`file changes polled every ${f.pollSeconds ?? 1} s (inotify: ${f.watching})`);
  // A table emptied or cut short is not in force yet (it may be half written): the old one still answers.
  if (f.settling?.length) parts.push(`waiting for ${f.settling.join(', ')} to settle before reloading`);
  if (f.pendingRestart.length) parts.push(`restart pending: ${f.pendingRestart.join('; ')}`);
  const q = f.queue;
  if ('error' in q) parts.push(`queue unreadable: ${q.error}`);
  else parts.push(`queue ${q.messages}${q.held ? ` (${q.held} held)` : ''}${q.messages - q.held ? `, oldest ${age(q.oldestAgeSeconds)}` : ''}`);
  return parts.join('; ');
}

function age(seconds: number): string {
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86400)} days`;
}
