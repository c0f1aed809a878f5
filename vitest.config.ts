import { defineConfig } from 'vitest/config';

// Guests boot in tens of seconds under TCG, so integration timeouts are generous; a guest's own
// boot deadline (bootTimeoutMs) fails first with the serial console in the error.
const GUEST_TIMEOUT_MS = 15 * 60_000;

export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/unit/**/*.test.ts'],
        },
      },
      {
        test: {
          name: 'integration',
          include: ['test/integration/**/*.test.ts', 'test/e2e/**/*.test.ts'],
          testTimeout: GUEST_TIMEOUT_MS,
          hookTimeout: GUEST_TIMEOUT_MS,
        },
      },
      {
        test: {
          name: 'examples',
          include: ['test/examples/**/*.test.ts'],
          // Examples that fail on purpose have their own config: npx vitest run --root test/examples/failing
          exclude: ['test/examples/failing/**'],
          testTimeout: GUEST_TIMEOUT_MS,
          hookTimeout: GUEST_TIMEOUT_MS,
        },
      },

    ],
  },
});
