import { describe, expect, test } from 'vitest';
import type { StartedGuest } from '../../src/guest/started-guest.ts';
import { DETECT_SCRIPT } from '../../src/inspect/detect.ts';
import type { ExecOutput, GuestExecutor } from '../../src/inspect/executor.ts';
import { quoteArgv } from '../../src/util/shell-quote.ts';
import { registerGuestMatchers, versionMatches } from '../../src/vitest/matchers.ts';

const out = (stdout: string, exitCode = 0, stderr = ''): ExecOutput => ({ stdout, stderr, exitCode });

/** A guest that answers from a table keyed by the command line ("sudo " first when run as root). */
function tableGuest(name: string, table: Record<string, ExecOutput>): GuestExecutor {
  return {
    name,
    async exec(argv, options = {}) {
      const key = `${options.sudo ? 'sudo ' : ''}${quoteArgv(argv)}`;
      const answer = argv[2] === DETECT_SCRIPT ? table.detect : table[key];
      if (!answer) throw new Error(`the fake guest has no answer for: ${key}`);
      return answer;
    },
  };
}

const show = (props: string) => out(props.split(' ').join('\n') + '\n');

const debian = tableGuest('deb-vm', {
  detect: out('dpkg-query=/usr/bin/dpkg-query\nsystemctl=/usr/bin/systemctl\njournalctl=/usr/bin/journalctl\nss=/usr/bin/ss\ngetent=/usr/bin/getent\nsystemd=running\n'),
  '/usr/bin/systemctl show -p LoadState -p ActiveState -p SubState -p Result nginx': show('Result=success LoadState=loaded ActiveState=active SubState=running'),
  '/usr/bin/systemctl show -p LoadState -p ActiveState -p SubState -p Result broken': show('Result=exit-code LoadState=loaded ActiveState=failed SubState=failed'),
  'sudo /usr/bin/systemctl status --no-pager -l -n 0 broken': out('× broken.service - Broken on purpose\n     Active: failed (Result: exit-code)\n', 3),
  'sudo /usr/bin/journalctl -u broken -n 30 --no-pager -o short-precise': out('Mar 01 10:00:00.123456 deb-vm broken[77]: config error on line 3\n'),
  '/usr/bin/ss -Hlntu': out(
    'udp   UNCONN 0      0            0.0.0.0:68        0.0.0.0:*\n' +
      'tcp   LISTEN 0      128          0.0.0.0:22        0.0.0.0:*\n' +
      'tcp   LISTEN 0      128             [::]:22           [::]:*\n' +
      'tcp   LISTEN 0      511        127.0.0.1:80        0.0.0.0:*\n',
  ),
  "sudo stat -c '%a|%U|%G|%F|%s' -- /etc/nginx/nginx.conf": out('644|root|root|regular file|1447\n'),
  'sudo cat -- /etc/nginx/nginx.conf': out('user www-data;\nworker_processes auto;\nevents {}\n'),
  "sudo stat -c '%a|%U|%G|%F|%s' -- /srv/www": out('2775|www-data|www-data|directory|4096\n'),
  "sudo stat -c '%a|%U|%G|%F|%s' -- /etc/missing": out('', 1, "stat: cannot statx '/etc/missing': No such file or directory\n"),
  "/usr/bin/dpkg-query -W -f '${Status}\\t${Version}\\n' nginx": out('install ok installed\t1.22.1-9\n'),
  "/usr/bin/dpkg-query -W -f '${Status}\\t${Version}\\n' vim": out('install ok installed\t2:9.0.1378-2\n'),
  "/usr/bin/dpkg-query -W -f '${Status}\\t${Version}\\n' apache2": out('', 1, 'dpkg-query: no packages found matching apache2\n'),
  '/usr/bin/getent passwd alice': out('alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash\n'),
  'id -nG alice': out('alice sudo users\n'),
  '/usr/bin/getent passwd ghost': out('', 2),
});

const alpine = tableGuest('alp-vm', {
  detect: out('apk=/sbin/apk\nrc-service=/sbin/rc-service\nnetstat=/bin/netstat\n'),
  'sudo /sbin/rc-service sshd status': out(' * status: started\n'),
  'sudo /sbin/rc-service nginx status': out('', 32, ' * status: crashed\n'),
  'sudo tail -n 2000 /var/log/messages': out('Mar  1 10:00:00 alp-vm daemon.err nginx[99]: [emerg] bind() to 0.0.0.0:80 failed\nMar  1 10:00:01 alp-vm cron.info crond[5]: ok\n'),
  '/bin/netstat -lntu': out('Active Internet connections (only servers)\nProto Recv-Q Send-Q Local Address Foreign Address State\ntcp 0 0 :::22 :::* LISTEN\nudp 0 0 0.0.0.0:68 0.0.0.0:*\n'),
  '/sbin/apk -v info -e nginx': out('nginx-1.24.0-r15\n'),
  'cat /etc/passwd': out('root:x:0:0:root:/root:/bin/ash\nnginx:x:100:101:nginx:/var/lib/nginx:/sbin/nologin\n'),
  'id -nG nginx': out('nginx www-data\n'),
});

/** The message of the assertion error the promise rejects with. */
async function failure(assertion: Promise<unknown>): Promise<string> {
  const error = await assertion.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(error instanceof Error)) throw new Error('expected the assertion to fail, but it passed');
  return error.message;
}

describe('toHaveActiveUnit', () => {
  test('passes for an active systemd unit and a started OpenRC service', async () => {
    await expect(debian).toHaveActiveUnit('nginx');
    await expect(alpine).toHaveActiveUnit('sshd');
  });

  test('a failed systemd unit: its states, its status and its journal lines', async () => {
    const message = await failure(expect(debian).toHaveActiveUnit('broken'));
    expect(message).toMatch(/^expected guest deb-vm to have broken active, but it is not \(ActiveState=failed, SubState=failed, Result=exit-code\)\n/);
    expect(message).toContain('× broken.service - Broken on purpose');
    expect(message).toContain('config error on line 3');
  });

  test('a crashed OpenRC service: its status and the log lines that name it', async () => {
    const message = await failure(expect(alpine).toHaveActiveUnit('nginx'));
    expect(message).toContain('expected guest alp-vm to have nginx active, but it is not (status: crashed)');
    expect(message).toContain('bind() to 0.0.0.0:80 failed');
    expect(message).not.toContain('crond');
  });

  test('.not', async () => {
    await expect(debian).not.toHaveActiveUnit('broken');
    expect(await failure(expect(debian).not.toHaveActiveUnit('nginx'))).toBe(
      'expected guest deb-vm not to have nginx active, but it is (ActiveState=active, SubState=running, Result=success)',
    );
  });
});

describe('toListenOn', () => {
  test('TCP by default, UDP on request, any address unless one is given', async () => {
    await expect(debian).toListenOn(22);
    await expect(debian).toListenOn(68, { protocol: 'udp' });
    await expect(debian).toListenOn(22, { address: '::' });
    await expect(debian).toListenOn(22, { address: '[::]' });
    await expect(alpine).toListenOn(22, { address: '::' });
  });

  test('a failure lists what does listen', async () => {
    expect(await failure(expect(debian).toListenOn(8080))).toBe(
      'expected guest deb-vm to listen on tcp port 8080, but it listens on: udp 0.0.0.0:68, tcp 0.0.0.0:22, tcp [::]:22, tcp 127.0.0.1:80',
    );
    expect(await failure(expect(debian).toListenOn(80, { address: '0.0.0.0' }))).toContain('to listen on tcp port 80 on 0.0.0.0, but it listens on');
    expect(await failure(expect(debian).toListenOn(22, { protocol: 'udp' }))).toContain('to listen on udp port 22');
  });

  test('.not names the sockets found', async () => {
    await expect(debian).not.toListenOn(80, { address: '0.0.0.0' });
    expect(await failure(expect(debian).not.toListenOn(22))).toBe('expected guest deb-vm not to listen on tcp port 22, but it does: tcp 0.0.0.0:22, tcp [::]:22');
  });

  test.each([
    [0, 'Expected `port` to be a positive integer, got 0 (number)'],
    [70000, 'Expected `port` to be at most 65535, got 70000'],
    ['22', 'Expected `port` to be a positive integer, got "22" (string)'],
  ])('refuses port %j', async (port, message) => {
    await expect(expect(debian).toListenOn(port as number)).rejects.toThrow(message);
  });

  test('refuses an unknown protocol or option', async () => {
    await expect(expect(debian).toListenOn(22, { protocol: 'sctp' as 'tcp' })).rejects.toThrow("Expected `protocol` to be one of 'tcp', 'udp', got \"sctp\" (string)");
    await expect(expect(debian).toListenOn(22, { host: '::' } as object)).rejects.toThrow('Unknown option `host`');
  });
});

describe('toHaveFile', () => {
  test('passes on existence, type, mode (number or text), owner, group and content', async () => {
    await expect(debian).toHaveFile('/etc/nginx/nginx.conf');
    await expect(debian).toHaveFile('/etc/nginx/nginx.conf', { type: 'file', mode: 0o644, owner: 'root', group: 'root' });
    await expect(debian).toHaveFile('/etc/nginx/nginx.conf', { mode: '0644', contains: 'user www-data;' });
    await expect(debian).toHaveFile('/etc/nginx/nginx.conf', { mode: '644', contains: /^worker_processes \w+;$/m });
    await expect(debian).toHaveFile('/srv/www', { type: 'directory', mode: '2775', owner: 'www-data' });
  });

  test('a missing file', async () => {
    expect(await failure(expect(debian).toHaveFile('/etc/missing', { mode: 0o600 }))).toBe('expected guest deb-vm to have file /etc/missing (mode 0600), but it does not exist');
    await expect(debian).not.toHaveFile('/etc/missing');
  });

  test('every mismatch is named, with what the file is', async () => {
    const message = await failure(expect(debian).toHaveFile('/etc/nginx/nginx.conf', { mode: 0o600, owner: 'www-data', group: 'root' }));
    expect(message).toBe(
      'expected guest deb-vm to have file /etc/nginx/nginx.conf (mode 0600, owner www-data, group root), ' +
        'but its mode is 0644, not 0600; its owner is root, not www-data (file, mode 0644, owner root:root, 1447 bytes)',
    );
  });

  test('content that does not match shows the start of the file', async () => {
    const message = await failure(expect(debian).toHaveFile('/etc/nginx/nginx.conf', { contains: 'listen 443' }));
    expect(message).toContain('but its content does not contain "listen 443"');
    expect(message).toContain('--- /etc/nginx/nginx.conf (first 20 lines) ---\nuser www-data;\nworker_processes auto;');
  });

  test('a directory has no content to search', async () => {
    expect(await failure(expect(debian).toHaveFile('/srv/www', { contains: 'x' }))).toContain('it is a directory, which has no content to search');
  });

  test('a failure carries actual and expected for the diff; .not does not', async () => {
    const error = await expect(debian)
      .toHaveFile('/srv/www', { type: 'file', mode: 0o755 })
      .catch((e: unknown) => e);
    expect(error).toMatchObject({ actual: { type: 'directory', mode: '2775' }, expected: { type: 'file', mode: '0755' } });
    const negated = await expect(debian)
      .not.toHaveFile('/srv/www', { type: 'directory' })
      .catch((e: unknown) => e);
    expect(negated).toMatchObject({ message: 'expected guest deb-vm not to have file /srv/www (type directory), but it does (directory, mode 2775, owner www-data:www-data, 4096 bytes)' });
    expect((negated as { actual?: unknown }).actual).toBeUndefined();
  });

  test('refuses a bad mode, type or contains before touching the guest', async () => {
    await expect(expect(debian).toHaveFile('/etc/x', { mode: '0999' })).rejects.toThrow('Expected `mode` to be a permission mode such as 0o644 or "0644", got "0999" (string)');
    await expect(expect(debian).toHaveFile('/etc/x', { type: 'dir' as 'directory' })).rejects.toThrow('Expected `type` to be one of');
    await expect(expect(debian).toHaveFile('/etc/x', { contains: 42 as unknown as string })).rejects.toThrow('Expected `contains` to be a string or a RegExp, got 42 (number)');
    await expect(expect(debian).toHaveFile('etc/x')).rejects.toThrow('absolute path');
  });
});

describe('toHavePackage', () => {
  test('installed, in any version or a matching one', async () => {
    await expect(debian).toHavePackage('nginx');
    await expect(debian).toHavePackage('nginx', { version: '1.22.1-9' });
    await expect(debian).toHavePackage('nginx', { version: '1.22.1' });
    await expect(debian).toHavePackage('nginx', { version: /^1\.22\./ });
    await expect(debian).toHavePackage('vim', { version: '9.0.1378' });
    await expect(alpine).toHavePackage('nginx', { version: '1.24.0' });
  });

  test('not installed names the package manager', async () => {
    expect(await failure(expect(debian).toHavePackage('apache2'))).toBe('expected guest deb-vm to have package apache2 installed, but it is not installed (dpkg)');
    await expect(debian).not.toHavePackage('apache2');
  });

  test('another version names the installed one', async () => {
    expect(await failure(expect(debian).toHavePackage('nginx', { version: '1.22' }))).toBe(
      'expected guest deb-vm to have package nginx "1.22" installed, but 1.22.1-9 is installed (dpkg)',
    );
    expect(await failure(expect(alpine).toHavePackage('nginx', { version: /^1\.26/ }))).toContain('but 1.24.0-r15 is installed (apk)');
    expect(await failure(expect(debian).not.toHavePackage('nginx'))).toBe('expected guest deb-vm not to have package nginx installed, but 1.22.1-9 is installed (dpkg)');
  });

  test.each([
    ['1.22.1-9', '1.22.1-9', true],
    ['1.22.1-9', '1.22.1', true],
    ['1.22.1-9', '1.22', false],
    ['1.22.1-9', '22.1', false],
    ['2:9.0.1378-2', '9.0.1378-2', true],
    ['2:9.0.1378-2', '2:9.0.1378-2', true],
    ['2:9.0.1378-2', '9.0.1378', true],
    ['1.24.0-1.fc39', '1.24.0', true],
    ['1.24.0-r15', '1.24.0-r15', true],
  ])('versionMatches(%s, %s) is %s', (installed, wanted, matches) => {
    expect(versionMatches(installed, wanted)).toBe(matches);
  });
});

describe('toHaveUser', () => {
  test('exists, with uid, home, shell and (some of) its groups', async () => {
    await expect(debian).toHaveUser('alice');
    await expect(debian).toHaveUser('alice', { uid: 1000, home: '/home/alice', shell: '/bin/bash', groups: ['sudo'] });
    await expect(alpine).toHaveUser('nginx', { groups: ['www-data', 'nginx'], shell: '/sbin/nologin' });
  });

  test('every mismatch is named, with what the user is', async () => {
    expect(await failure(expect(debian).toHaveUser('alice', { groups: ['sudo', 'docker', 'adm'], shell: '/bin/zsh' }))).toBe(
      'expected guest deb-vm to have user alice (shell /bin/zsh, in sudo, docker, adm), ' +
        'but its shell is /bin/bash, not /bin/zsh; it is not in docker, adm ' +
        '(uid 1000, gid 1000, home /home/alice, shell /bin/bash, groups alice sudo users)',
    );
  });

  test('a missing user, and .not', async () => {
    expect(await failure(expect(debian).toHaveUser('ghost'))).toBe('expected guest deb-vm to have user ghost, but there is no such user');
    await expect(debian).not.toHaveUser('ghost');
    expect(await failure(expect(debian).not.toHaveUser('alice'))).toContain('expected guest deb-vm not to have user alice, but it does (uid 1000');
  });
});

describe('toSucceed', () => {
  test('passes on exit code 0, synchronously or on a promise', async () => {
    expect(out('ok\n')).toSucceed();
    await expect(Promise.resolve(out('ok\n'))).toSucceed();
  });

  test('a failure shows the exit code and the tails of stderr and stdout', () => {
    const lines = Array.from({ length: 30 }, (_, i) => `line ${i}`).join('\n');
    const run = () => expect(out(`${lines}\n`, 2, 'ls: cannot access /nope: No such file or directory\n')).toSucceed();
    expect(run).toThrow(
      'expected the command to succeed, but it exited with code 2\n--- stderr (last lines) ---\nls: cannot access /nope: No such file or directory\n--- stdout (last lines) ---\nline 10\n',
    );
  });

  test('a timed-out command fails even with exit code 0', () => {
    expect(() => expect({ ...out(''), timedOut: true }).toSucceed()).toThrow('expected the command to succeed, but it timed out (exit code 0)');
    expect(() => expect({ ...out('', 255), signal: 'KILL' }).toSucceed()).toThrow('but it was killed by KILL');
  });

  test('.not, and a promise that fails', async () => {
    expect(out('', 1)).not.toSucceed();
    expect(() => expect(out('done\n')).not.toSucceed()).toThrow('expected the command to fail, but it exited with code 0\n--- stdout (last lines) ---\ndone');
    expect(await failure(expect(Promise.resolve(out('', 3))).toSucceed())).toBe('expected the command to succeed, but it exited with code 3');
  });

  test('something other than an exec result is refused', async () => {
    expect(() => expect('ok').toSucceed()).toThrow('toSucceed() expects the result of exec() ({ exitCode, stdout, stderr }) or a promise of one, got "ok" (string)');
    await expect(expect(Promise.resolve(0)).toSucceed()).rejects.toThrow('toSucceed() expects the result of exec()');
  });
});

describe('registration and received values', () => {
  test('registerGuestMatchers can be called again', () => {
    registerGuestMatchers();
    registerGuestMatchers();
    expect(out('')).toSucceed();
  });

  test('a guest matcher on something that is not a guest says what it expects', async () => {
    await expect(expect({ name: 'x' }).toHaveActiveUnit('nginx')).rejects.toThrow(
      'toHaveActiveUnit() expects a guest (an object with `name` and `exec()`, such as a StartedGuest), got an object',
    );
  });

  test('the matchers are typed', () => {
    // Only compiled, never run: tsc (npm run typecheck) fails if the declarations drift.
    const typed = async () => {
      // @ts-expect-error the port is a number
      await expect(debian).toListenOn('22');
      // @ts-expect-error no such protocol
      await expect(debian).toListenOn(22, { protocol: 'sctp' });
      // @ts-expect-error mode is a number or text
      await expect(debian).toHaveFile('/etc/x', { mode: true });
      // @ts-expect-error groups is a list
      await expect(debian).toHaveUser('x', { groups: 'sudo' });
      const guest: GuestExecutor = {} as StartedGuest; // a StartedGuest is an executor as it is
      await expect(guest).toHaveActiveUnit('nginx');
      const sync: void = expect(out('')).toSucceed();
      const async: Promise<void> = expect(Promise.resolve(out(''))).toSucceed();
      return [sync, async];
    };
    expect(typeof typed).toBe('function');
  });
});
