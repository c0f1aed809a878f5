// Config for the examples that fail on purpose (not part of `npm test`; see evidence.test.ts).
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['*.test.ts'],
    testTimeout: 15 * 60_000,
    hookTimeout: 15 * 60_000,
  },
});
