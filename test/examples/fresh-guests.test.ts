// Twenty tests, each with a guest of its own: `scope: 'test'` clones every guest from a template
// booted once for this file, so each test starts from the same clean state in a second or two.
import type { StartedGuest } from 'guestlab';
import { guestFixture } from 'guestlab/vitest';
import { describe, expect, test as base } from 'vitest';

const test = base.extend<{ vm: StartedGuest }>({ vm: guestFixture({ image: 'debian-12', name: 'fresh', cpus: 1 }, { scope: 'test' }) });

const seen: { instanceId: string; bootId: string; clonedFrom: string | undefined }[] = [];

describe('every test gets a fresh guest', () => {
  for (let n = 1; n <= 20; n++) {
    test(`test ${n} sees nothing the tests before it wrote`, async ({ vm }) => {
      // No earlier test's marker survives into this guest.
      expect(await vm.succeed('ls /var/tmp | grep "^marker-" || true')).toBe('');
      await vm.writeFile(`/var/tmp/marker-${n}`, `written by test ${n}\n`);
      expect(await vm.succeed('ls /var/tmp | grep "^marker-"')).toBe(`marker-${n}\n`);

      const bootId = (await vm.succeed(['cat', '/proc/sys/kernel/random/boot_id'])).trim();
      seen.push({ instanceId: vm.instanceId, bootId, clonedFrom: vm.clonedFrom });
      // A new instance every time, all restored from the one template: the same boot, resumed.
      expect(new Set(seen.map((s) => s.instanceId)).size).toBe(seen.length);
      expect(vm.clonedFrom).toBeDefined();
      expect(new Set(seen.map((s) => s.clonedFrom)).size).toBe(1);
      expect(new Set(seen.map((s) => s.bootId)).size).toBe(1);
    });
  }
});
