// The account page's password sign-in under limits.authFailuresPerAccount: guesses at one account spread over many
// addresses (each below authFailuresPerIp) defer that account's sign-ins from new addresses (429), not from the address
// that signed in as it before; and they count with SMTP AUTH's guesses at the account (one store). Real HTTPS with curl
// from distinct loopback addresses.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { needs } from '../helpers/example.ts';
import { useScratchDir } from '../helpers/scratch.ts';
import { PASSWORDS, USERS, startAccounts, webSignIn } from './helpers.ts';

const scratch = useScratchDir('postern-signin-account-');

test('wrong passwords for alice from three addresses: a fourth address is deferred even with her password, her own address signs in', { ...needs('curl') }, async () => {
  const setup = await startAccounts(scratch.path, { authFailuresPerIp: 3, authFailuresPerAccount: 3 });
  const jar = (n: string): string => join(scratch.path, `jar-${n}`);
  try {
    assert.equal(await webSignIn(setup.url, jar('own'), USERS.alice, PASSWORDS.alice, '127.0.0.2'), '303', 'alice signs in from her usual address');
    for (let i = 1; i <= 3; i++) assert.equal(await webSignIn(setup.url, jar(`bot${i}`), USERS.alice, `guess-${i}`, `127.0.5.${i}`), '401');
    assert.equal(await webSignIn(setup.url, jar('new'), USERS.alice, PASSWORDS.alice, '127.0.5.9'), '429', 'her password from a new address is deferred');
    assert.equal(await webSignIn(setup.url, jar('own2'), USERS.alice, PASSWORDS.alice, '127.0.0.2'), '303', 'not locked out where she signed in before');
    assert.equal(await webSignIn(setup.url, jar('bob'), USERS.bob, PASSWORDS.bob, '127.0.5.9'), '303', 'another account is not affected');
    assert.ok(setup.server.logs.some((l) => String(l.msg).startsWith('account reached limits.authFailuresPerAccount') && l.account === USERS.alice));
  } finally {
    await setup.server.stop();
  }
});

test('wrong passwords for alice sent at the same moment from many addresses: no more than authFailuresPerAccount are checked', { ...needs('curl') }, async () => {
  const dir = join(scratch.path, 'parallel'); // a server of its own: its own CA
  await mkdir(dir);
  const setup = await startAccounts(dir, { authFailuresPerIp: 3, authFailuresPerAccount: 3 });
  const jar = (n: string): string => join(dir, `jar-${n}`);
  try {
    const codes = await Promise.all(Array.from({ length: 12 }, (_, i) => webSignIn(setup.url, jar(`bot${i}`), USERS.alice, `guess-${i}`, `127.0.6.${i + 1}`)));
    assert.equal(codes.filter((c) => c === '401').length, 3, `checked: ${codes.join(' ')}`);
    assert.equal(codes.filter((c) => c === '429').length, 9);
  } finally {
    await setup.server.stop();
  }
});
