import { spawnSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, test } from 'vitest';
import { GuestCommandError, InspectError } from '../../src/errors.ts';
import { DETECT_SCRIPT, detectTools, parseDetection } from '../../src/inspect/detect.ts';
import { type ExecOutput, type GuestExecutor } from '../../src/inspect/executor.ts';
import { fileContains, fileInfo, parseStat, statArgv } from '../../src/inspect/files.ts';
import {
  packageInfo,
  packageQueryArgv,
  parseApkInfo,
  parseDpkgQuery,
  parseRpmQuery,
  splitApkPackage,
  upstreamVersion,
} from '../../src/inspect/packages.ts';
import { formatSocket, listeningSockets, parseEndpoint, parseNetstat, parseSs } from '../../src/inspect/sockets.ts';
import { describeUnitState, parseRcServiceStatus, parseSystemctlShow, unitDiagnostics, unitState } from '../../src/inspect/units.ts';
import { findPasswdEntry, parseGetentPasswd, parseIdGroups, userInfo } from '../../src/inspect/users.ts';

const out = (stdout: string, exitCode = 0, stderr = ''): ExecOutput => ({ stdout, stderr, exitCode });

// What DETECT_SCRIPT prints on each family of guest.
const DETECTED = {
  debian: 'dpkg-query=/usr/bin/dpkg-query\nsystemctl=/usr/bin/systemctl\njournalctl=/usr/bin/journalctl\nss=/usr/bin/ss\ngetent=/usr/bin/getent\nsystemd=running\n',
  fedora: 'rpm=/usr/bin/rpm\nsystemctl=/usr/bin/systemctl\njournalctl=/usr/bin/journalctl\nss=/usr/sbin/ss\ngetent=/usr/bin/getent\nsystemd=running\n',
  alpine: 'apk=/sbin/apk\nrc-service=/sbin/rc-service\nnetstat=/bin/netstat\n',
};

type Call = { argv: string[]; sudo: boolean };

/** A guest that answers the detection script with `detected` and everything else through `answer`. */
function fakeGuest(detected: string, answer: (argv: string[], sudo: boolean) => ExecOutput = () => out('', 127, 'not in the fake')) {
  const calls: Call[] = [];
  const guest: GuestExecutor = {
    name: 'fake-vm',
    async exec(argv, options = {}) {
      calls.push({ argv, sudo: options.sudo ?? false });
      return argv[0] === 'sh' && argv[2] === DETECT_SCRIPT ? out(detected) : answer(argv, options.sudo ?? false);
    },
  };
  return { guest, calls };
}

function runOnHost(argv: string[]): ExecOutput {
  const result = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' } });
  return { stdout: result.stdout, stderr: result.stderr, exitCode: result.status ?? -1 };
}

const onHost = (tool: string) => spawnSync('sh', ['-c', 'command -v "$1"', 'sh', tool]).status === 0;

describe('detection', () => {
  test('picks the package manager, the service manager and the socket tool per distribution', () => {
    expect(parseDetection(DETECTED.debian)).toMatchObject({ packageManager: 'dpkg', serviceManager: 'systemd', socketTool: 'ss' });
    expect(parseDetection(DETECTED.fedora)).toMatchObject({ packageManager: 'rpm', serviceManager: 'systemd', socketTool: 'ss', paths: { ss: '/usr/sbin/ss' } });
    expect(parseDetection(DETECTED.alpine)).toMatchObject({ packageManager: 'apk', serviceManager: 'openrc', socketTool: 'netstat', paths: { apk: '/sbin/apk' } });
  });

  test('systemctl without a running systemd (a container, a chroot) is not a service manager', () => {
    expect(parseDetection('systemctl=/usr/bin/systemctl\n').serviceManager).toBeUndefined();
    expect(parseDetection('systemctl=/usr/bin/systemctl\nrc-service=/sbin/rc-service\n').serviceManager).toBe('openrc');
  });

  test('dpkg wins over rpm, ss over netstat; unknown keys and non-absolute paths are ignored', () => {
    const tools = parseDetection('rpm=/usr/bin/rpm\ndpkg-query=/usr/bin/dpkg-query\nnetstat=/bin/netstat\nss=/bin/ss\nrm=/bin/rm\ngetent=getent\n');
    expect(tools).toMatchObject({ packageManager: 'dpkg', socketTool: 'ss' });
    expect(tools.paths).toEqual({ rpm: '/usr/bin/rpm', 'dpkg-query': '/usr/bin/dpkg-query', netstat: '/bin/netstat', ss: '/bin/ss' });
  });

  test('nothing found is nothing detected', () => {
    expect(parseDetection('')).toEqual({ packageManager: undefined, serviceManager: undefined, socketTool: undefined, paths: {} });
  });

  test.each(['sh', 'dash', 'bash'].filter(onHost))('the script runs under %s and prints absolute paths', (shell) => {
    const result = runOnHost([shell, '-c', DETECT_SCRIPT]);
    expect(result).toMatchObject({ exitCode: 0, stderr: '' });
    const tools = parseDetection(result.stdout);
    for (const tool of ['ss', 'getent', 'dpkg-query'].filter(onHost)) expect(tools.paths[tool]).toMatch(/^\//);
  });

  test('runs once per executor, even for concurrent callers, and again after a failure', async () => {
    const { guest, calls } = fakeGuest(DETECTED.debian);
    await Promise.all([detectTools(guest), detectTools(guest), detectTools(guest)]);
    expect(calls).toHaveLength(1);

    let fail = true;
    const flaky: GuestExecutor = { name: 'flaky', exec: async () => (fail ? out('', 1, 'sh: broken') : out(DETECTED.alpine)) };
    await expect(detectTools(flaky)).rejects.toThrow(GuestCommandError);
    fail = false;
    await expect(detectTools(flaky)).resolves.toMatchObject({ packageManager: 'apk' });
  });

  test('a guest without the tool needed gets an InspectError that says what was looked for', async () => {
    const { guest } = fakeGuest('getent=/usr/bin/getent\n');
    await expect(packageInfo(guest, 'nginx')).rejects.toThrow(InspectError);
    await expect(packageInfo(guest, 'nginx')).rejects.toThrow('Guest fake-vm has no package manager guestlab can use (looked for dpkg-query, rpm, apk)');
    await expect(unitState(guest, 'nginx')).rejects.toThrow('looked for systemd, OpenRC');
    await expect(listeningSockets(guest)).rejects.toThrow('looked for ss, netstat');
  });
});

describe('packages', () => {
  test('argv per package manager, with the tool path found by detection', () => {
    expect(packageQueryArgv('dpkg', '/usr/bin/dpkg-query', 'nginx')).toEqual(['/usr/bin/dpkg-query', '-W', '-f', '${Status}\\t${Version}\\n', 'nginx']);
    expect(packageQueryArgv('rpm', '/usr/bin/rpm', 'nginx')).toEqual(['/usr/bin/rpm', '-q', '--qf', '%{VERSION}-%{RELEASE}\\n', 'nginx']);
    expect(packageQueryArgv('apk', '/sbin/apk', 'nginx')).toEqual(['/sbin/apk', '-v', 'info', '-e', 'nginx']);
  });

  test.each([
    ['installed', out('install ok installed\t1.22.1-9\n'), { installed: true, version: '1.22.1-9' }],
    ['held', out('hold ok installed\t2:9.0.1378-2\n'), { installed: true, version: '2:9.0.1378-2' }],
    ['removed, configuration kept', out('deinstall ok config-files\t1.22.1-9\n'), { installed: false }],
    ['half-installed', out('install reinstreq half-installed\t1.22.1-9\n'), { installed: false }],
    ['known, never installed', out('unknown ok not-installed\t\n'), { installed: false }],
    ['unknown', out('', 1, 'dpkg-query: no packages found matching nginx\n'), { installed: false }],
    ['multiarch, one architecture installed', out('deinstall ok config-files\t2.36-9\ninstall ok installed\t2.36-9+deb12u4\n'), { installed: true, version: '2.36-9+deb12u4' }],
  ])('dpkg-query: %s', (_, output, expected) => {
    expect(parseDpkgQuery(output)).toEqual({ ...expected, manager: 'dpkg' });
  });

  test('dpkg-query output that is not the requested format is not guessed at', () => {
    expect(parseDpkgQuery(out('ii  nginx  1.22.1-9  amd64  small web server\n'))).toBeUndefined();
    expect(parseDpkgQuery(out('', 2, 'dpkg-query: error: --show needs at least one package name argument\n'))).toBeUndefined();
  });

  test.each([
    ['installed', out('1.24.0-1.fc39\n'), { installed: true, version: '1.24.0-1.fc39' }],
    ['several versions (kernels): the first', out('6.8.5-301.fc40\n6.8.9-300.fc40\n'), { installed: true, version: '6.8.5-301.fc40' }],
    ['not installed', out('package nginx is not installed\n', 1), { installed: false }],
  ])('rpm -q: %s', (_, output, expected) => {
    expect(parseRpmQuery(output)).toEqual({ ...expected, manager: 'rpm' });
  });

  test('rpm failing for another reason is not "not installed"', () => {
    expect(parseRpmQuery(out('', 1, 'error: rpmdb: BDB0113 Thread/process 1234 failed: Thread died in Berkeley DB library\n'))).toBeUndefined();
  });

  test.each([
    ['installed', out('nginx-1.24.0-r15\n'), { installed: true, version: '1.24.0-r15' }],
    ['a name with dashes and digits', out('font-adobe-100dpi-1.0.4-r0\n'), { installed: true, version: '1.0.4-r0' }],
    ['apk-tools without -v output', out('nginx\n'), { installed: true }],
    ['not installed', out('', 1), { installed: false }],
  ])('apk -v info -e: %s', (_, output, expected) => {
    expect(parseApkInfo(output)).toEqual({ ...expected, manager: 'apk' });
  });

  test.each([
    ['nginx-1.24.0-r15', { name: 'nginx', version: '1.24.0-r15' }],
    ['font-adobe-100dpi-1.0.4-r0', { name: 'font-adobe-100dpi', version: '1.0.4-r0' }],
    ['py3-cryptography-41.0.7-r0', { name: 'py3-cryptography', version: '41.0.7-r0' }],
    ['ca-certificates-20240226-r0', { name: 'ca-certificates', version: '20240226-r0' }],
    ['gtk+3.0-3.24.41-r0', { name: 'gtk+3.0', version: '3.24.41-r0' }],
    ['busybox-1.36.1_p2', { name: 'busybox', version: '1.36.1_p2' }],
    ['py3-foo', { name: 'py3-foo' }],
    ['nginx', { name: 'nginx' }],
  ])('splitApkPackage(%s)', (text, expected) => {
    expect(splitApkPackage(text)).toEqual(expected);
  });

  test.each([
    ['1.22.1-9', '1.22.1'],
    ['2:9.0.1378-2', '9.0.1378'],
    ['1.24.0-1.fc39', '1.24.0'],
    ['1.24.0-r15', '1.24.0'],
    ['5.2.15-2+b8', '5.2.15'],
    ['20230311', '20230311'],
  ])('upstreamVersion(%s) is %s', (version, upstream) => {
    expect(upstreamVersion(version)).toBe(upstream);
  });

  test('packageInfo runs the detected tool with the name as its own argument', async () => {
    const { guest, calls } = fakeGuest(DETECTED.alpine, () => out('nginx-1.24.0-r15\n'));
    await expect(packageInfo(guest, 'nginx')).resolves.toEqual({ installed: true, version: '1.24.0-r15', manager: 'apk' });
    expect(calls.at(-1)).toEqual({ argv: ['/sbin/apk', '-v', 'info', '-e', 'nginx'], sudo: false });
  });

  test.each(['', 'nginx*', '-nginx', 'two words', 'a;b', '$(id)'])('packageInfo refuses the name %j before running anything', async (name) => {
    const { guest, calls } = fakeGuest(DETECTED.debian);
    await expect(packageInfo(guest, name)).rejects.toThrow(TypeError);
    expect(calls).toHaveLength(0);
  });

  test('an unexpected failure is a GuestCommandError with the command, the guest and the stderr', async () => {
    const { guest } = fakeGuest(DETECTED.debian, () => out('', 2, 'dpkg-query: error: parsing file /var/lib/dpkg/status near line 12\n'));
    const error = await packageInfo(guest, 'nginx').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(GuestCommandError);
    expect(error).toMatchObject({ exitCode: 2, command: "/usr/bin/dpkg-query -W -f '${Status}\\t${Version}\\n' nginx" });
    expect((error as Error).message).toContain('in guest fake-vm');
    expect((error as Error).message).toContain('parsing file /var/lib/dpkg/status');
  });

  test.skipIf(!onHost('dpkg-query'))('the real dpkg-query on this host agrees with the parser', () => {
    const argv = packageQueryArgv('dpkg', 'dpkg-query', 'dpkg');
    expect(parseDpkgQuery(runOnHost(argv))).toMatchObject({ installed: true, version: expect.stringMatching(/^\d/) });
    expect(parseDpkgQuery(runOnHost(packageQueryArgv('dpkg', 'dpkg-query', 'guestlab-no-such-package')))).toEqual({ installed: false, manager: 'dpkg' });
  });
});

describe('listening sockets', () => {
  const SS = [
    'udp   UNCONN 0      0          127.0.0.53%lo:53        0.0.0.0:*          ',
    'udp   UNCONN 0      0       10.0.2.15%enp0s3:68        0.0.0.0:*          ',
    'udp   UNCONN 0      0      [fe80::5054:ff:fe12:3456]%enp0s3:546           [::]:*          ',
    'tcp   LISTEN 0      4096       127.0.0.53%lo:53        0.0.0.0:*          ',
    'tcp   LISTEN 0      128              0.0.0.0:22        0.0.0.0:*          ',
    'tcp   LISTEN 0      128                 [::]:22           [::]:*          ',
    'tcp   LISTEN 0      511                    *:80              *:*          ',
    'tcp   LISTEN 0      4096    [::ffff:127.0.0.1]:8080            *:*          ',
    '',
  ].join('\n');

  test('ss -Hlntu: IPv4, IPv6 in brackets, "*", interface suffixes', () => {
    expect(parseSs(out(SS))).toEqual([
      { protocol: 'udp', address: '127.0.0.53', port: 53 },
      { protocol: 'udp', address: '10.0.2.15', port: 68 },
      { protocol: 'udp', address: 'fe80::5054:ff:fe12:3456', port: 546 },
      { protocol: 'tcp', address: '127.0.0.53', port: 53 },
      { protocol: 'tcp', address: '0.0.0.0', port: 22 },
      { protocol: 'tcp', address: '::', port: 22 },
      { protocol: 'tcp', address: '*', port: 80 },
      { protocol: 'tcp', address: '::ffff:127.0.0.1', port: 8080 },
    ]);
  });

  test('ss with nothing listening, and ss failing', () => {
    expect(parseSs(out(''))).toEqual([]);
    expect(parseSs(out('', 255, 'ss: invalid option -- H\n'))).toBeUndefined();
  });

  test('netstat -lntu from busybox: one "tcp" for both families, ":::22" for IPv6', () => {
    const busybox = [
      'Active Internet connections (only servers)',
      'Proto Recv-Q Send-Q Local Address           Foreign Address         State       ',
      'tcp        0      0 0.0.0.0:22              0.0.0.0:*               LISTEN      ',
      'tcp        0      0 127.0.0.1:25            0.0.0.0:*               LISTEN      ',
      'tcp        0      0 :::22                   :::*                    LISTEN      ',
      'tcp        0      0 :::80                   :::*                    LISTEN      ',
      'udp        0      0 0.0.0.0:68              0.0.0.0:*                           ',
      '',
    ].join('\n');
    expect(parseNetstat(out(busybox))).toEqual([
      { protocol: 'tcp', address: '0.0.0.0', port: 22 },
      { protocol: 'tcp', address: '127.0.0.1', port: 25 },
      { protocol: 'tcp', address: '::', port: 22 },
      { protocol: 'tcp', address: '::', port: 80 },
      { protocol: 'udp', address: '0.0.0.0', port: 68 },
    ]);
  });

  test('netstat -lntu from net-tools: tcp6/udp6, a truncated IPv6 address keeps its port', () => {
    const netTools = [
      'Active Internet connections (only servers)',
      'Proto Recv-Q Send-Q Local Address           Foreign Address         State      ',
      'tcp        0      0 0.0.0.0:22              0.0.0.0:*               LISTEN     ',
      'tcp6       0      0 :::22                   :::*                    LISTEN     ',
      'udp        0      0 0.0.0.0:68              0.0.0.0:*                          ',
      'udp6       0      0 fe80::5054:ff:fe12:546  :::*                               ',
      '',
    ].join('\n');
    expect(parseNetstat(out(netTools))).toEqual([
      { protocol: 'tcp', address: '0.0.0.0', port: 22 },
      { protocol: 'tcp', address: '::', port: 22 },
      { protocol: 'udp', address: '0.0.0.0', port: 68 },
      { protocol: 'udp', address: 'fe80::5054:ff:fe12', port: 546 },
    ]);
    expect(parseNetstat(out('Active Internet connections (only servers)\nProto Recv-Q Send-Q Local Address Foreign Address State\n'))).toEqual([]);
  });

  test.each([
    ['0.0.0.0:22', { address: '0.0.0.0', port: 22 }],
    ['[::]:22', { address: '::', port: 22 }],
    ['*:22', { address: '*', port: 22 }],
    ['127.0.0.53%lo:53', { address: '127.0.0.53', port: 53 }],
    ['[fe80::1%eth0]:546', { address: 'fe80::1', port: 546 }],
    [':::22', { address: '::', port: 22 }],
  ])('parseEndpoint(%s)', (text, expected) => {
    expect(parseEndpoint(text)).toEqual(expected);
  });

  test.each(['0.0.0.0:*', '22', ':22', 'host:'])('parseEndpoint(%s) is not an endpoint', (text) => {
    expect(parseEndpoint(text)).toBeUndefined();
  });

  test('formatSocket brackets IPv6 addresses', () => {
    expect(formatSocket({ protocol: 'tcp', address: '::', port: 22 })).toBe('tcp [::]:22');
    expect(formatSocket({ protocol: 'udp', address: '0.0.0.0', port: 68 })).toBe('udp 0.0.0.0:68');
  });

  test('listeningSockets uses netstat where there is no ss', async () => {
    const { guest, calls } = fakeGuest(DETECTED.alpine, () => out('Active Internet connections (only servers)\ntcp 0 0 0.0.0.0:22 0.0.0.0:* LISTEN\n'));
    await expect(listeningSockets(guest)).resolves.toEqual([{ protocol: 'tcp', address: '0.0.0.0', port: 22 }]);
    expect(calls.at(-1)?.argv).toEqual(['/bin/netstat', '-lntu']);
  });

  test.skipIf(!onHost('ss'))('the real ss on this host agrees with the parser', () => {
    expect(parseSs(runOnHost(['ss', '-Hlntu']))).toEqual(expect.any(Array));
  });
});

describe('files', () => {
  test.each([
    ['a file', '644|root|root|regular file|1447\n', { type: 'file', mode: 0o644, owner: 'root', group: 'root', size: 1447 }],
    ['an empty file', '640|root|adm|regular empty file|0\n', { type: 'file', mode: 0o640, owner: 'root', group: 'adm', size: 0 }],
    ['setuid', '4755|root|root|regular file|281624\n', { type: 'file', mode: 0o4755, owner: 'root', group: 'root', size: 281624 }],
    ['sticky directory', '1777|root|root|directory|4096\n', { type: 'directory', mode: 0o1777, owner: 'root', group: 'root', size: 4096 }],
    ['symbolic link', '777|root|root|symbolic link|33\n', { type: 'symlink', mode: 0o777, owner: 'root', group: 'root', size: 33 }],
    ['socket', '666|root|root|socket|0\n', { type: 'other', mode: 0o666, owner: 'root', group: 'root', size: 0 }],
    ['unnamed owner', '600|UNKNOWN|UNKNOWN|regular file|5\n', { type: 'file', mode: 0o600, owner: 'UNKNOWN', group: 'UNKNOWN', size: 5 }],
  ])('stat: %s', (_, stdout, expected) => {
    expect(parseStat(out(stdout))).toEqual({ exists: true, ...expected });
  });

  test.each([
    ['GNU coreutils 9', "stat: cannot statx '/etc/nope': No such file or directory\n"],
    ['GNU coreutils 8', "stat: cannot stat '/etc/nope': No such file or directory\n"],
    ['busybox', "stat: can't stat '/etc/nope': No such file or directory\n"],
    ['a file as a directory', "stat: cannot statx '/etc/passwd/x': Not a directory\n"],
  ])('stat, missing path (%s)', (_, stderr) => {
    expect(parseStat(out('', 1, stderr))).toEqual({ exists: false });
  });

  test('stat failing otherwise, or printing another format, is not guessed at', () => {
    expect(parseStat(out('', 1, 'sudo: a password is required\n'))).toBeUndefined();
    expect(parseStat(out('  File: /etc/passwd\n  Size: 1447\n'))).toBeUndefined();
  });

  test('the path goes after "--", as its own argument, with sudo', async () => {
    expect(statArgv('/etc/x y')).toEqual(['stat', '-c', '%a|%U|%G|%F|%s', '--', '/etc/x y']);
    const { guest, calls } = fakeGuest(DETECTED.debian, () => out('600|root|root|regular file|3\n'));
    await fileInfo(guest, '/root/$(id)');
    expect(calls).toEqual([{ argv: ['stat', '-c', '%a|%U|%G|%F|%s', '--', '/root/$(id)'], sudo: true }]);
  });

  test('fileInfo refuses a relative path', async () => {
    const { guest } = fakeGuest(DETECTED.debian);
    await expect(fileInfo(guest, 'etc/passwd')).rejects.toThrow('Expected `path` to be an absolute path in the guest, got "etc/passwd" (string)');
  });

  test('fileContains reads with cat as root and matches on the host, strings and RegExps (even /g)', async () => {
    const { guest, calls } = fakeGuest(DETECTED.debian, () => out('server {\n  listen 80;\n}\n'));
    await expect(fileContains(guest, '/etc/nginx/sites-enabled/default', 'listen 80;')).resolves.toBe(true);
    await expect(fileContains(guest, '/etc/nginx/sites-enabled/default', 'listen 443')).resolves.toBe(false);
    const global = /listen \d+/g;
    await expect(fileContains(guest, '/etc/nginx/sites-enabled/default', global)).resolves.toBe(true);
    await expect(fileContains(guest, '/etc/nginx/sites-enabled/default', global)).resolves.toBe(true);
    expect(calls.at(-1)).toEqual({ argv: ['cat', '--', '/etc/nginx/sites-enabled/default'], sudo: true });
  });

  test('fileContains on a missing file throws GuestCommandError', async () => {
    const { guest } = fakeGuest(DETECTED.debian, () => out('', 1, 'cat: /nope: No such file or directory\n'));
    await expect(fileContains(guest, '/nope', 'x')).rejects.toThrow(GuestCommandError);
  });

  test('the real stat on this host agrees with the parser', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'guestlab-stat-'));
    try {
      await fs.writeFile(path.join(dir, 'file'), 'hello');
      await fs.chmod(path.join(dir, 'file'), 0o640);
      await fs.symlink('file', path.join(dir, 'link'));
      const user = os.userInfo().username;
      expect(parseStat(runOnHost(statArgv(path.join(dir, 'file'))))).toMatchObject({ exists: true, type: 'file', mode: 0o640, owner: user, size: 5 });
      expect(parseStat(runOnHost(statArgv(path.join(dir, 'link'))))).toMatchObject({ exists: true, type: 'symlink' });
      expect(parseStat(runOnHost(statArgv(dir)))).toMatchObject({ exists: true, type: 'directory' });
      expect(parseStat(runOnHost(statArgv(path.join(dir, 'missing'))))).toEqual({ exists: false });
      expect(parseStat(runOnHost(statArgv(path.join(dir, 'file', 'below'))))).toEqual({ exists: false });
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});

describe('users', () => {
  const PASSWD = [
    'root:x:0:0:root:/root:/bin/ash',
    'nginx:x:100:101:nginx:/var/lib/nginx:/sbin/nologin',
    'alice:x:1000:1000:Alice Liddell,,,:/home/alice:/bin/sh',
    '',
  ].join('\n');

  test('getent passwd: the entry, or null for exit 2', () => {
    expect(parseGetentPasswd(out('nginx:x:101:101:nginx user,,,:/nonexistent:/usr/sbin/nologin\n'), 'nginx')).toEqual({
      name: 'nginx', uid: 101, gid: 101, home: '/nonexistent', shell: '/usr/sbin/nologin',
    });
    expect(parseGetentPasswd(out('', 2), 'nobody-here')).toBeNull();
    expect(parseGetentPasswd(out('', 1, 'Unknown database: passwd\n'), 'x')).toBeUndefined();
  });

  test('/etc/passwd searched on the host, where there is no getent', () => {
    expect(findPasswdEntry(out(PASSWD), 'alice')).toEqual({ name: 'alice', uid: 1000, gid: 1000, home: '/home/alice', shell: '/bin/sh' });
    expect(findPasswdEntry(out(PASSWD), 'ali')).toBeNull();
  });

  test('id -nG: names, primary group first', () => {
    expect(parseIdGroups(out('alice sudo users\n'))).toEqual(['alice', 'sudo', 'users']);
    expect(parseIdGroups(out('', 1, "id: 'alice': no such user\n"))).toBeUndefined();
  });

  test('userInfo on Alpine without getent reads /etc/passwd, then id', async () => {
    const { guest, calls } = fakeGuest(DETECTED.alpine, (argv) => (argv[0] === 'cat' ? out(PASSWD) : out('nginx www-data\n')));
    await expect(userInfo(guest, 'nginx')).resolves.toEqual({ exists: true, name: 'nginx', uid: 100, gid: 101, home: '/var/lib/nginx', shell: '/sbin/nologin', groups: ['nginx', 'www-data'] });
    expect(calls.slice(1).map((c) => c.argv)).toEqual([['cat', '/etc/passwd'], ['id', '-nG', 'nginx']]);
  });

  test('userInfo with getent: a missing user is not looked up further', async () => {
    const { guest, calls } = fakeGuest(DETECTED.debian, () => out('', 2));
    await expect(userInfo(guest, 'ghost')).resolves.toEqual({ exists: false });
    expect(calls.slice(1).map((c) => c.argv)).toEqual([['/usr/bin/getent', 'passwd', 'ghost']]);
  });

  test.each(['0', '1000', '-x', 'a b', ''])('userInfo refuses %j (a uid would be looked up as a number)', async (name) => {
    const { guest } = fakeGuest(DETECTED.debian);
    await expect(userInfo(guest, name)).rejects.toThrow(TypeError);
  });

  test.skipIf(!onHost('getent'))('the real getent and id on this host agree with the parsers', () => {
    expect(parseGetentPasswd(runOnHost(['getent', 'passwd', 'root']), 'root')).toMatchObject({ name: 'root', uid: 0, gid: 0 });
    expect(parseGetentPasswd(runOnHost(['getent', 'passwd', 'guestlab-no-such-user']), 'guestlab-no-such-user')).toBeNull();
    expect(parseIdGroups(runOnHost(['id', '-nG', 'root']))).toContain('root');
  });
});

describe('units', () => {
  const show = (props: string) => out(props.split(' ').join('\n') + '\n');

  test.each([
    ['running', 'Result=success LoadState=loaded ActiveState=active SubState=running', { active: true, state: 'active', subState: 'running', result: 'success', loadState: 'loaded', loaded: true }],
    ['failed', 'Result=exit-code LoadState=loaded ActiveState=failed SubState=failed', { active: false, state: 'failed', subState: 'failed', result: 'exit-code', loadState: 'loaded', loaded: true }],
    ['missing', 'Result=success LoadState=not-found ActiveState=inactive SubState=dead', { active: false, state: 'inactive', subState: 'dead', result: 'success', loadState: 'not-found', loaded: false }],
    ['masked', 'Result=success LoadState=masked ActiveState=inactive SubState=dead', { active: false, state: 'inactive', subState: 'dead', result: 'success', loadState: 'masked', loaded: false }],
    ['reloading', 'Result=success LoadState=loaded ActiveState=reloading SubState=reload', { active: true, state: 'reloading', subState: 'reload', result: 'success', loadState: 'loaded', loaded: true }],
    ['a target (no Result)', 'LoadState=loaded ActiveState=active SubState=active', { active: true, state: 'active', subState: 'active', loadState: 'loaded', loaded: true }],
  ])('systemctl show: %s', (_, props, expected) => {
    expect(parseSystemctlShow(show(props))).toEqual({ manager: 'systemd', ...expected });
  });

  test('systemctl show refusing the name is not guessed at', () => {
    expect(parseSystemctlShow(out('', 1, 'Failed to get properties: Unit name x@ is not valid.\n'))).toBeUndefined();
  });

  test.each([
    ['started', out(' * status: started\n'), { active: true, state: 'started', loaded: true }],
    ['stopped', out(' * status: stopped\n', 3), { active: false, state: 'stopped', loaded: true }],
    ['crashed', out('', 32, ' * status: crashed\n'), { active: false, state: 'crashed', loaded: true }],
    ['coloured', out('\x1b[32;01m*\x1b[0m status: started\n'), { active: true, state: 'started', loaded: true }],
    ['a custom status(): the exit code', out('nginx is up\n', 0), { active: true, state: 'started', loaded: true }],
    ['missing', out('', 1, " * rc-service: service `nginxx' does not exist\n"), { active: false, state: 'not-found', loaded: false }],
  ])('rc-service status: %s', (_, output, expected) => {
    expect(parseRcServiceStatus(output)).toEqual({ manager: 'openrc', ...expected });
  });

  test('describeUnitState says what systemd or OpenRC said', () => {
    expect(describeUnitState(parseSystemctlShow(show('Result=exit-code LoadState=loaded ActiveState=failed SubState=failed'))!)).toBe('ActiveState=failed, SubState=failed, Result=exit-code');
    expect(describeUnitState(parseSystemctlShow(show('LoadState=not-found ActiveState=inactive SubState=dead'))!)).toBe('ActiveState=inactive, SubState=dead, LoadState=not-found');
    expect(describeUnitState(parseRcServiceStatus(out('', 32, ' * status: crashed\n'))!)).toBe('status: crashed');
    expect(describeUnitState(parseRcServiceStatus(out('', 1, " * rc-service: service `x' does not exist\n"))!)).toBe('no such service');
  });

  test('unitState runs systemctl show on systemd and rc-service (as root) on OpenRC', async () => {
    const debian = fakeGuest(DETECTED.debian, () => show('LoadState=loaded ActiveState=active SubState=running'));
    await unitState(debian.guest, 'getty@tty1.service');
    expect(debian.calls.at(-1)).toEqual({
      argv: ['/usr/bin/systemctl', 'show', '-p', 'LoadState', '-p', 'ActiveState', '-p', 'SubState', '-p', 'Result', 'getty@tty1.service'],
      sudo: false,
    });
    const alpine = fakeGuest(DETECTED.alpine, () => out(' * status: started\n'));
    await expect(unitState(alpine.guest, 'sshd')).resolves.toMatchObject({ manager: 'openrc', active: true });
    expect(alpine.calls.at(-1)).toEqual({ argv: ['/sbin/rc-service', 'sshd', 'status'], sudo: true });
  });

  test.each(['-nginx', 'nginx service', 'ngi*', ''])('unitState refuses %j', async (name) => {
    await expect(unitState(fakeGuest(DETECTED.debian).guest, name)).rejects.toThrow(TypeError);
  });

  test('systemd diagnostics: status and journal, as root, each under its command', async () => {
    const { guest, calls } = fakeGuest(DETECTED.debian, (argv) =>
      argv[1] === 'status'
        ? out('× nginx.service - A high performance web server\n     Active: failed (Result: exit-code)\n', 3)
        : out('Mar 01 10:00:00.123456 vm nginx[412]: nginx: [emerg] unknown directive "lisen"\n'),
    );
    const text = await unitDiagnostics(guest, 'nginx');
    expect(text).toContain('--- sudo /usr/bin/systemctl status --no-pager -l -n 0 nginx ---\n× nginx.service');
    expect(text).toContain('--- sudo /usr/bin/journalctl -u nginx -n 30 --no-pager -o short-precise ---\nMar 01');
    expect(calls.slice(1).every((c) => c.sudo)).toBe(true);
  });

  test('OpenRC diagnostics: status and the lines of /var/log/messages that name the service, filtered on the host', async () => {
    const messages = Array.from({ length: 100 }, (_, i) => `Mar  1 10:00:00 vm ${i % 2 ? 'nginx' : 'crond'}[1]: line ${i}`).join('\n');
    const { guest, calls } = fakeGuest(DETECTED.alpine, (argv) => (argv[0] === 'tail' ? out(messages) : out('', 32, ' * status: crashed\n')));
    const text = await unitDiagnostics(guest, 'nginx');
    expect(text).toContain(' * status: crashed');
    expect(text).not.toContain('crond');
    // The last 30 of the 50 nginx lines: 41, 43, ... 99.
    expect(text).toContain('nginx[1]: line 41\n');
    expect(text).not.toContain('line 39');
    expect(text.trimEnd().endsWith('line 99')).toBe(true);
    expect(calls.slice(1).map((c) => c.argv)).toEqual([['/sbin/rc-service', 'nginx', 'status'], ['tail', '-n', '2000', '/var/log/messages']]);
  });

  test('diagnostics never throw: a part that fails says why', async () => {
    const broken: GuestExecutor = {
      name: 'broken',
      exec: async (argv) => {
        if (argv[0] === 'sh') return out(DETECTED.debian);
        throw new Error('SSH connection lost\nmore detail');
      },
    };
    await expect(unitDiagnostics(broken, 'nginx')).resolves.toContain('(unavailable: SSH connection lost)');
  });
});

describe('user input never reaches a script', () => {
  test('the only script is the fixed detection script; inputs travel as whole argv elements', async () => {
    const nasty = "x'; touch /tmp/pwned; echo '";
    const { guest, calls } = fakeGuest(DETECTED.debian, () => out('', 1, 'No such file or directory'));
    await fileInfo(guest, `/tmp/${nasty}`);
    await fileContains(guest, `/tmp/${nasty}`, 'x').catch(() => undefined);
    await unitDiagnostics(guest, 'nginx');
    const scripts = calls.filter((c) => /(^|\/)(ba|da|a)?sh$/.test(c.argv[0]!));
    expect(scripts.map((c) => c.argv)).toEqual([['sh', '-c', DETECT_SCRIPT]]);
    expect(calls.filter((c) => c.argv.some((a) => a.includes(nasty))).every((c) => c.argv.includes(`/tmp/${nasty}`))).toBe(true);
    expect(DETECT_SCRIPT).not.toMatch(/\$\{?[1-9@*]/);
  });
});
