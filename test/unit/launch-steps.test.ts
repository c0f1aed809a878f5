// The launch runner: steps run in order, a failure names its step and hint, and whatever earlier
// steps made is given back (instance directory removed, lease released, QEMU ended).
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { dir } from 'tmp-promise';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { AbortedError, GuestDeadEndError, GuestlabError, QemuError } from '../../src/errors.ts';
import { createInstanceDir } from '../../src/guest/instance.ts';
import { FRESH_BOOT } from '../../src/guest/launch/boot.ts';
import { cloneSteps } from '../../src/guest/launch/clone.ts';
import { newLaunchState, runBoot, runSteps, type FailedStep, type LaunchState, type LaunchStep } from '../../src/guest/launch/steps.ts';
import { resolveSpec } from '../../src/guest/spec.ts';
import { createLogger } from '../../src/log.ts';
import type { QemuProcess } from '../../src/qemu/process.ts';

const log = createLogger('test', () => undefined);

function step(name: string, run: LaunchStep['run']): LaunchStep {
  return { name, description: `the ${name} step`, hint: `look at ${name}`, run };
}

describe('runSteps', () => {
  let root: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => ({ path: root, cleanup } = await dir({ unsafeCleanup: true })));
  afterEach(() => cleanup());

  test('runs every step in order and times each', async () => {
    const state = newLaunchState(resolveSpec({ image: 'debian-12' }), log, undefined);
    const order: string[] = [];
    await runSteps(state, [step('a', async () => void order.push('a')), step('b', async () => void order.push('b'))]);
    expect(order).toEqual(['a', 'b']);
    expect(Object.keys(state.stepMs)).toEqual(['a', 'b']);
  });

  test('a failure names its step and hint, and gives back what the earlier steps made', async () => {
    const state = newLaunchState(resolveSpec({ image: 'debian-12', name: 'web' }), log, undefined);
    let released = 0;
    const child = spawn(process.execPath, ['-e', 'process.on("SIGTERM", () => {}); setInterval(() => {}, 1000)'], { stdio: 'ignore' });
    const exited = new Promise<{ exitCode: number | undefined; signal: string | undefined }>((resolve) => child.once('exit', (code, signal) => resolve({ exitCode: code ?? undefined, signal: signal ?? undefined })));
    let exit: { exitCode: number | undefined; signal: string | undefined } | undefined;
    void exited.then((e) => (exit = e));
    const qemu: QemuProcess = {
      pid: child.pid!, exited, keepable: false,
      get hasExited() { return exit !== undefined; },
      get exit() { return exit; },
      outputTail: () => '',
      kill: (signal = 'SIGKILL') => void child.kill(signal),
      detach: () => undefined,
    };
    let later = false;
    const error = await runSteps(state, [
      step('budget', async (s) => {
        s.resources.lease = { id: 'lease-1', waitedMs: 0, attach: async () => undefined, release: async () => void released++ } as never;
      }),
      step('instance', async (s) => {
        s.instance = await createInstanceDir(path.join(root, 'instances'), 'web');
        s.resources.instance = s.instance;
      }),
      step('qemu', async (s) => void (s.resources.qemu = qemu)),
      step('ssh-banner', async () => {
        throw new Error('connection refused');
      }),
      step('never', async () => void (later = true)),
    ]).then(() => expect.unreachable('it should fail'), (e: unknown) => e as GuestlabError & { step: FailedStep });
    expect(error).toBeInstanceOf(GuestlabError);
    expect(error.message).toMatch(/^Starting guest web failed: connection refused\n--- failed step: ssh-banner \(the ssh-banner step\) ---\nhint: look at ssh-banner$/);
    expect(error.step).toEqual({ name: 'ssh-banner', description: 'the ssh-banner step', hint: 'look at ssh-banner' });
    expect(later).toBe(false);
    expect(released).toBe(1);
    expect(await fs.readdir(path.join(root, 'instances'))).toEqual([]);
    // Without a monitor to ask, the grace passes and QEMU is killed.
    expect(qemu.hasExited).toBe(true);
  }, 20_000);

  test('keeps the class of a guestlab error and aborts before the next step', async () => {
    const state = newLaunchState(resolveSpec({ image: 'debian-12', name: 'db' }), log, undefined);
    const failure = await runSteps(state, [step('monitor', async () => {
      throw new QemuError('QEMU exited with code 1 during startup');
    })]).then(() => expect.unreachable('it should fail'), (e: unknown) => e as Error);
    expect(failure).toBeInstanceOf(QemuError);
    expect(failure.message).toContain('--- failed step: monitor');

    const controller = new AbortController();
    controller.abort(new Error('test ended'));
    const aborted = newLaunchState(resolveSpec({ image: 'debian-12', name: 'db' }), log, controller.signal);
    await expect(runSteps(aborted, [step('image', async () => undefined)])).rejects.toBeInstanceOf(AbortedError);
  });
});

describe('runBoot', () => {
  const stuck = (elapsedMs: number) => new GuestDeadEndError('web', { kind: 'cpu-stuck', evidence: 'watchdog: BUG: soft lockup - CPU#1 stuck for 75s! [modprobe:176]' }, 'ssh-banner', elapsedMs, '');
  const boots = (accel: 'tcg' | 'kvm', failures: Error[]) => {
    const states: LaunchState[] = [];
    const steps = [step('accel', async (s) => void (s.accel = accel)), step('ssh-banner', async () => {
      const failure = failures.shift();
      if (failure) throw failure;
    })];
    const run = runBoot(() => {
      const state = newLaunchState(resolveSpec({ image: 'debian-12', name: 'web' }), log, undefined);
      states.push(state);
      return state;
    }, steps);
    return { run, states };
  };

  test('under TCG, a boot whose CPU hung in the kernel boots once more, and the new state is the one returned', async () => {
    const { run, states } = boots('tcg', [stuck(92_000)]);
    const state = await run;
    expect(states).toHaveLength(2);
    expect(state).toBe(states[1]);
  });

  test('a second hang, a hang under KVM and any other failure are not retried', async () => {
    const twice = boots('tcg', [stuck(92_000), stuck(95_000)]);
    await expect(twice.run).rejects.toThrow(/has a CPU stuck in its kernel during boot .*this error means the new boot hung too/s);
    expect(twice.states).toHaveLength(2);
    const kvm = boots('kvm', [stuck(92_000)]);
    await expect(kvm.run).rejects.toBeInstanceOf(GuestDeadEndError);
    expect(kvm.states).toHaveLength(1);
    const other = boots('tcg', [new GuestDeadEndError('web', { kind: 'panic', evidence: 'Kernel panic' }, 'ssh-banner', 3000, '')]);
    await expect(other.run).rejects.toThrow(/kernel panic/);
    expect(other.states).toHaveLength(1);
  });
});

test('every step of a fresh boot and of a clone says what it does and where to look', () => {
  const clone = cloneSteps({ id: 't', instance: { id: 't', dir: '/x', file: () => '/x/f' }, statePath: '/x/state', clientPrivateKey: '', hostPublicKey: '', hostname: 't', kernel: undefined, seed: '/x/seed', fwCfg: undefined, mounts: [], cloudInit: 'ran', uefi: undefined, resumeWaiter: true });
  for (const steps of [FRESH_BOOT, clone]) {
    const names = steps.map((s) => s.name);
    expect(new Set(names).size).toBe(names.length);
    for (const s of steps) {
      expect(s.name).toMatch(/^[a-z][a-z-]*$/);
      expect(s.description.length).toBeGreaterThan(10);
      expect(s.hint.length).toBeGreaterThan(10);
    }
  }
  expect(FRESH_BOOT.map((s) => s.name)).toEqual(['host', 'sweep', 'image', 'disk-space', 'budget', 'instance', 'keys', 'disk', 'networks', 'seed', 'mount-images', 'qemu', 'monitor', 'ssh-forward', 'ssh-banner', 'ssh-auth', 'agent', 'cloud-init', 'agent-installed', 'mounts']);
  expect(clone.map((s) => s.name)).toEqual(['image', 'disk-space', 'budget', 'instance', 'disk', 'qemu', 'monitor', 'agent-connect', 'restore', 'ssh-forward', 'agent', 'ssh-banner', 'ssh-auth', 'fixup', 'hostname', 'join-networks']);
});
