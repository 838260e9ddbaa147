/**
 * multipart/form-data for the one form that uploads a file (a device's certificate or public key), parsed
 * by the runtime's own Fetch implementation (undici's Response.formData): no parser of our own, no extra
 * dependency. Text fields become strings, files Buffers, so CSRF and the routes read them as any form.
 */
import type { FastifyInstance } from 'fastify';

/** Largest upload: a certificate chain or key, with room to spare. */
const LIMIT = 64 * 1024;

export function acceptMultipart(app: FastifyInstance): void {
  app.addContentTypeParser('multipart/form-data', { parseAs: 'buffer', bodyLimit: LIMIT }, (req, body, done) => {
    const headers = { 'content-type': String(req.headers['content-type']) };
    void new Response(body as Buffer, { headers }).formData().then(async (data) => {
      const out: Record<string, string | Buffer> = {};
      for (const [name, value] of data) {
        out[name] = typeof value === 'string' ? value : Buffer.from(await value.arrayBuffer());
      }
      done(null, out);
    }, (err: Error) => done(Object.assign(new Error(`unreadable form: ${err.message}`), { statusCode: 400 }), undefined));
  });
}
