/**
 * `postern queue summary`: the queue by recipient domain and age, like Postfix's qshape. A message counts
 * once under each domain it still has pending recipients for, in the bucket of its age (minutes since it
 * was received): 0–5, 5–10, 10–20, … doubling, and the rest.
 */
import type { QueueEntry } from './admin.ts';

/** Upper bounds of the age buckets in minutes (qshape's defaults); one more bucket holds everything older. */
export const AGE_BUCKETS_MINUTES = [5, 10, 20, 40, 80, 160, 320, 640, 1280] as const;

export interface QueueShapeRow { domain: string; total: number; counts: number[] }

export interface QueueShape {
  /** Bucket labels: "5" (0–5 min), "10", …, "1280", "1280+". */
  buckets: string[];
  /** The TOTAL row first, then domains by their total, largest first. */
  rows: QueueShapeRow[];
}

export function queueShape(entries: readonly QueueEntry[], now = Date.now()): QueueShape {
  const width = AGE_BUCKETS_MINUTES.length + 1;
  const byDomain = new Map<string, number[]>();
  const total = new Array<number>(width).fill(0);
  for (const e of entries) {
    const minutes = Math.max(0, (now - Date.parse(e.receivedAt)) / 60_000);
    let bucket = AGE_BUCKETS_MINUTES.findIndex((limit) => minutes < limit);
    if (bucket < 0) bucket = width - 1;
    total[bucket]!++;
    const domains = new Set(e.pending.map((r) => r.address.slice(r.address.lastIndexOf('@') + 1).toLowerCase()));
    for (const domain of domains) {
      const counts = byDomain.get(domain) ?? new Array<number>(width).fill(0);
      counts[bucket]!++;
      byDomain.set(domain, counts);
    }
  }
  const sum = (counts: number[]): number => counts.reduce((a, b) => a + b, 0);
  const rows = [...byDomain].map(([domain, counts]) => ({ domain, total: sum(counts), counts }))
    .sort((a, b) => b.total - a.total || a.domain.localeCompare(b.domain));
  return {
    buckets: [...AGE_BUCKETS_MINUTES.map(String), `${AGE_BUCKETS_MINUTES.at(-1)}+`],
    rows: [{ domain: 'TOTAL', total: sum(total), counts: total }, ...rows],
  };
}

/** qshape's table: domain, total, then one column per age bucket. */
export function formatQueueShape(shape: QueueShape): string {
  const header = ['', 'T', ...shape.buckets];
  const lines = shape.rows.map((r) => [r.domain, String(r.total), ...r.counts.map(String)]);
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const row = (cells: string[]): string => cells.map((c, i) => (i === 0 ? c.padStart(widths[0]!) : c.padStart(widths[i]! + 1))).join('');
  return [row(header), ...lines.map(row)].join('\n') + '\n';
}
