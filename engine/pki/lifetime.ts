/**
 * Ends of lifetimes given in days. A certificate or CRL cannot end after 9999-12-31T23:59:59Z (RFC 5280
 * §4.1.2.5: GeneralizedTime has four digits of year); a later date was written as a malformed certificate,
 * and a sum beyond JavaScript's dates (about 100 million days) as "Bad time value".
 */
const DAY_MS = 86400_000;

/** The latest end a certificate or CRL can have (RFC 5280's "no well-defined expiration date"). */
const LATEST_X509_END = new Date(Date.UTC(9999, 11, 31, 23, 59, 59));

/** `days` after `from`, or `limit` when that is later (or beyond any date). */
export function endAfterDays(from: Date, days: number, limit: Date = LATEST_X509_END): Date {
  const end = from.getTime() + days * DAY_MS;
  const latest = Math.min(limit.getTime(), LATEST_X509_END.getTime());
  return new Date(end <= latest ? end : latest);
}

/** Whether `days` after `from` is a date a certificate can end on. */
export const fitsX509 = (from: Date, days: number): boolean => from.getTime() + days * DAY_MS <= LATEST_X509_END.getTime();
