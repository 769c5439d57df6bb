// Test time budgets scale with one factor from the environment, so a slow or busy machine (2 cores shared
// with other work) gets longer budgets instead of failing tests that assert nothing wrong:
//   REPAIR_TEST_TIME_FACTOR=3 npx vitest run
// The same factor scales vitest's testTimeout/hookTimeout (vitest.config.ts) and every child-process
// timeout and wall-clock bound in the tests.
export const TIME_FACTOR = (() => {
  const v = Number(process.env.REPAIR_TEST_TIME_FACTOR ?? '1');
  return Number.isFinite(v) && v > 0 ? v : 1;
})();

/** A time budget in ms, scaled by REPAIR_TEST_TIME_FACTOR. */
export function budget(ms: number): number {
  return Math.round(ms * TIME_FACTOR);
}
