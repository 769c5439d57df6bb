// cli.ts — runs the repair-edit CLI as a child process for the CLI tests: from source through tsx, or the
// built dist/cli.js; resolves (never rejects) with the exit code and both streams. Time limits scale with
// REPAIR_TEST_TIME_FACTOR (budget()).
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { packageRoot } from '../../lib/paths.js';
import { budget } from './time.js';

export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

const ROOT = packageRoot();

/**
 * A runner for `repair-edit ARGS`: 'source' runs lib/cli.ts through tsx, 'dist' runs node dist/cli.js (after
 * `npx tsc`). `env` is added to the environment of every call, `extra` to one call's.
 */
export function cliRunner(entry: 'source' | 'dist', opts: { timeoutMs: number; env?: Record<string, string> }): (args: string[], extra?: Record<string, string>) => Promise<CliRun> {
  const [file, pre] = entry === 'source' ? [join(ROOT, 'node_modules', '.bin', 'tsx'), ['lib/cli.ts']] : [process.execPath, [join(ROOT, 'dist', 'cli.js')]];
  return (args, extra = {}) =>
    new Promise((resolve) => {
      execFile(file, [...pre, ...args], { cwd: ROOT, env: { ...process.env, ...opts.env, ...extra }, timeout: budget(opts.timeoutMs) }, (err, stdout, stderr) => {
        resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
      });
    });
}
