/**
 * The environment variables tests set to shorten a wait or shrink a size (POSTERN_SLOW_HOOK_MS and the like):
 * a positive whole number, or the default. Each parsed `Number(x) || default`, which took a negative or fractional
 * value as given (a deadline of -1 ms: every wait over at once) and a typo silently as the default.
 */
const warned = new Set<string>();

/** `name`'s value when it is a positive whole number; otherwise `fallback`, with a warning on stderr (once a name). */
export function envKnob(name: string, fallback: number, env: NodeJS.ProcessEnv = process.env): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = /^\s*\d+\s*$/.test(raw) ? Number(raw) : NaN;
  if (Number.isSafeInteger(value) && value > 0) return value;
  if (!warned.has(name)) {
    warned.add(name);
    process.stderr.write(`postern: ${name}=${JSON.stringify(raw)} is not a positive whole number: ${fallback} is used\n`);
  }
  return fallback;
}
