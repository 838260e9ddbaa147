/**
 * The account page's routes. Every POST passes the CSRF check first; every device route acts on the signed-in
 * account's own devices only (a device id is looked up among them, so another account's id is "no such
 * device"); every change is logged with who made it, how they signed in, and from where.
 */
import type { TLSSocket } from 'node:tls';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { clientText, type Logger } from '../logging/logger.ts';
import type { ChangeBudget } from './change-budget.ts';
import type { PolicyGeneration } from '../policy/generation.ts';
import type { AuthFailureLimiter } from '../auth/failure-limiter.ts';
import { userKey } from '../auth/users-file.ts';
import type { Config, ListenerConfig } from '../config/schema.ts';
import { chainEmailConstraints, chainIssuers, type TrustedIssuers } from '../certificates/index.ts';
import { clientAddress } from '../addresses/socket-address.ts';
import { parseReason, type RevocationReason } from '../pki/index.ts';
import type { WhenLocked } from '../pki/atomic-file.ts';
import type { Session, SessionBook } from './sessions.ts';
import { checkPassword, presentedCertificate, sessionStands, type PresentedCertificate } from './sign-in.ts';
import type { CompromisedSessions } from './compromised-sessions.ts';
import type { RevokedHere } from './revoked-here.ts';
import { refusedReloadOf } from '../reload/reload-status.ts';
import {
  AccountError, SessionEnded, accountDevices, addAccountKey, canIssue, findDevice, issueAccountDevice, retireAccountDevice, type AccountContext,
} from './account-devices.ts';
import { STYLE, devicesPage, errorPage, issuedPage, signInPage } from './pages.ts';
import { envKnob } from '../config/env-knob.ts';

export const SESSION_COOKIE = '__Host-postern-session';
const COOKIE = { path: '/', secure: true, httpOnly: true, sameSite: 'strict' } as const;
/** Reasons a user may give on the page (the CLI has them all). */
/**
 * How long one of accounts.sessionMinutes' minutes lasts. POSTERN_SESSION_MINUTE_MS sets another: a test that must
 * see an idle session end shortens it rather than wait a real minute.
 */
const SESSION_MINUTE_MS = envKnob('POSTERN_SESSION_MINUTE_MS', 60_000);
const PAGE_REASONS = new Set<RevocationReason>(['cessationOfOperation', 'keyCompromise', 'superseded']);

export interface AccountsState {
  generation(): PolicyGeneration;
  /** The `accounts` section in force. */
  settings(): NonNullable<Config['accounts']>;
  listener(): ListenerConfig;
  limiter: AuthFailureLimiter;
  log: Logger;
  sessions: SessionBook;
  /** Accounts whose device was revoked as lost or stolen elsewhere (postern pki revoke): their sessions end. */
  compromised: CompromisedSessions;
  /** Devices each account may still add this hour (accounts.deviceAdditionsPerHour). */
  additions: ChangeBudget;
  /** The listener's CAs and CRLs as last loaded (reload replaces it). */
  trust: TrustedIssuers;
  /** Certificates and keys taken back on the page: refused at once, before a reload brings the CRL or pins without them. */
  revokedHere: RevokedHere;
}

/** An uploaded file of a multipart form, when one was chosen. */
function file(body: unknown, name: string): Buffer | null {
  const v = (body as Record<string, unknown> | null)?.[name];
  return Buffer.isBuffer(v) && v.length ? v : null;
}

/** A form field as text; a repeated or missing field is empty. */
function field(body: unknown, name: string): string {
  const v = (body as Record<string, unknown> | null)?.[name];
  return typeof v === 'string' ? v : '';
}
const html = (reply: FastifyReply, status: number, body: string): FastifyReply => reply.code(status).type('text/html; charset=utf-8').send(body);

export function accountRoutes(state: AccountsState) {
  return async function routes(app: FastifyInstance): Promise<void> {
    const ip = (req: FastifyRequest): string => clientAddress(req.raw.socket);
    const csrfFor = (req: FastifyRequest, reply: FastifyReply): string => reply.generateCsrf({ userInfo: req.cookies[SESSION_COOKIE] ?? 'signed-out' });
    const ctx = (): AccountContext => ({ config: state.generation().config, listener: state.listener() });
    // Refused here in memory all the same, and the CRL or pin table already changed: said, not the change undone.
    const notKept = (by: string, device: string) => (err: Error): void =>
      state.log.error({ by, device, err: { message: err.message } }, 'account page: cannot keep what it took back in the data directory: a restart of the server forgets it until the CRL or pin table in force has it');

    /** Sessions of accounts whose device was revoked as lost or stolen elsewhere since the last look end. */
    const endCompromised = (): void => {
      for (const identity of state.compromised.newlyCompromised(state.generation().revokedDevices)) {
        const signedOut = state.sessions.endOthers(identity, '');
        state.log.info({ identity, signedOut }, 'account page: a device of this account was revoked as lost or stolen: its sessions ended');
      }
    };
    /** `s` still stands by the users file, pin table, CRLs and rules in force; if not, it is ended. */
    const stands = (req: FastifyRequest, s: Session): boolean => {
      if (!state.revokedHere.refuses(s.certificate?.peer) && sessionStands(s, state.listener(), state.generation(), state.trust)) return true;
      state.log.info({ identity: s.identity, via: s.via, client: ip(req) }, 'account page: session ended (its password or certificate is no longer valid)');
      state.sessions.end(s.id);
      return false;
    };
    /** The signed-in session of this request, if it still stands. */
    const sessionOf = (req: FastifyRequest): Session | null => {
      endCompromised();
      const s = state.sessions.get(req.cookies[SESSION_COOKIE], state.settings().sessionMinutes * SESSION_MINUTE_MS);
      return s && stands(req, s) ? s : null;
    };
    /**
     * Throws SessionEnded unless `s` still stands: it was checked when the request came in, and a password reset, a
     * sign-out or a revocation as lost or stolen may have come between, while the change waited for its turn or for
     * a folder's lock (up to 15 s behind `postern pki`, or the revocation that ends this very session).
     */
    const stillSignedIn = (req: FastifyRequest, s: Session) => (): void => {
      endCompromised();
      if (!state.sessions.has(s.id) || !stands(req, s)) throw new SessionEnded();
    };
    /**
     * `change`, run when the account's earlier additions are done (ChangeBudget), only if `s` still stands then, and
     * given the same check to make once it holds the lock of what it changes.
     */
    const whileSignedIn = <T>(req: FastifyRequest, s: Session, change: (whenLocked: WhenLocked) => Promise<T>) => async (): Promise<T> => {
      const check = stillSignedIn(req, s);
      check();
      return change(check);
    };
    const changeLog = (s: Session, req: FastifyRequest, facts: object, what: string): void => {
      state.log.info({ by: s.identity, via: s.via, client: ip(req), ...facts }, `account page: ${what}`);
    };

    /** The connection's certificate and the account it names; one revoked here names none, whatever the CRL in force says yet. */
    const presentedBy = (req: FastifyRequest): PresentedCertificate | null => {
      const p = presentedCertificate(req.raw.socket as TLSSocket, state.listener(), state.generation(), state.trust);
      if (!p || !state.revokedHere.refuses(p.certificate)) return p;
      return { ...p, identity: null, via: null, certificate: { ...p.certificate, verified: false, verifyError: 'revoked', verifyErrorCode: 'CERT_REVOKED' } };
    };
    const signIn = (req: FastifyRequest, reply: FastifyReply, status: number, error?: string, user?: string): FastifyReply => {
      const presented = presentedBy(req);
      return html(reply, status, signInPage({
        csrf: csrfFor(req, reply), error, user,
        certificateIdentity: presented?.identity ?? null,
        certificateProblem: presented && !presented.identity ? presented.certificate.verifyError ?? 'not registered' : null,
      }));
    };
    const devices = async (req: FastifyRequest, reply: FastifyReply, s: Session, status = 200, error?: string, notice?: string): Promise<FastifyReply> => {
      const c = ctx();
      const port = Number(c.listener.listen.slice(c.listener.listen.lastIndexOf(':') + 1));
      return html(reply, status, devicesPage({
        identity: s.identity, csrf: csrfFor(req, reply), devices: await accountDevices(c, s.identity), error, notice,
        server: { host: c.config.hostname, port, tls: c.listener.tls.mode === 'implicit' ? 'TLS' : 'STARTTLS' },
        canIssue: canIssue(c), canPin: !!c.listener.certificateIdentity.pins,
      }));
    };
    /** The new session's cookie; the one this browser had before is ended, not left alive behind it. */
    const startSession = (req: FastifyRequest, reply: FastifyReply, s: Session): FastifyReply => {
      const before = req.cookies[SESSION_COOKIE];
      if (before) state.sessions.end(before);
      return reply.setCookie(SESSION_COOKIE, s.id, COOKIE).redirect('/devices', 303);
    };

    /** Runs `fn` for a signed-in request; otherwise back to the sign-in page. */
    const signedIn = (fn: (req: FastifyRequest, reply: FastifyReply, s: Session) => Promise<FastifyReply>) =>
      async (req: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> => {
        const s = sessionOf(req);
        if (!s) return reply.redirect('/signin', 303);
        try {
          return await fn(req, reply, s);
        } catch (err) {
          if (err instanceof AccountError) {
            if (err.why) state.log.warn({ by: s.identity, client: ip(req) }, `account page: ${err.why}`);
            return devices(req, reply, s, 400, err.message);
          }
          if (err instanceof SessionEnded) return reply.redirect('/signin', 303);
          throw err;
        }
      };
    const protect = { preHandler: app.csrfProtection };

    app.get('/style.css', async (_req, reply) => reply.type('text/css').send(STYLE));
    app.get('/', async (req, reply) => reply.redirect(sessionOf(req) ? '/devices' : '/signin', 303));
    app.get('/signin', async (req, reply) => signIn(req, reply, 200));

    app.post('/signin', protect, async (req, reply) => {
      const user = userKey(field(req.body, 'user').trim());
      const users = state.generation().users;
      const outcome = await checkPassword(state.limiter, state.listener(), users, ip(req), user, field(req.body, 'password'),
        { store: state.generation().store, log: state.log });
      if (outcome === 'account-deferred') {
        state.log.info({ user: clientText(user), client: ip(req) }, 'account page: sign-in deferred, too many failed guesses at this account (limits.authFailuresPerAccount)');
        return signIn(req, reply, 429, 'Too many failed sign-ins to this account: try again later, or sign in with your certificate.', user);
      }
      if (outcome === 'too-many') {
        state.log.warn({ user: clientText(user), client: ip(req) }, 'account page: sign-in refused, too many authentication failures from this address');
        return signIn(req, reply, 429, 'Too many failed sign-ins from your address: try again later.', user);
      }
      if (outcome === 'wrong') {
        state.log.info({ user: clientText(user), client: ip(req) }, 'account page: sign-in failed (wrong account or password)');
        return signIn(req, reply, 401, 'Wrong account or password.', user);
      }
      const s = state.sessions.create(user, 'password', null, users.get(user));
      state.log.info({ identity: s.identity, via: 'password', client: ip(req) }, 'account page: signed in');
      return startSession(req, reply, s);
    });

    app.post('/signin/certificate', protect, async (req, reply) => {
      const presented = presentedBy(req);
      if (!presented?.identity) return signIn(req, reply, 401, 'Your browser presented no certificate that names an account here.');
      const c = presented.certificate;
      const socket = req.raw.socket as TLSSocket;
      const s = state.sessions.create(presented.identity, 'certificate', {
        serial: c.serial, pem: c.pem, pinSha256: c.pin.sha256, by: presented.via!, anchor: presented.anchor, trust: presented.trust,
        issuers: chainIssuers(socket), notAfter: c.notAfter, peer: c, emailConstraints: chainEmailConstraints(socket),
      });
      state.log.info({ identity: s.identity, via: 'certificate', by: presented.via, serial: c.serial, client: ip(req) }, 'account page: signed in');
      return startSession(req, reply, s);
    });

    app.post('/signout', protect, async (req, reply) => {
      const s = sessionOf(req);
      if (s) {
        state.sessions.end(s.id);
        state.log.info({ identity: s.identity, client: ip(req) }, 'account page: signed out');
      }
      return reply.clearCookie(SESSION_COOKIE, COOKIE).redirect('/signin', 303);
    });

    app.get('/devices', signedIn((req, reply, s) => devices(req, reply, s)));

    /** The 429 page of an addition over accounts.deviceAdditionsPerHour. */
    const overAdditions = (req: FastifyRequest, reply: FastifyReply, s: Session, action: string): Promise<FastifyReply> => {
      state.log.warn({ by: s.identity, client: ip(req), action, limit: state.settings().deviceAdditionsPerHour },
        'account page: refused a device addition, accounts.deviceAdditionsPerHour used up for this account');
      return devices(req, reply, s, 429, `Your account has added ${state.settings().deviceAdditionsPerHour} devices within the last hour: try again later. Revoking and removing devices still work.`);
    };

    app.post('/devices/issue', protect, signedIn(async (req, reply, s) => {
      const device = field(req.body, 'device').trim();
      const issued = await state.additions.add(s.identity, whileSignedIn(req, s, (whenLocked) => issueAccountDevice(ctx(), s.identity, device, state.settings().issueDays, whenLocked)));
      if (!issued) return overAdditions(req, reply, s, 'issue');
      const fileName = `${s.identity.replace(/[^A-Za-z0-9._-]/g, '_')}-${device}.p12`;
      const download = state.sessions.offer(s.id, fileName, issued.p12, { device, serial: issued.record.serial, notAfter: issued.record.notAfter, password: issued.p12Password });
      changeLog(s, req, { action: 'issue', device, serial: issued.record.serial, pin: issued.facts.pin.sha256Base64Url, notAfter: issued.record.notAfter }, 'device certificate issued');
      // Post, redirect, get: reloading the page that shows the password must not issue another certificate.
      return reply.redirect(`/devices/issued/${download}`, 303);
    }));

    app.get('/devices/issued/:token', signedIn(async (req, reply, s) => {
      const download = (req.params as { token: string }).token;
      // HEAD (a download manager's or a link checker's first look) shows nothing and spends nothing.
      const shown = req.method === 'HEAD' ? state.sessions.peek(s.id, download) : state.sessions.show(s.id, download);
      if (!shown) return html(reply, 404, errorPage(404, 'Nothing to show: the certificate was issued in another session, or more than ten minutes ago.'));
      return html(reply, 200, issuedPage({ ...shown, download }));
    }));

    app.get('/devices/download/:token', signedIn(async (req, reply, s) => {
      const t = (req.params as { token: string }).token;
      // HEAD learns the file's type and name, and leaves the one download to the GET.
      const d = req.method === 'HEAD' ? state.sessions.peek(s.id, t) : state.sessions.take(s.id, t);
      if (!d) return html(reply, 404, errorPage(404, 'This download is gone: it can be fetched once, within ten minutes, by the session that issued it.'));
      if (req.method !== 'HEAD') changeLog(s, req, { action: 'download', file: d.fileName }, 'PKCS#12 downloaded');
      return reply.type('application/x-pkcs12').header('content-disposition', `attachment; filename="${d.fileName}"`).send(d.p12);
    }));

    app.post('/devices/add', protect, signedIn(async (req, reply, s) => {
      const device = field(req.body, 'device').trim();
      const entry = await state.additions.add(s.identity, whileSignedIn(req, s, (whenLocked) => addAccountKey(ctx(), s.identity, device, file(req.body, 'file') ?? field(req.body, 'key'), whenLocked)));
      if (!entry) return overAdditions(req, reply, s, 'pin');
      await state.revokedHere.registered(entry.pinSha256, s.identity).catch(notKept(s.identity, device)); // a key this account removed as lost or stolen, found again
      changeLog(s, req, { action: 'pin', device, pin: entry.pinBase64Url }, 'device key registered');
      return devices(req, reply, s, 200, undefined, `Device ${device} registered: its certificate is accepted from its next connection.`);
    }));

    for (const action of ['revoke', 'remove'] as const) {
      app.post(`/devices/:id/${action}`, protect, signedIn(async (req, reply, s) => {
        const id = (req.params as { id: string }).id;
        const device = await findDevice(ctx(), s.identity, id);
        if (!device) {
          state.log.warn({ by: s.identity, client: ip(req), action, device: id }, 'account page: refused a change to a device not of this account');
          return html(reply, 404, errorPage(404, 'No such device on your account.'));
        }
        let reason: RevocationReason = 'cessationOfOperation';
        const asked = field(req.body, 'reason');
        if (asked) {
          try { reason = parseReason(asked); } catch { throw new AccountError(`Unknown reason "${asked}".`); }
          if (!PAGE_REASONS.has(reason)) throw new AccountError(`Unknown reason "${asked}".`);
        }
        const check = stillSignedIn(req, s);
        const change = await retireAccountDevice(ctx(), device, reason, () => {
          check();
          // Known before the reload that shows it, so that this session is not ended with the others. Only now, as it
          // is made: a revocation that fails before (a lock not given up, a session ended) left it marked, and the
          // administrator's own revocation of it as stolen then ended none of the account's sessions.
          if (reason === 'keyCompromise' && device.kind === 'issued' && device.serial) state.compromised.revokedHere(device.serial);
        });
        // Lost or stolen, a certificate revoked or a key of the device's own removed: every other session of the account
        // ends (a browser left signed in on that laptop by password would otherwise go on issuing itself devices as fast
        // as they are revoked).
        const stolen = (change.revoked || change.unpinned) && reason === 'keyCompromise';
        // Refused here from now on: the CRL or pin table without it comes in with a reload, later or (reloads refused) not yet.
        if (stolen || (change.revoked && !device.fingerprintSha256)) await state.revokedHere.stolen(device.pinSha256, s.identity).catch(notKept(s.identity, device.name));
        else if (change.revoked) await state.revokedHere.revoked(device.fingerprintSha256!).catch(notKept(s.identity, device.name));
        const signedOut = stolen ? state.sessions.endOthers(s.identity, s.id) : undefined;
        changeLog(s, req, { action, device: device.name, serial: device.serial, pin: device.pin, revoked: change.revoked, unpinned: change.unpinned, reason: change.revoked || stolen ? reason : undefined, signedOut },
          change.revoked ? 'device certificate revoked' : 'device key removed');
        // A change comes into force on the SMTP listeners with the reload it causes: while reloads are refused (a
        // half-edited file), the server keeps the CRL and pins from before, and the device still sends mail.
        const refused = await refusedReloadOf(ctx().config.dataDir);
        if (refused) state.log.warn({ by: s.identity, action, device: device.name, reloadError: refused[0] }, 'account page: a revocation waits for the server\'s refused reload to be fixed');
        const inForce = refused
          ? '. The server has not taken this in yet: its configuration has an error, and until the administrator fixes it, the device can still send mail. Tell the administrator.'
          : ': its next connection is refused.';
        return devices(req, reply, s, 200, undefined, `Device ${device.name} ${change.revoked ? 'revoked' : 'removed'}${inForce}${stolen ? ' Your account is signed out everywhere else.' : ''}`);
      }));
    }
  };
}
