/**
 * A label whose values come from outside (a next hop's name from DNS, a Postfix client's protocol_state):
 * each distinct value is a new time series, kept by prom-client for the life of the process and by
 * Prometheus for its retention. A sender choosing domains whose MX hosts it names, or a policy client
 * sending made-up states, would otherwise grow both without bound. The first `max` values keep their
 * own series; later new ones are counted under `other`.
 */
export const OTHER_LABEL = 'other';

export class BoundedLabel {
  readonly #seen = new Set<string>();
  readonly #max: number;

  constructor(max: number) {
    this.#max = max;
  }

  /** `value`, or `other` once `max` distinct values have been seen. */
  of(value: string): string {
    if (this.#seen.has(value)) return value;
    if (this.#seen.size >= this.#max) return OTHER_LABEL;
    this.#seen.add(value);
    return value;
  }
}
