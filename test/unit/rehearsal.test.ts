// Rehearsal pieces without a guest: the inventory parser, the diff, applying a change against a
// recording fake, and QEMU's `info snapshots`.
import { describe, expect, test } from 'vitest';
import { applyChange, formatDiff, runChecks, type RehearsalGuest } from '../../src/guest/rehearsal.ts';
import { checkpointLabel } from '../../src/guest/checkpoints.ts';
import { diffInventories, parseInventory } from '../../src/guest/inventory.ts';
import { parseSnapshots } from '../../src/qemu/hmp.ts';

const SHA_A = 'a'.repeat(64);
const SHA_B = 'b'.repeat(64);
const before = parseInventory(
  [
    '@files',
    'd\t755\troot:root\t/etc\t',
    'f\t644\troot:root\t/etc/motd\t',
    'f\t644\troot:root\t/etc/resolv.conf\t',
    'l\t777\troot:root\t/etc/systemd/system/timers.target.wants/e2scrub_all.timer\t/lib/systemd/system/e2scrub_all.timer',
    '@sha256',
    `${SHA_A}  /etc/motd`,
    `${SHA_A}  /etc/resolv.conf`,
    '@packages',
    'openssh-server\t1:9.2p1-2',
    'nginx-light\t1.22.1-9',
    '@units',
    'ssh.service',
    'e2scrub_all.timer',
  ].join('\n'),
);

describe('inventory and diff', () => {
  test('parses files with type, mode, owner and digest or link target; ignores the volatile ones', () => {
    expect(before.files.get('/etc/motd')).toEqual({ type: 'file', mode: '0644', owner: 'root:root', content: SHA_A });
    expect(before.files.get('/etc/systemd/system/timers.target.wants/e2scrub_all.timer')).toMatchObject({ type: 'link', content: '/lib/systemd/system/e2scrub_all.timer' });
    expect(before.files.has('/etc/resolv.conf')).toBe(false);
    expect(before.packages.get('openssh-server')).toBe('1:9.2p1-2');
    expect([...before.enabledUnits]).toEqual(['ssh.service', 'e2scrub_all.timer']);
  });

  test('lists exactly what was added, removed and changed', () => {
    const after = parseInventory(
      [
        '@files',
        'd\t755\troot:root\t/etc\t',
        'f\t600\troot:root\t/etc/motd\t',
        'f\t644\troot:root\t/etc/ssh/sshd_config.d/60-hardening.conf\t',
        '@sha256',
        `${SHA_B}  /etc/motd`,
        `${SHA_A}  /etc/ssh/sshd_config.d/60-hardening.conf`,
        '@packages',
        'openssh-server\t1:9.2p1-3',
        'curl\t7.88.1-10',
        '@units',
        'ssh.service',
        'fstrim.timer',
      ].join('\n'),
    );
    const diff = diffInventories(before, after);
    expect(diff).toEqual({
      files: {
        added: ['/etc/ssh/sshd_config.d/60-hardening.conf'],
        removed: ['/etc/systemd/system/timers.target.wants/e2scrub_all.timer'],
        changed: [{ path: '/etc/motd', what: ['mode 0644 -> 0600', 'content'] }],
      },
      packages: { installed: ['curl'], removed: ['nginx-light'], changed: [{ name: 'openssh-server', from: '1:9.2p1-2', to: '1:9.2p1-3' }] },
      units: { enabled: ['fstrim.timer'], disabled: ['e2scrub_all.timer'] },
    });
    expect(formatDiff(diff).split('\n')).toContain('~ /etc/motd (mode 0644 -> 0600, content)');
    expect(formatDiff(diffInventories(before, before))).toBe('(no changes)');
  });
});

describe('applying a change', () => {
  function fakeGuest(failOn?: string) {
    const calls: string[] = [];
    const guest = {
      name: 'fake',
      exec: async (argv: string[], options: { sudo?: boolean; stdin?: unknown } = {}) => {
        calls.push(`${options.sudo ? 'root' : 'user'}: ${argv.join(' ')}${options.stdin ? ` <<${String(options.stdin).trim()}` : ''}`);
        const fail = failOn !== undefined && argv.join(' ').includes(failOn);
        return { stdout: fail ? '' : 'fine', stderr: fail ? 'it broke' : '', exitCode: fail ? 1 : 0 };
      },
      writeFile: async (file: string, _content: unknown, options: { owner?: string } = {}) => {
        calls.push(`write ${file} as ${options.owner}`);
      },
    } as unknown as RehearsalGuest;
    return { guest, calls };
  }

  test('files, then commands, then the script, as root; the first failure ends it', async () => {
    const { guest, calls } = fakeGuest('reload');
    const applied = await applyChange(guest, { files: [{ path: '/etc/x', content: 'y' }], commands: [['systemctl', 'reload', 'ssh'], ['never']], script: 'echo no' });
    expect(applied.ok).toBe(false);
    expect(calls).toEqual(['write /etc/x as root:root', 'root: systemctl reload ssh']);
    expect(applied.steps.at(-1)).toMatchObject({ what: 'systemctl reload ssh', exitCode: 1, stderr: 'it broke' });
  });

  test('a script runs with sh -e from stdin; unknown options are refused', async () => {
    const { guest, calls } = fakeGuest();
    expect((await applyChange(guest, { script: 'echo hi\n' })).ok).toBe(true);
    expect(calls).toEqual(['root: sh -e <<echo hi']);
    await expect(applyChange(guest, { file: [] } as never)).rejects.toThrow(/Unknown change option `file`/);
  });

  test('checks all run, failing or not, and keep their output', async () => {
    const { guest } = fakeGuest('sshd -t');
    const results = await runChecks(guest, [['sshd', '-t'], { name: 'named', argv: ['true'] }, { name: 'fn', run: async () => { throw new Error('nope'); } }]);
    expect(results).toEqual([
      { name: 'sshd -t', ok: false, output: 'it broke' },
      { name: 'named', ok: true, output: 'fine' },
      { name: 'fn', ok: false, output: 'nope' },
    ]);
  });

  test('checkpoint labels are safe for the monitor and not snapshot ids', () => {
    expect(checkpointLabel('before-hardening_2.0')).toBe('before-hardening_2.0');
    expect(() => checkpointLabel('a b')).toThrow(/Invalid `label`/);
    expect(() => checkpointLabel('12')).toThrow(/all digits/);
  });
});

test('parseSnapshots reads QEMU 7.2 `info snapshots`', () => {
  const info =
    'List of snapshots present on all disks:\r\n' +
    'ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT\r\n' +
    '--        clean             212 MiB 2026-11-28 10:40:01 00:01:33.870           \r\n' +
    '--        base            1.05 GiB 2026-11-28 10:41:12 00:02:40.001           \r\n';
  expect(parseSnapshots(info)).toEqual([
    { id: '--', tag: 'clean', vmStateBytes: 212 * 1024 ** 2 },
    { id: '--', tag: 'base', vmStateBytes: Math.round(1.05 * 1024 ** 3) },
  ]);
});
