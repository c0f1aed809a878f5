import fs from 'node:fs/promises';
import { dir } from 'tmp-promise';
import { describe, expect, test } from 'vitest';
import { cloudInitNeeded, FW_CFG_PREFIX, setupEntries, writeSetupEntries } from '../../src/cloud-init/fw-cfg-setup.ts';
import { loadRecipe } from '../../src/images/recipe.ts';
import { buildQemuArgv } from '../../src/qemu/argv.ts';

const input = {
  hostname: 'web-1',
  user: 'guestlab',
  authorizedKey: 'ssh-ed25519 AAAAclient guestlab@x',
  hostKey: { privateKey: '-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n-----END OPENSSH PRIVATE KEY-----\n', publicKey: 'ssh-ed25519 AAAAhost root@web-1' },
};
const kernelImage = { boot: 'kernel' as const, features: ['fw-cfg-setup'] };

describe('cloudInitNeeded', () => {
  test('a spec with nothing for cloud-init on an image with the setup unit leaves it off', () => {
    expect(cloudInitNeeded(kernelImage, { networks: [] })).toBe(false);
  });

  test('cloudConfig (even {}), private networks, firmware boot or an image without the unit keep it', () => {
    expect(cloudInitNeeded(kernelImage, { cloudConfig: {}, networks: [] })).toBe(true);
    expect(cloudInitNeeded(kernelImage, { networks: [{ name: 'lan' }] })).toBe(true);
    expect(cloudInitNeeded({ ...kernelImage, boot: 'firmware' }, { networks: [] })).toBe(true);
    expect(cloudInitNeeded({ boot: 'kernel', features: [] }, { networks: [] })).toBe(true);
  });
});

describe('setup entries', () => {
  test('carry the user, host name, keys and eth0, each newline-terminated where a file needs it', () => {
    const entries = setupEntries(input);
    expect(Object.keys(entries).sort()).toEqual(['authorized_keys', 'eth0', 'hostname', 'ssh_host_ed25519_key', 'ssh_host_ed25519_key.pub', 'user']);
    expect(entries.authorized_keys).toBe('ssh-ed25519 AAAAclient guestlab@x\n');
    expect(entries['ssh_host_ed25519_key.pub']).toBe('ssh-ed25519 AAAAhost root@web-1\n');
    expect(entries.eth0).toMatch(/^addr add 10\.0\.2\.15\/24 dev eth0$/m);
    expect(entries.user).toBe('guestlab\n');
  });

  test('refuse a user or host name the guest script would refuse', () => {
    expect(() => setupEntries({ ...input, user: 'Root;rm' })).toThrow(/`user`/);
    expect(() => setupEntries({ ...input, hostname: '-web' })).toThrow(/host name/);
  });

  test('are 0600 files, and QEMU gets them by file, so the host key never appears in its argv', async () => {
    const tmp = await dir({ unsafeCleanup: true });
    try {
      const entries = await writeSetupEntries(tmp.path, input);
      for (const entry of entries) {
        expect(entry.name.startsWith(FW_CFG_PREFIX)).toBe(true);
        // QEMU's limit for a fw_cfg file name is 55 characters.
        expect(entry.name.length).toBeLessThanOrEqual(55);
        expect((await fs.stat(entry.file)).mode & 0o777).toBe(0o600);
      }
      const key = entries.find((e) => e.name.endsWith('/ssh_host_ed25519_key'))!;
      expect(await fs.readFile(key.file, 'utf8')).toBe(input.hostKey.privateKey);
      const argv = buildQemuArgv({
        name: 'web-1', tag: 't', accel: 'tcg', machine: 'pc-q35-7.2', cpus: 1, memoryMiB: 512, disk: '/d.qcow2', qmpSocket: '/q', serialLog: '/s', sshHostPort: 0, fwCfg: entries,
      });
      expect(argv.join(' ')).not.toContain('secret');
      expect(argv.filter((a) => a === '-fw_cfg')).toHaveLength(entries.length);
      expect(argv).toContain(`name=${FW_CFG_PREFIX}user,file=${tmp.path}/fw_cfg.user`);
      // No seed drive when there is no seed.
      expect(argv.join(' ')).not.toContain('seed0');
    } finally {
      await tmp.cleanup();
    }
  });
});

test('the shipped Debian recipes have the setup unit, and the guest script reads every entry the host writes', async () => {
  const recipe = await loadRecipe('images/debian-12.yaml');
  expect(recipe.features).toContain('fw-cfg-setup');
  const script = recipe.files.find((f) => f.path === '/usr/local/lib/guestlab/setup')!.content;
  for (const name of Object.keys(setupEntries(input)).filter((n) => n !== 'eth0')) expect(script).toMatch(new RegExp(`(get |/)${name.replaceAll('.', '\\.')}\\b`));
  expect(recipe.files.find((f) => f.path === '/etc/systemd/system/guestlab-net.service')!.content).toContain(`${FW_CFG_PREFIX}eth0/raw`);
  expect(script).toContain(FW_CFG_PREFIX.replace(/\/$/, ''));
  for (const release of ['debian-11', 'debian-13']) expect((await loadRecipe(`images/${release}.yaml`)).features).toContain('fw-cfg-setup');
});
