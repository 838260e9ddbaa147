/**
 * The account page's HTML: plain server-rendered forms, no script. Every value is escaped here; every form
 * that changes something carries the CSRF token.
 */
import type { AccountDevice } from './account-devices.ts';

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
export const esc = (v: unknown): string => String(v ?? '').replace(/[&<>"']/g, (c) => ESCAPES[c]!);

export const STYLE = `body{font:15px/1.45 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.35rem .5rem;border-bottom:1px solid #ddd;vertical-align:top}code{font-size:.85em;word-break:break-all}
.error{background:#fde8e8;border:1px solid #e0a0a0;padding:.6rem}.notice{background:#e8f4fd;border:1px solid #a0c4e0;padding:.6rem}
.secret{font:1.3rem monospace;background:#ffd;padding:.3rem .6rem}form.inline{display:inline}label{display:block;margin:.4rem 0}
textarea{width:100%;height:8rem;font-family:monospace}header{display:flex;justify-content:space-between;align-items:center}`;

function layout(title: string, body: string): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>${esc(title)} · Postern</title><link rel="stylesheet" href="/style.css"></head>
<body>${body}</body></html>\n`;
}

const csrfField = (token: string): string => `<input type="hidden" name="_csrf" value="${esc(token)}">`;
const message = (kind: 'error' | 'notice', text: string | undefined): string => (text ? `<p class="${kind}" role="${kind === 'error' ? 'alert' : 'status'}">${esc(text)}</p>` : '');

export interface SignInView {
  csrf: string;
  error?: string;
  /** The account the connection's client certificate names, when it names one. */
  certificateIdentity: string | null;
  /** A certificate was presented that names no account (why, for the user). */
  certificateProblem: string | null;
  user?: string;
}

export function signInPage(v: SignInView): string {
  const cert = v.certificateIdentity
    ? `<form method="post" action="/signin/certificate">${csrfField(v.csrf)}
<p>Your browser presented a certificate for <b>${esc(v.certificateIdentity)}</b>.</p>
<button type="submit" id="certificate-sign-in">Sign in with this certificate</button></form>`
    : v.certificateProblem ? `<p>Your browser presented a certificate that names no account here (${esc(v.certificateProblem)}).</p>` : '';
  return layout('Sign in', `<h1>Sign in to your mail account</h1>${message('error', v.error)}
<form method="post" action="/signin">${csrfField(v.csrf)}
<label>Account <input name="user" autocomplete="username" required value="${esc(v.user ?? '')}"></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label>
<button type="submit" id="password-sign-in">Sign in</button></form>${cert}`);
}

export interface DevicesView {
  identity: string;
  csrf: string;
  devices: AccountDevice[];
  error?: string;
  notice?: string;
  /** Where device certificates are used: host and port of the SMTP listener. */
  server: { host: string; port: number; tls: string };
  canIssue: boolean;
  canPin: boolean;
}

const when = (iso: string | null): string => (iso ? esc(iso.replace('T', ' ').replace(/\.\d+Z$/, 'Z')) : '—');

function deviceRow(d: AccountDevice, csrf: string): string {
  let action = '';
  if (d.kind === 'issued' && d.status === 'valid') {
    action = `<form method="post" class="inline" action="/devices/${esc(d.id)}/revoke">${csrfField(csrf)}
<select name="reason" aria-label="Why"><option value="cessationOfOperation">no longer used</option><option value="keyCompromise">lost or stolen</option><option value="superseded">replaced</option></select>
<button type="submit">Revoke</button></form>`;
  } else if (d.pinned) {
    // Lost or stolen here too: a device with a key of its own is lost like one with an issued certificate.
    action = `<form method="post" class="inline" action="/devices/${esc(d.id)}/remove">${csrfField(csrf)}
<select name="reason" aria-label="Why"><option value="cessationOfOperation">no longer used</option><option value="keyCompromise">lost or stolen</option></select>
<button type="submit">Remove</button></form>`;
  }
  return `<tr data-device="${esc(d.id)}"><td>${esc(d.name)}</td><td>${esc(d.status)}${d.pinned && d.kind === 'issued' ? ' (pinned)' : ''}${d.expiringSoon ? ' <b>expires soon</b>' : ''}</td>
<td><code>${esc(d.pin)}</code></td><td><code>${esc(d.serial ?? '—')}</code></td><td>${when(d.notAfter)}</td>
<td>${when(d.lastSeen)}</td><td>${esc(d.listener ?? '—')}</td><td>${action}</td></tr>`;
}

export function devicesPage(v: DevicesView): string {
  const rows = v.devices.length
    ? v.devices.map((d) => deviceRow(d, v.csrf)).join('\n')
    : '<tr><td colspan="8">No devices yet.</td></tr>';
  const issue = v.canIssue ? `<h2>Add a device: let the server issue its certificate</h2>
<p>You get a <code>.p12</code> file to import into the device's mail program, and its password. Both are shown once.</p>
<form method="post" action="/devices/issue">${csrfField(v.csrf)}
<label>Device name <input name="device" required pattern="[A-Za-z0-9._%+@-]{1,128}" placeholder="laptop"></label>
<button type="submit" id="issue">Issue a certificate</button></form>` : '';
  const pin = v.canPin ? `<h2>Add a device: register its own certificate or public key</h2>
<p>Make a key and a certificate on the device, for example:</p>
<pre><code>openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 730 \\
  -subj "/CN=${esc(v.identity)}" -keyout device.key -out device.crt
openssl pkcs12 -export -inkey device.key -in device.crt -out device.p12</code></pre>
<p>then upload <code>device.crt</code> (or the public key, PEM or DER), or paste it or its pin. Its key is registered for
your account; import <code>device.p12</code> into the device's mail program.</p>
<form method="post" action="/devices/add" enctype="multipart/form-data">${csrfField(v.csrf)}
<label>Device name <input name="device" required pattern="[A-Za-z0-9._%+@-]{1,128}" placeholder="phone"></label>
<label>Certificate or public key file <input type="file" name="file" accept=".crt,.cer,.pem,.der,.pub"></label>
<label>or paste it (PEM), or a pin <textarea name="key"></textarea></label>
<button type="submit" id="add-key">Register</button></form>` : '';
  return layout('Your devices', `<header><h1>Devices of ${esc(v.identity)}</h1>
<form method="post" action="/signout">${csrfField(v.csrf)}<button type="submit">Sign out</button></form></header>
${message('error', v.error)}${message('notice', v.notice)}
<table id="devices"><thead><tr><th>Device</th><th>Status</th><th>Pin (SHA-256, base64url)</th><th>Serial</th><th>Expires</th><th>Last seen</th><th>Listener</th><th></th></tr></thead>
<tbody>${rows}</tbody></table>
<p>Mail programs: server <b>${esc(v.server.host)}</b>${v.server.port ? `, port <b>${v.server.port}</b>` : ''} (${esc(v.server.tls)}), authentication "TLS certificate" (SASL EXTERNAL).</p>
${issue}${pin}`);
}

export interface IssuedView {
  device: string;
  serial: string;
  notAfter: string;
  /** Null once it has been shown. */
  password: string | null;
  download: string;
  fileName: string;
}

export function issuedPage(v: IssuedView): string {
  return layout('Certificate issued', `<h1>Certificate for ${esc(v.device)} issued</h1>
<p class="notice">Download it now and note the password: neither is shown again. A file not downloaded is lost; then revoke this
certificate and issue another.</p>
<p><a id="download" href="/devices/download/${esc(v.download)}" download="${esc(v.fileName)}">Download ${esc(v.fileName)}</a></p>
${v.password ? `<p>Password of the file: <span class="secret" id="p12-password">${esc(v.password)}</span></p>`
    : '<p class="error" role="alert">The password was shown once already and is not shown again.</p>'}
<p>Serial <code>${esc(v.serial)}</code>, valid until ${when(v.notAfter)}.</p>
<p><a href="/devices">Back to your devices</a></p>`);
}

export function errorPage(status: number, text: string): string {
  return layout('Error', `<h1>${status === 403 ? 'Refused' : status === 404 ? 'Not found' : status === 429 ? 'Too many attempts' : 'Error'}</h1>
${message('error', text)}<p><a href="/">Back</a></p>`);
}
