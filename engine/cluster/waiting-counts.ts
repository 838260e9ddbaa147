/**
 * The supervisor's connections accepted and not yet handed to a worker, counted per client ("<listener>
 * <counted address>", as slots are) and per listener, so that a flood is closed at accept rather than
 * queued (supervisor.ts, #queueFull).
 */
export class WaitingCounts {
  readonly #byKey = new Map<string, number>();
  readonly #byListener = new Map<string, number>();

  add(listener: string, key: string): void {
    this.#byKey.set(key, (this.#byKey.get(key) ?? 0) + 1);
    this.#byListener.set(listener, (this.#byListener.get(listener) ?? 0) + 1);
  }

  remove(listener: string, key: string): void {
    drop(this.#byKey, key);
    drop(this.#byListener, listener);
  }

  ofKey(key: string): number { return this.#byKey.get(key) ?? 0; }
  ofListener(listener: string): number { return this.#byListener.get(listener) ?? 0; }
}

function drop(map: Map<string, number>, k: string): void {
  const left = (map.get(k) ?? 1) - 1;
  if (left > 0) map.set(k, left); else map.delete(k);
}
