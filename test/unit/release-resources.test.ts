// Giving back a guest's resources: the budget lease goes back even when the instance directory
// cannot be removed (the error still reaches the caller; the sweep removes the directory later).
import { expect, test } from 'vitest';
import { releaseResources, type GuestResources } from '../../src/guest/resources.ts';
import { createLogger } from '../../src/log.ts';

test('the lease is released when removing the instance directory fails', async () => {
  let released = 0;
  const resources = {
    log: createLogger('test', () => undefined),
    // A path fs.rm refuses outright.
    instance: { id: 'broken-1', dir: '/tmp/guestlab-\0-no-such-dir', file: () => '' },
    lease: { release: async () => void released++ },
  } as unknown as GuestResources;
  await expect(releaseResources(resources)).rejects.toThrow(/null bytes|NUL|must be a string/i);
  expect(released).toBe(1);
});
