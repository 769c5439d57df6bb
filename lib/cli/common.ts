// cli/common.ts — shared pieces of the CLI: option parsers, error printing, exit codes, the demo model path.

import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { InvalidArgumentError, type Command } from 'commander';
import { RepairError, toRepairError } from '../errors.js';
import { packageRoot } from '../paths.js';

/** Exit codes: 0 ok, 1 runtime error, 2 usage error, 130 interrupted. */
export const EXIT_OK = 0;
export const EXIT_ERROR = 1;
export const EXIT_USAGE = 2;
export const EXIT_INTERRUPTED = 130;

/** A CLI subcommand: adds itself (options, action) to the program. */
export interface CliCommand {
  name: string;
  register(program: Command): void;
}

export function defaultModelDir(): string {
  return join(packageRoot(), 'models', 'stories260K');
}

/** --model's value, or the shipped demo model; a missing default is reported clearly. */
export function resolveModelDir(dir: string | undefined): string {
  if (dir) return dir;
  const d = defaultModelDir();
  if (!existsSync(join(d, 'config.json'))) {
    throw new RepairError('ERR_IO', `the shipped demo model is missing (${d}); pass --model DIR`, { file: d });
  }
  return d;
}

export function intOption(min: number, max = Number.MAX_SAFE_INTEGER) {
  return (value: string): number => {
    const n = Number(value);
    if (value.trim() === '' || !Number.isSafeInteger(n) || n < min || n > max) {
      throw new InvalidArgumentError(`expected an integer in [${min}, ${max}], got "${value}"`);
    }
    return n;
  };
}

export function floatOption(check: (x: number) => boolean, what: string) {
  return (value: string): number => {
    const n = Number(value);
    if (value.trim() === '' || !Number.isFinite(n) || !check(n)) throw new InvalidArgumentError(`expected ${what}, got "${value}"`);
    return n;
  };
}

export function choiceOption<T extends string>(choices: readonly T[]) {
  return (value: string): T => {
    if (!(choices as readonly string[]).includes(value)) throw new InvalidArgumentError(`expected one of ${choices.join(', ')}, got "${value}"`);
    return value as T;
  };
}

/** Collect a repeatable option into an array. */
export function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

/** Print an error as one line `repair-edit: <code>: <message>` (plus the stack with --verbose); return the exit code. */
export function reportError(e: unknown, verbose: boolean): number {
  const err = toRepairError(e);
  process.stderr.write(`repair-edit: ${err.code}: ${err.message.replace(/\s*\n\s*/g, ' ')}\n`);
  if (verbose) {
    const inner = err.cause instanceof Error ? err.cause : err;
    process.stderr.write(`${inner.stack ?? ''}\n`);
  }
  return err.code === 'ERR_ABORTED' ? EXIT_INTERRUPTED : EXIT_ERROR;
}

/** Write text to stdout and wait until it is flushed (so piped output is complete before exit). */
export function writeOut(text: string): Promise<void> {
  return new Promise((res) => {
    if (process.stdout.write(text)) res();
    else process.stdout.once('drain', () => res());
  });
}

/** An AbortSignal that fires on the first Ctrl-C (a second one kills the process as usual). */
export function interruptSignal(): { signal: AbortSignal; done(): void } {
  const ac = new AbortController();
  const onSig = (): void => {
    process.off('SIGINT', onSig);
    ac.abort();
  };
  process.on('SIGINT', onSig);
  return { signal: ac.signal, done: () => process.off('SIGINT', onSig) };
}

/** A plain-text table: columns padded to their widest cell, 'l'eft or 'r'ight aligned (default left). */
export function formatTable(header: readonly string[], rows: readonly (readonly string[])[], align: readonly ('l' | 'r')[] = []): string {
  const all = [header, ...rows];
  const widths = header.map((_, c) => Math.max(...all.map((r) => (r[c] ?? '').length)));
  const line = (r: readonly string[]) =>
    widths
      .map((w, c) => (align[c] === 'r' ? (r[c] ?? '').padStart(w) : (r[c] ?? '').padEnd(w)))
      .join('  ')
      .trimEnd();
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

/** Fail a command with a usage error (one `repair-edit: ERR_USAGE: ...` line, exit 2). */
export function usageError(cmd: Command, message: string): never {
  cmd.error(message, { code: 'repair-edit.usage', exitCode: EXIT_USAGE });
}

/** True when option `name` (camelCase) was given on the command line (not a default). */
export function givenOnCli(cmd: Command, name: string): boolean {
  const src = cmd.getOptionValueSource(name);
  return src === 'cli' || src === 'env';
}
