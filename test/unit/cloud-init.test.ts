import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { describe, expect, test } from 'vitest';
import { parse } from 'yaml';
import { AGENT_PATH, AGENT_UNIT, AGENT_UNIT_PATH } from '../../src/agent/unit.ts';
import { AGENT_SEED_FILE, mergeCloudConfig, renderMetaData, renderUserData, type SeedInput } from '../../src/cloud-init/user-data.ts';
import { generateEd25519 } from '../../src/ssh/keys.ts';

const hostKey = generateEd25519('root@web');
const clientKey = generateEd25519('guestlab@web');
const input: SeedInput = {
  instanceId: 'web-0001',
  hostname: 'web',
  user: 'tester',
  authorizedKey: clientKey.publicKey,
  hostKey,
};

function rendered(extra?: Record<string, unknown>) {
  const text = renderUserData({ ...input, cloudConfig: extra });
  return { text, config: parse(text) as Record<string, any> };
}

describe('renderUserData', () => {
  test('is a #cloud-config document', () => {
    expect(rendered().text.startsWith('#cloud-config\n')).toBe(true);
  });

  test('creates the user with passwordless sudo and the per-guest client key', () => {
    const { config } = rendered();
    expect(config.users).toEqual([
      expect.objectContaining({ name: 'tester', sudo: 'ALL=(ALL) NOPASSWD:ALL', lock_passwd: true, ssh_authorized_keys: [clientKey.publicKey] }),
    ]);
    expect(config).not.toHaveProperty('ssh_pwauth'); // set in the image: cloud-init would restart sshd mid-boot
  });

  test('injects the per-guest host key, deletes baked-in keys and generates none of its own', () => {
    const { config } = rendered();
    expect(config.ssh_deletekeys).toBe(true);
    expect(config.ssh_keys.ed25519_private).toBe(hostKey.privateKey);
    expect(config.ssh_keys.ed25519_public).toBe(hostKey.publicKey);
    expect(config.ssh_genkeytypes).toEqual(['ed25519']);
  });

  test('makes the hostname resolvable', () => {
    const { config } = rendered();
    expect(config.hostname).toBe('web');
    expect(config.manage_etc_hosts).toBe(true);
  });

  test('merges a cloudConfig: lists append, mappings merge, scalars replace', () => {
    const { config } = rendered({
      packages: ['nginx'],
      write_files: [{ path: '/etc/motd', content: 'hi\n', permissions: '0640' }],
      users: [{ name: 'extra' }],
      locale: 'en_US.UTF-8',
      runcmd: [['touch', '/tmp/x']],
    });
    expect(config.packages).toEqual(['nginx']);
    expect(config.write_files).toEqual([{ path: '/etc/motd', content: 'hi\n', permissions: '0640' }]);
    expect(config.users.map((u: { name: string }) => u.name)).toEqual(['tester', 'extra']);
    expect(config.locale).toBe('en_US.UTF-8');
    expect(config.runcmd).toEqual([['touch', '/tmp/x']]);
  });

  test('refuses keys that would break the host-key pin, naming the key and the fix', () => {
    expect(() => rendered({ ssh_keys: {} })).toThrow(/`cloudConfig.ssh_keys` cannot be set.*guest\.ssh\.hostKey/);
    expect(() => rendered({ ssh_deletekeys: false })).toThrow(/ssh_deletekeys/);
  });

  test('keeps guestlab\'s user whatever form `users` takes; a `default` entry goes first, once', () => {
    const names = (users: unknown) => (rendered({ users }).config.users as (string | { name: string })[]).map((u) => (typeof u === 'string' ? u : u.name));
    expect(names('default')).toEqual(['default', 'tester']);
    expect(names(['default', { name: 'alice' }])).toEqual(['default', 'tester', 'alice']);
    expect(names([{ name: 'alice' }, 'default', 'bob'])).toEqual(['default', 'tester', 'alice', 'bob']);
    expect(names('alice, bob')).toEqual(['tester', 'alice', 'bob']);
    expect(names([])).toEqual(['tester']);
  });

  test('refuses a `users` entry that redefines guestlab\'s user, also when the seed is rendered', () => {
    expect(() => rendered({ users: ['default', { name: 'tester', shell: '/bin/sh' }] })).toThrow(/^`cloudConfig\.users\[1\]` redefines "tester", guestlab's login user/);
  });

  test('refuses a cloudConfig that is not a plain object', () => {
    expect(() => renderUserData({ ...input, cloudConfig: ['x'] as unknown as Record<string, unknown> })).toThrow(/plain object/);
  });

  test('strings stay strings for a YAML 1.1 reader like cloud-init\'s PyYAML', () => {
    const strings = { mac: '52:54:00:12:34:56', switch: 'on', answer: 'yes', time: '12:30', mode: '0644', number: '1_000' };
    const { text } = rendered({ write_files: [{ path: '/etc/x', content: 'y', permissions: '0644' }], strings } as Record<string, unknown>);
    // Parsed the way cloud-init parses it: every value comes back as the same string.
    expect(parse(text, { version: '1.1' }).strings).toEqual(strings);
  });

  test('long key lines are not folded', () => {
    const { text } = rendered();
    expect(text).toContain(clientKey.publicKey);
  });
});

describe('the guest agent in the seed', () => {
  // Every byte value, and more than one gzip block's worth.
  const binary = randomBytes(300_000);
  /** Parsed as cloud-init parses it (YAML 1.1). */
  const withAgent = (cloudConfig?: Record<string, unknown>) => parse(renderUserData({ ...input, cloudConfig, agent: { binary } }), { version: '1.1' }) as Record<string, any>;

  test('writes guestlab\'s unit; the binary stays out of user-data (it goes on the seed ISO)', () => {
    const config = withAgent();
    expect(config.write_files).toEqual([{ path: AGENT_UNIT_PATH, owner: 'root:root', permissions: '0644', content: AGENT_UNIT }]);
    expect(renderUserData({ ...input, agent: { binary } }).length).toBeLessThan(20_000);
    expect(AGENT_UNIT_PATH).toBe('/etc/systemd/system/guestlab-agent.service');
  });

  test('runcmd installs it from the seed volume as 0755 in its place, enables and starts it under systemd, in a script sh accepts', () => {
    const [script] = withAgent().runcmd as string[];
    const steps = [
      'dev=$(blkid -t LABEL=cidata -o device',
      'mount -o ro "$dev" "$seed"',
      `install -D -m 0755 "$seed/${AGENT_SEED_FILE}" ${AGENT_PATH}`,
      'umount "$seed"',
      'rmdir "$seed"',
      // A reload (seconds under TCG) only when systemd holds an older copy of the unit.
      '[ "$(systemctl show -p NeedDaemonReload --value guestlab-agent.service)" != yes ] || systemctl daemon-reload',
      'systemctl --no-reload enable guestlab-agent.service',
      'systemctl restart guestlab-agent.service',
    ];
    const at = steps.map((step) => script!.indexOf(step));
    expect(at.every((i) => i >= 0)).toBe(true);
    expect([...at].sort((a, b) => a - b)).toEqual(at);
    expect(script).toMatch(/^if \[ -d \/run\/systemd\/system \]; then/);
    expect(AGENT_PATH).toBe('/usr/local/lib/guestlab/guestlab-agent');
    // Parsed (not run) by the host's sh: cloud-init runs runcmd entries as lines of a sh script.
    execFileSync('sh', ['-n', '-c', script!]);
  });

  test('guestlab\'s entries come first; the spec\'s runcmd and write_files follow', () => {
    const config = withAgent({ runcmd: [['touch', '/var/tmp/x'], 'echo hi'], write_files: [{ path: '/etc/motd', content: 'hi\n' }] });
    expect(config.runcmd).toHaveLength(3);
    expect(config.runcmd[0]).toContain('systemctl restart guestlab-agent.service');
    expect(config.runcmd.slice(1)).toEqual([['touch', '/var/tmp/x'], 'echo hi']);
    expect(config.write_files.map((f: { path: string }) => f.path)).toEqual([AGENT_UNIT_PATH, '/etc/motd']);
  });

  test('without the binary, nothing of the agent is in the seed', () => {
    const { config, text } = rendered();
    expect(config).not.toHaveProperty('write_files');
    expect(config).not.toHaveProperty('runcmd');
    expect(text).not.toContain('guestlab-agent');
    expect(rendered({ runcmd: ['echo hi'] }).config.runcmd).toEqual(['echo hi']);
  });

  test('refuses a binary that is not a non-empty Buffer', () => {
    expect(() => renderUserData({ ...input, agent: { binary: Buffer.alloc(0) } })).toThrow(/`agent\.binary`/);
    expect(() => renderUserData({ ...input, agent: { binary: 'ELF' as unknown as Buffer } })).toThrow(/`agent\.binary`/);
  });
});

describe('mergeCloudConfig', () => {
  test('merges nested mappings without touching the inputs', () => {
    const a = { apt: { preserve_sources_list: true } };
    const b = { apt: { sources: { x: { source: 'deb ...' } } } };
    expect(mergeCloudConfig(a, b)).toEqual({ apt: { preserve_sources_list: true, sources: { x: { source: 'deb ...' } } } });
    expect(a).toEqual({ apt: { preserve_sources_list: true } });
  });
});

describe('renderMetaData', () => {
  test('carries the instance id and hostname', () => {
    expect(parse(renderMetaData(input))).toEqual({ 'instance-id': 'web-0001', 'local-hostname': 'web' });
  });
});
