// `postern pki revoke` killed (SIGKILL, as an OOM kill or a power loss would stop it) between its whole-file
// writes: the CRL, the inventory, the pin table. Whatever point it died at, running it again finishes the
// revocation, the CRL never loses a revoked serial, and its number never repeats. And a write that may not
// be durable (the folder's fsync fails) is an error, not "revoked"; a table replaced by root keeps its owner.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmod, chown, cp, mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { dirname, join } from 'node:path';
import { readdirSync } from 'node:fs';
import { diskFaults, type DiskFaults } from '../helpers/disk-faults.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { useScratchDir } from '../helpers/scratch.ts';
import { postern, posternJson, run } from './helpers.ts';
import { runCli } from '../helpers/cli.ts';
import { here, hereJson } from './in-process.ts';
import { pemToDer } from '../../engine/certificates/digests.ts';
import { x509 } from '../../engine/certificates/x509-provider.ts';
import { crlNumberOf, normalizeSerial } from '../../engine/pki/inventory.ts';
import { listDevices } from '../../engine/pki/devices.ts';

const scratch = useScratchDir('postern-pki-crash-');
let pki: TestPki;
let faults: DiskFaults;

before(async () => {
  pki = await makeTestPki();
  faults = diskFaults();
});

interface Issued { certificate: { serial: string; pinSha256: string }; files: { cert: string } }

/** A CA folder made by `pki init`, a pin table, and a configuration naming both. */
async function newCaFolder(name: string): Promise<{ ca: string; pins: string; config: string }> {
  const root = join(scratch.path, name);
  await mkdir(root);
  const ca = join(root, 'ca');
  assert.equal((await postern(['pki', 'init', '--dir', ca])).code, 0);
  const pins = join(root, 'pins');
  await writeFile(pins, '# pins managed by postern pins\n');
  const config = join(root, 'postern.yaml');
  await writeFile(config, `
dataDir: ${join(root, 'data')}
localDomains: [example.com]
pki: { dir: ${ca} }
tables: { pins: ${pins} }
listeners:
  - name: pinned
    listen: 127.0.0.1:0
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request }
    auth: { mechanisms: [EXTERNAL], required: true }
    certificateIdentity: { pins: pins }
`);
  return { ca, pins, config };
}

/** A copy of the folder `from` (newCaFolder's) as `name`: the configuration names its folders by absolute path; the CA folder and the pin table name none. */
async function copyFolder(from: string, name: string): Promise<{ ca: string; pins: string; config: string }> {
  const root = join(scratch.path, name);
  await cp(from, root, { recursive: true });
  const config = join(root, 'postern.yaml');
  await writeFile(config, (await readFile(config, 'utf8')).replaceAll(from, root));
  return { ca: join(root, 'ca'), pins: join(root, 'pins'), config };
}

/** newCaFolder() made once (`pki init` is a command) and copied for each test that needs one. */
let plainFolder: Promise<string> | undefined;
async function caFolder(name: string): Promise<{ ca: string; pins: string; config: string }> {
  plainFolder ??= newCaFolder('plain').then((f) => dirname(f.config));
  return copyFolder(await plainFolder, name);
}

/**
 * caFolder() with alice's laptop issued and pinned: what the crash walks below start from. Made once (issue, pins add)
 * and copied for each test that starts from it, rather than made again each time.
 */
let laptopFolder: Promise<{ root: string; laptop: Issued }> | undefined;
async function folderWithLaptop(name: string): Promise<{ ca: string; pins: string; config: string; laptop: Issued }> {
  laptopFolder ??= (async () => {
    const f = await caFolder('with-laptop');
    const laptop = await posternJson<Issued>(['pki', 'issue', 'alice@example.com', '--device', 'laptop', '-c', f.config]);
    assert.equal((await postern(['pins', 'add', 'alice@example.com', laptop.files.cert, '--device', 'laptop', '-c', f.config])).code, 0);
    return { root: dirname(f.config), laptop };
  })();
  const { root: from, laptop } = await laptopFolder;
  return { ...await copyFolder(from, name), laptop };
}

/** The CA's CRL as on disk: its text, its number and the serials it revokes. */
async function crlOnDisk(ca: string): Promise<{ pem: string; number: number; serials: string[] }> {
  const pem = await readFile(join(ca, 'ca.crl'), 'utf8');
  const crl = new x509.X509Crl(pemToDer(pem));
  return { pem, number: crlNumberOf(crl), serials: crl.entries.map((e) => normalizeSerial(e.serialNumber)) };
}

/**
 * Every CRL the folder had, in order: a new one has a higher number (two different CRLs with one number are
 * one too many: RFC 5280 5.2.3), and a serial one of them revoked is revoked by every later one.
 */
function checkHistory(history: Array<{ pem: string; number: number; serials: string[] }>): void {
  for (let i = 1; i < history.length; i++) {
    const [a, b] = [history[i - 1]!, history[i]!];
    if (a.pem === b.pem) continue;
    assert.ok(b.number > a.number, `CRL number ${b.number} after ${a.number}: ${history.map((h) => h.number).join(', ')}`);
    for (const serial of a.serials) assert.ok(b.serials.includes(serial), `serial ${serial}, revoked by CRL ${a.number}, is not in CRL ${b.number}`);
  }
}

type Crl = Awaited<ReturnType<typeof crlOnDisk>>;
const revokeLaptop = (config: string): string[] => ['pki', 'revoke', 'alice@example.com', '--device', 'laptop', '--reason', 'keyCompromise', '-c', config];

/**
 * folderWithLaptop() as `pki revoke` left it, killed as it replaced the file ending `killedAt`, and the CRLs it had
 * before and after: killed once per point and copied (its leftovers, its lock, as they are) for each test that goes on
 * from there.
 */
const killedFolders = new Map<string, Promise<{ root: string; laptop: Issued; history: Crl[] }>>();
async function killedFolder(killedAt: string, name: string): Promise<{ ca: string; pins: string; config: string; laptop: Issued; history: Crl[] }> {
  let made = killedFolders.get(killedAt);
  if (!made) {
    made = (async () => {
      const f = await folderWithLaptop(`killed-${killedAt.slice(1)}`);
      const history = [await crlOnDisk(f.ca)];
      faults.armFor('rename-kill', killedAt);
      const killed = await postern(revokeLaptop(f.config), undefined, faults.env);
      assert.ok(faults.taken('rename-kill'), 'the command got to that write');
      assert.equal(killed.signal, 'SIGKILL', killed.stderr);
      history.push(await crlOnDisk(f.ca));
      return { root: dirname(f.config), laptop: f.laptop, history };
    })();
    killedFolders.set(killedAt, made);
  }
  const { root, laptop, history } = await made;
  return { ...await copyFolder(root, name), laptop, history: [...history] };
}

for (const [point, killedAt] of [['CRL', '/ca.crl'], ['inventory', '/issued.json'], ['pin table', '/pins']] as const) {
  for (const next of ['revoke again', 'issue another']) {
    test(`pki revoke killed as it replaces the ${point}, then ${next}: the revocation is finished, never dropped, no CRL number reused`, async () => {
      const f = await killedFolder(killedAt, `${point}-${next}`.replace(/ /g, '-'));
      const { laptop, history } = f;
      const revoke = revokeLaptop(f.config);

      // Another command comes first (a colleague's issue), or the administrator, who saw the command die, runs it again.
      // Run again as a command (its own process); the colleague's commands, the issues and the revoke after them, are
      // the commands' functions in this process (the killed process's leftovers and its lock, dead, are the same to them).
      const issue = (identity: string): Promise<Issued> => hereJson<Issued>(here.issue(identity, { device: 'phone', config: f.config, json: true }));
      if (next === 'issue another') {
        await issue('bob@example.com');
        history.push(await crlOnDisk(f.ca));
        checkHistory(history);
        await hereJson(here.revoke('alice@example.com', { device: 'laptop', reason: 'keyCompromise', config: f.config, json: true }));
      } else {
        await posternJson(revoke);
      }
      history.push(await crlOnDisk(f.ca));
      assert.ok(history.at(-1)!.serials.includes(laptop.certificate.serial), 'the CRL revokes the laptop');
      assert.doesNotMatch(await readFile(f.pins, 'utf8'), new RegExp(Buffer.from(laptop.certificate.pinSha256, 'hex').toString('base64url')), 'its key is unpinned');
      // What `pki list` shows (its rows, read here rather than by one more command).
      const listed = await listDevices(f.ca);
      assert.equal(listed.find((d) => d.serial === laptop.certificate.serial)?.status, 'revoked');
      for (const dir of [f.ca, dirname(f.pins)]) assert.deepEqual(readdirSync(dir).filter((n) => n.endsWith('.tmp')), [], `nothing left behind in ${dir}`);

      // The next change signs the CRL again from the inventory.
      await issue('carol@example.com');
      history.push(await crlOnDisk(f.ca));
      checkHistory(history);
    });
  }
}

test('pki revoke whose CRL may not be durable (the folder\'s fsync fails) says so and fails; run again, it is done', async () => {
  const f = await folderWithLaptop('fsync');
  faults.armFor('fsync-eio', '/ca');
  const r = await postern(['pki', 'revoke', 'alice@example.com', '--device', 'laptop', '-c', f.config], undefined, faults.env);
  assert.ok(faults.taken('fsync-eio'), 'the folder was synced');
  assert.equal(r.code, 1, r.stdout);
  assert.match(r.stderr, /ca\.crl: written, but its folder could not be synced to disk .*do it again/);
  assert.doesNotMatch(r.stdout, /revoked alice/);
  await hereJson(here.revoke('alice@example.com', { device: 'laptop', config: f.config, json: true })); // run again (the same function)
  assert.ok((await crlOnDisk(f.ca)).serials.includes(f.laptop.certificate.serial));
});

test('pins add/remove run as root keep the table\'s owner and mode: a server running as another user still reads it', { skip: process.getuid?.() !== 0 && 'needs root' }, async () => {
  const f = await folderWithLaptop('owner'); // alice's laptop pinned: removed, then added again
  const serverUser = { uid: 65534, gid: 65534 }; // nobody: the server's own user
  for (const dir of [scratch.path, join(scratch.path, 'owner')]) await chmod(dir, 0o755);
  await chown(f.pins, serverUser.uid, serverUser.gid);
  await chmod(f.pins, 0o640);
  // The remove as a command, the add as its function in this process (run as root all the same).
  for (const args of [['pins', 'remove', 'alice@example.com'], ['pins', 'add', 'alice@example.com', f.laptop.files.cert, '--device', 'laptop']]) {
    const r = args[1] === 'remove' ? await postern([...args, '-c', f.config]) : await here.pinsAdd('alice@example.com', f.laptop.files.cert, { device: 'laptop', config: f.config });
    assert.equal(r.code, 0, r.stderr);
    const st = await stat(f.pins);
    assert.deepEqual([st.uid, st.gid, st.mode & 0o777], [serverUser.uid, serverUser.gid, 0o640], `after ${args.slice(0, 2).join(' ')}`);
    // What the server's reload does: read the table as its user.
    await promisify(execFile)('cat', [f.pins], { ...serverUser });
  }
});

test('pki init killed between the CA key and its certificate: init again names the key left over, and works once it is deleted', async () => {
  const ca = join(scratch.path, 'init-killed');
  faults.armFor('rename-kill', '/ca.crt');
  const killed = await postern(['pki', 'init', '--dir', ca], undefined, faults.env);
  assert.ok(faults.taken('rename-kill'));
  assert.equal(killed.signal, 'SIGKILL');
  const again = await postern(['pki', 'init', '--dir', ca]);
  assert.equal(again.code, 1);
  assert.match(again.stderr, /ca\.key: exists without .*ca\.crt: an earlier "postern pki init" was stopped before it finished.*delete it and run init again/);
  await rm(join(ca, 'ca.key'));
  assert.equal((await here.init(ca)).code, 0);
  assert.ok((await crlOnDisk(ca)).number >= 1);
});

test('a CA folder lock left by a command that died, whose PID a live process has now (after a reboot): the next command takes it over', async () => {
  const { ca } = await caFolder('stale-lock');
  // This test's own process: alive, and no postern command. As an older version wrote it (PID only), and as now.
  for (const stale of [`${process.pid}`, `${process.pid} 1\n`]) {
    await writeFile(join(ca, '.lock'), stale);
    const r = await postern(['pki', 'crl', '--dir', ca]);
    assert.equal(r.code, 0, `${JSON.stringify(stale)}: ${r.stderr}`);
    assert.ok(!readdirSync(ca).includes('.lock'), 'released');
  }
});

test('pki issue run as root in a CA folder of the server\'s user: the server can still read the inventory and issue into the folder (the account page)', { skip: process.getuid?.() !== 0 && 'needs root' }, async () => {
  const f = await caFolder('issue-owner');
  const serverUser = { uid: 65534, gid: 65534 }; // nobody: the server's own user, which made the CA (pki init)
  for (const dir of [scratch.path, join(scratch.path, 'issue-owner')]) await chmod(dir, 0o755);
  await rm(join(f.ca, 'issued.json')); // as the development PKI's folder: no inventory until a command writes one
  await run('chown', ['-R', `${serverUser.uid}:${serverUser.gid}`, f.ca]);
  const r = await postern(['pki', 'issue', 'erin@example.com', '--device', 'laptop', '-c', f.config]);
  assert.equal(r.code, 0, r.stderr);
  // What the server does as its user: list the devices (the inventory), issue one (the account page).
  const out = join(scratch.path, 'issue-owner', 'phone');
  await mkdir(out);
  await chown(out, serverUser.uid, serverUser.gid);
  for (const args of [['pki', 'list'], ['pki', 'issue', 'erin@example.com', '--device', 'phone', '--out', out]]) {
    const asServer = await runCli([...args, '-c', f.config], { as: serverUser });
    assert.equal(asServer.code, 0, `${args.join(' ')} as the server's user: ${asServer.stderr}`);
  }
  for (const file of ['issued.json', 'issued', 'ca.crl']) {
    const st = await stat(join(f.ca, file));
    assert.deepEqual([st.uid, st.gid], [serverUser.uid, serverUser.gid], `${file} is the folder owner's`);
  }
});

test('pki issue run as root in a CA folder of the server\'s user: an issued/ folder swapped for a symbolic link as it is made gives that user nothing', { skip: process.getuid?.() !== 0 && 'needs root' }, async () => {
  // The server's user (after a compromise, say) may write its CA folder; root then made issued/ and chowned it by
  // name: a link swapped in between had root chown the link's target (/etc, say) to that user.
  const f = await caFolder('issue-swap');
  const serverUser = { uid: 65534, gid: 65534 };
  for (const dir of [scratch.path, join(scratch.path, 'issue-swap')]) await chmod(dir, 0o755);
  await rm(join(f.ca, 'issued'), { recursive: true, force: true });
  await run('chown', ['-R', `${serverUser.uid}:${serverUser.gid}`, f.ca]);
  const precious = join(scratch.path, 'issue-swap', 'precious'); // root's
  await mkdir(precious, { mode: 0o755 });
  faults.swapFolder('/issued', precious);
  const r = await postern(['pki', 'issue', 'erin@example.com', '--device', 'laptop', '-c', f.config], undefined, faults.env);
  assert.ok(faults.taken('mkdir-swap'), 'the folder was swapped');
  const st = await stat(precious);
  assert.deepEqual([st.uid, st.gid], [0, 0], 'the link\'s target is still root\'s');
  assert.equal(r.code, 1, 'refused: the folder is not the one made');
  assert.match(r.stderr, /issued: replaced by a symbolic link as it was made/);
  assert.deepEqual(readdirSync(precious), [], 'nothing written through the link');
});

test('pki issue as root: a --out folder (devices/ by default) that another user owns or may write is refused before anything is issued', { skip: process.getuid?.() !== 0 && 'needs root' }, async () => {
  // The server's user may write its CA folder, so it can make devices/ before root's first issue: the key and
  // .p12 root then wrote there could be swapped or removed by that user before they were handed over.
  const f = await caFolder('issue-out');
  const serverUser = { uid: 65534, gid: 65534 };
  for (const dir of [scratch.path, join(scratch.path, 'issue-out')]) await chmod(dir, 0o755);
  await run('chown', ['-R', `${serverUser.uid}:${serverUser.gid}`, f.ca]);
  const devices = join(f.ca, 'devices');
  await mkdir(devices, { mode: 0o700 });
  await chown(devices, serverUser.uid, serverUser.gid);
  const before = await readFile(join(f.ca, 'issued.json'), 'utf8').catch(() => null);
  const r = await postern(['pki', 'issue', 'erin@example.com', '--device', 'laptop', '-c', f.config]);
  assert.equal(r.code, 1, r.stdout);
  assert.equal(r.stderr, `postern: --out ${devices}: owned by uid 65534, not by this user (uid 0): the private key and .p12 written there could be swapped or removed by that user; give a folder of your own (nothing was issued)\n`);
  assert.deepEqual(readdirSync(devices), []);
  assert.equal(await readFile(join(f.ca, 'issued.json'), 'utf8').catch(() => null), before, 'nothing issued');
  // A folder of root's own, in the same CA folder, is fine.
  const mine = join(f.ca, 'mine');
  const ok = await here.issue('erin@example.com', { device: 'laptop', out: mine, config: f.config });
  assert.equal(ok.code, 0, ok.stderr);
});
