/**
 * A browser-like client of the account page without a browser: Node's https on a fresh connection per
 * request, a cookie jar fed by Set-Cookie, forms posted with the page's CSRF token. For what Chromium does
 * not let a test do by hand (HEAD, a chosen body, an old cookie kept after the browser replaced it).
 */
import https from 'node:https';

export interface PageAnswer { status: number; headers: Record<string, string | string[] | undefined>; body: string }

export class PageClient {
  readonly cookies = new Map<string, string>();

  readonly #url: string;
  readonly #ca: string;

  constructor(url: string, ca: string) {
    this.#url = url;
    this.#ca = ca;
  }

  /** `form` posted as the page's forms post it, or a `raw` body of a chosen type. */
  request(method: string, path: string, form?: Record<string, string>, raw?: { type: string; body: string }): Promise<PageAnswer> {
    const body = raw ? raw.body : form ? new URLSearchParams(form).toString() : undefined;
    const type = raw ? raw.type : 'application/x-www-form-urlencoded';
    const cookie = [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; ');
    return new Promise((resolve, reject) => {
      const req = https.request(`${this.#url}${path}`, {
        method, ca: this.#ca, servername: 'localhost', agent: false,
        headers: { ...(cookie ? { cookie } : {}), ...(body !== undefined ? { 'content-type': type } : {}) },
      }, (res) => {
        for (const c of res.headers['set-cookie'] ?? []) {
          const [pair = ''] = c.split(';');
          const eq = pair.indexOf('=');
          const name = pair.slice(0, eq);
          const value = pair.slice(eq + 1);
          if (value && !/expires=Thu, 01 Jan 1970/i.test(c)) this.cookies.set(name, value);
          else this.cookies.delete(name);
        }
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => { text += d; });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }));
      });
      req.on('error', reject);
      req.end(body);
    });
  }

  /** The CSRF token of the page at `path` (fetched now, so bound to the session this jar holds). */
  async csrf(path = '/signin'): Promise<string> {
    const page = await this.request('GET', path);
    const token = /name="_csrf" value="([^"]+)"/.exec(page.body)?.[1];
    if (!token) throw new Error(`no CSRF token on ${path} (${page.status})`);
    return token;
  }

  /** Posts the form of `path` with the token of the page at `from`. */
  async post(path: string, form: Record<string, string>, from = '/devices'): Promise<PageAnswer> {
    return this.request('POST', path, { _csrf: await this.csrf(from), ...form });
  }

  /** Password sign-in; the answer (303 to /devices when it worked). */
  signIn(user: string, password: string): Promise<PageAnswer> {
    return this.post('/signin', { user, password }, '/signin');
  }
}
