import { defineConfig } from 'vitest/config';
import { budget } from './test/helpers/time.js';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: budget(120_000), // scaled by REPAIR_TEST_TIME_FACTOR (test/helpers/time.ts)
    hookTimeout: budget(120_000),
    pool: 'forks',
  },
});
