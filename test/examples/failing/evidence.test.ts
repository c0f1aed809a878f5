// A test that fails on purpose, to show what a failure looks like: the reporter prints the guest's
// serial console tail, cloud-init output and journal warnings under the failed test, and the JSON
// report carries them in `meta.guestlab`. Run it with (its own vitest.config.ts, beside it):
//   npx vitest run --root test/examples/failing
// and with GUESTLAB_KEEP=on-failure to keep the guest up and get the commands to log in.
// It is not part of `npm test`'s examples; test/e2e/evidence.test.ts runs it and reads the reports.
import type { StartedGuest } from 'guestlab';
import { guestFixture } from 'guestlab/vitest';
import { expect, test as base } from 'vitest';

const test = base.extend<{ vm: StartedGuest }>({
  vm: guestFixture({
    image: 'debian-12',
    name: 'evidence',
    cloudConfig: {
      write_files: [
        {
          path: '/etc/systemd/system/flaky-daemon.service',
          content: "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo flaky-daemon cannot open /etc/flaky.conf >&2; exit 1'\n[Install]\nWantedBy=multi-user.target\n",
        },
      ],
      // --no-block: the start is queued, so cloud-init itself succeeds and the failure is the test's.
      runcmd: [['systemctl', 'enable', 'flaky-daemon.service'], ['systemctl', 'start', '--no-block', 'flaky-daemon.service']],
    },
  }),
});

test('the daemon is running (fails on purpose: it exits at start)', async ({ vm }) => {
  await expect(vm).toHaveActiveUnit('flaky-daemon.service');
});
