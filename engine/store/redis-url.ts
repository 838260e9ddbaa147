/**
 * What is wrong with a `store.redis.url`, checked as the Redis client will read it (a WHATWG URL, its user
 * name and password percent-decoded, its path a database number), so that `postern check` refuses what
 * `postern serve` could not start with. The messages never repeat the URL: it may hold a password.
 */
export function redisUrlProblem(text: string): string | null {
  if (!/^rediss?:\/\//.test(text)) return 'expected redis://… or rediss://…';
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return 'not a valid URL (in the user name or password, write # / ? @ : % and spaces percent-encoded, as %23 %2F %3F %40 %3A %25 %20)';
  }
  if (!url.hostname) return 'no host';
  try {
    decodeURIComponent(url.username);
    decodeURIComponent(url.password);
  } catch {
    return 'a % in the user name or password is not followed by two hexadecimal digits (write % itself as %25)';
  }
  if (url.pathname.length > 1 && !/^\/\d+$/.test(url.pathname)) return 'the path after the host must be a database number (/0, /1, …)';
  return null;
}
