// Pure pieces of the guest API: forwards read from QEMU, waits, GUESTLAB_KEEP, the ssh command line.
import { WaitTimeoutError } from '../../src/errors.ts';
import { afterEach, describe, expect, test } from 'vitest';
import { parseMode } from '../../src/guest/files.ts';
import { keepInstructions, keepMode, sshCommand } from '../../src/guest/keep.ts';
import { pollUntil, timeoutScale } from '../../src/guest/waits.ts';
import { parseUsernetForwards } from '../../src/qemu/hmp.ts';

const saved = { ...process.env };
afterEach(() => {
  process.env = { ...saved };
});

describe('parseUsernetForwards', () => {
  // QEMU 7.2 `info usernet` after hostfwd_add of tcp 80 and udp 53 next to the boot-time SSH forward.
  const info =
    'Hub -1 (net0):\r\n  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\r\n' +
    '  UDP[HOST_FORWARD]  15       127.0.0.1 51234       10.0.2.15    53     0     0\r\n' +
    '  TCP[HOST_FORWARD]  14       127.0.0.1 40211       10.0.2.15    80     0     0\r\n' +
    '  TCP[HOST_FORWARD]   3       127.0.0.1 33841       10.0.2.15    22     0     0\r\n' +
    '  TCP[ESTABLISHED]   17       127.0.0.1 33841       10.0.2.15    22     0     0\r\n';

  test('lists every host forward with its protocol, and nothing else', () => {
    expect(parseUsernetForwards(info)).toEqual([
      { protocol: 'udp', hostAddress: '127.0.0.1', hostPort: 51234, guestPort: 53 },
      { protocol: 'tcp', hostAddress: '127.0.0.1', hostPort: 40211, guestPort: 80 },
      { protocol: 'tcp', hostAddress: '127.0.0.1', hostPort: 33841, guestPort: 22 },
    ]);
  });
});

describe('waits', () => {
  const guest = { name: 'g', accel: 'tcg' as const };

  test('default deadlines scale 5x under TCG; GUESTLAB_TIMEOUT_SCALE overrides, and a bad value is named', () => {
    expect(timeoutScale('kvm')).toBe(1);
    expect(timeoutScale('tcg')).toBe(5);
    process.env.GUESTLAB_TIMEOUT_SCALE = '2.5';
    expect(timeoutScale('tcg')).toBe(2.5);
    process.env.GUESTLAB_TIMEOUT_SCALE = 'fast';
    expect(() => timeoutScale('kvm')).toThrow(/^GUESTLAB_TIMEOUT_SCALE is "fast", not a decimal number: unset it \(the factor is 1 under KVM and 5 under TCG\) or set it to a positive number, e\.g\. 2\.5\.$/);
  });

  test('pollUntil returns the value once a probe is done', async () => {
    let calls = 0;
    const value = await pollUntil(guest, 'three probes', { intervalMs: 1 }, async () => (++calls === 3 ? { done: true, value: 'ok' } : { done: false, seen: `call ${calls}` }));
    expect(value).toBe('ok');
    expect(calls).toBe(3);
  });

  test('a timeout reports what the last probe saw', async () => {
    let calls = 0;
    const error = await pollUntil(guest, 'something', { timeoutMs: 50, intervalMs: 5 }, async () => ({ done: false, seen: `saw ${++calls}` })).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(WaitTimeoutError);
    expect((error as WaitTimeoutError).message).toMatch(new RegExp(`Guest g: timed out after 50 ms waiting for something\\.\\n--- last seen ---\\nsaw ${calls}$`));
  });

  test('a probe that throws ends the wait with its error; an aborted signal ends it too', async () => {
    await expect(pollUntil(guest, 'x', {}, async () => Promise.reject(new Error('unit failed')))).rejects.toThrow('unit failed');
    const controller = new AbortController();
    const waiting = pollUntil(guest, 'x', { intervalMs: 10_000, signal: controller.signal }, async () => ({ done: false, seen: '' }));
    controller.abort();
    await expect(waiting).rejects.toMatchObject({ code: 'ERR_ABORTED' });
  });
});

describe('GUESTLAB_KEEP', () => {
  test('never by default, on-failure when asked; anything else is refused with the fix', () => {
    delete process.env.GUESTLAB_KEEP;
    expect(keepMode()).toBe('never');
    process.env.GUESTLAB_KEEP = 'on-failure';
    expect(keepMode()).toBe('on-failure');
    process.env.GUESTLAB_KEEP = 'yes';
    expect(() => keepMode()).toThrow(/^GUESTLAB_KEEP is "yes", not one of never, on-failure: unset it \(guests are stopped after every test\) or set it to "never" or "on-failure"\.$/);
  });

  test('the ssh command pins the host key and uses only the guest key; the instructions quote it', () => {
    const ssh = { host: '127.0.0.1', port: 40123, user: 'guestlab', privateKeyPath: "/tmp/it's/id_ed25519", knownHostsPath: '/tmp/x/known_hosts', hostKey: 'ssh-ed25519 AAAA' };
    expect(sshCommand(ssh)).toEqual([
      'ssh', '-i', "/tmp/it's/id_ed25519", '-o', 'IdentitiesOnly=yes', '-o', 'UserKnownHostsFile=/tmp/x/known_hosts', '-o', 'StrictHostKeyChecking=yes', '-p', '40123', 'guestlab@127.0.0.1',
    ]);
    const text = keepInstructions({ name: 'web', instanceId: 'web-1a2b', ssh }, 'test "x" failed');
    expect(text).toContain(`ssh -i '/tmp/it'\\''s/id_ed25519' -o`);
    expect(text).toContain('npx guestlab ssh web-1a2b');
    expect(text).toContain('npx guestlab stop web-1a2b');
  });
});

describe('parseMode', () => {
  test('numbers and octal text; anything else is refused', () => {
    expect(parseMode(0o640)).toBe('0640');
    expect(parseMode('755')).toBe('0755');
    expect(parseMode('04755')).toBe('4755');
    expect(() => parseMode('rw-r--r--')).toThrow(/permission mode such as 0o644 or "0644"/);
    expect(() => parseMode(0o10000)).toThrow(/permission mode/);
  });
});
