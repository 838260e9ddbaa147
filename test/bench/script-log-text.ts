// What escaping a script's log line costs (engine/logging/logger.ts scriptText): a typical line without a
// character to escape (one scan), and with one (scan and replace). node test/bench/script-log-text.ts
import { scriptText } from '../../engine/logging/logger.ts';

const clean = 'K4Z2M7Q1: 18234 bytes, 3 rcpt, from someone@example.net, subject "Quarterly report (final)"';
const hostile = `${clean} \u009b2J`;

function nsPerCall(line: string, rounds: number): number {
  let sink = 0;
  for (let i = 0; i < 100_000; i++) sink += scriptText(line).length; // warm-up
  const t0 = performance.now();
  for (let i = 0; i < rounds; i++) sink += scriptText(line).length;
  if (sink === 0) throw new Error('unreachable');
  return ((performance.now() - t0) * 1e6) / rounds;
}

console.log(`${clean.length}-character line: ${nsPerCall(clean, 2_000_000).toFixed(0)} ns without a character to escape, ${nsPerCall(hostile, 500_000).toFixed(0)} ns with one`);
