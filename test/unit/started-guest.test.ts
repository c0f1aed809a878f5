// StartedGuest is a facade: every method that does work returns a promise, and bad input rejects
// that promise instead of throwing where the call is made (`await expect(vm.forward(0)).rejects`).
import { expect, test } from 'vitest';
import { StartedGuest } from '../../src/guest/started-guest.ts';
import { createLogger } from '../../src/log.ts';

function guestWithoutMachine(): StartedGuest {
  const refuse = () => {
    throw new Error('no machine behind this guest');
  };
  const nothing = new Proxy({}, { get: () => refuse });
  return new StartedGuest({
    resources: { log: createLogger('test', () => undefined), instance: { id: 'x', dir: '/nonexistent', file: () => '/nonexistent/f' }, qemu: nothing, monitor: nothing, session: nothing } as never,
    name: 'facade',
    image: 'debian-12',
    accel: 'tcg',
    cpus: 1,
    memoryMiB: 1024,
    instance: { id: 'x', dir: '/nonexistent', file: () => '/nonexistent/f' },
    ssh: { host: '127.0.0.1', port: 1, user: 'guestlab', privateKeyPath: '/nonexistent/key', hostKey: '', knownHostsPath: '/nonexistent/kh' },
    timings: { imageReadyMs: 0, qemuStartedMs: 0, sshBannerMs: 0, sshReadyMs: 0, cloudInitDoneMs: 0 },
    leaseWaitMs: 0,
    networks: [],
  });
}

const SYNCHRONOUS = new Set(['constructor', 'checkpoints']);

test('every method that does work returns a promise, also for bad input', async () => {
  const guest = guestWithoutMachine();
  const methods = Object.getOwnPropertyNames(StartedGuest.prototype).filter((name) => {
    const descriptor = Object.getOwnPropertyDescriptor(StartedGuest.prototype, name)!;
    return typeof descriptor.value === 'function' && !SYNCHRONOUS.has(name) && name !== 'stop' && name !== 'keep';
  });
  expect(methods).toEqual(expect.arrayContaining(['exec', 'succeed', 'fail', 'forward', 'waitForPort', 'restore']));
  for (const name of methods) {
    let result: unknown;
    try {
      result = (guest as unknown as Record<string, (...args: unknown[]) => unknown>)[name]!(0, 70000);
    } catch (error) {
      expect.unreachable(`${name}() threw where it was called: ${(error as Error).message}`);
    }
    expect(result, `${name}() returned no promise`).toBeInstanceOf(Promise);
    await (result as Promise<unknown>).catch(() => undefined);
  }
  await expect(guest.forward(0)).rejects.toThrow(/guestPort/);
  await expect(guest.forward(70000)).rejects.toThrow(/1 to 65535/);
});
