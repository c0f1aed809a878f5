// A sysadmin's rehearsal of an sshd hardening change on a throwaway guest: a broken version is
// caught by the check and rolled back, the good version is applied and verified, and the change
// report lists exactly what it touched. Run it: npx vitest run test/examples/sshd-rehearsal.test.ts
import type { StartedGuest } from 'guestlab';
import { describeAttempt } from 'guestlab';
import { guestFixture } from 'guestlab/vitest';
import { expect, test as base } from 'vitest';

const test = base.extend<{ bastion: StartedGuest }>({ bastion: guestFixture({ image: 'debian-12', name: 'bastion' }) });

const DROP_IN = '/etc/ssh/sshd_config.d/60-hardening.conf';
// sshd must accept the configuration, and use what the drop-in says.
const CHECKS = [
  ['sshd', '-t'],
  { name: 'sshd uses MaxAuthTries 3', argv: ['sh', '-c', 'sshd -T | grep -qx "maxauthtries 3"'] },
];

test('a broken sshd change is caught and rolled back; the fixed one is applied and verified', async ({ bastion }) => {
  const rehearsal = await bastion.rehearse('before-hardening');

  // First try: a typo in a keyword. sshd -t refuses it, so it must never reach a real server.
  const broken = await rehearsal.attempt({ files: [{ path: DROP_IN, content: 'MaxAuthTries 3\nPermitRootLogn no\n', mode: 0o644 }] }, CHECKS);
  expect(broken.ok).toBe(false);
  expect(broken.checks[0]!.output).toMatch(/Bad configuration option: PermitRootLogn/);
  expect(broken.diff.files.added).toEqual([DROP_IN]);

  const restored = await rehearsal.reset();
  console.log(`rolled back in ${(restored.totalMs / 1000).toFixed(1)} s`);
  expect((await bastion.exec(['test', '-e', DROP_IN])).exitCode).toBe(1);

  // Second try: the fixed file, sshd reloaded, and a timer this machine does not need turned off.
  const good = await rehearsal.attempt(
    {
      files: [{ path: DROP_IN, content: 'MaxAuthTries 3\nPermitRootLogin no\nX11Forwarding no\n', mode: 0o644 }],
      commands: [['systemctl', 'reload', 'ssh'], ['systemctl', 'disable', 'e2scrub_all.timer']],
    },
    CHECKS,
  );
  expect(good.ok, describeAttempt(good)).toBe(true);
  expect(good.diff).toEqual({
    files: { added: [DROP_IN], removed: ['/etc/systemd/system/timers.target.wants/e2scrub_all.timer'], changed: [] },
    packages: { installed: [], removed: [], changed: [] },
    units: { enabled: [], disabled: ['e2scrub_all.timer'] },
  });
  // After the reload, new SSH sessions still get in.
  expect((await bastion.succeed(['whoami'])).trim()).toBe('guestlab');
});
