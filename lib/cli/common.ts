// cli/common.ts — shared pieces of the CLI: option parsers, error printing, exit codes, the demo model path.

import { existsSync, renameSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
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

/**
 * An AbortSignal that fires on the first Ctrl-C (SIGINT) or SIGTERM; the command then keeps what it
 * finished and exits 130. A second signal kills the process as usual, or, given `onSecond`, runs it
 * (synchronous: write what is already finished) and exits 130 at once.
 */
export function interruptSignal(onSecond?: () => void): { signal: AbortSignal; done(): void } {
  const ac = new AbortController();
  const off = (): void => {
    process.off('SIGINT', onSig);
    process.off('SIGTERM', onSig);
  };
  const onSig = (): void => {
    if (!ac.signal.aborted) {
      if (!onSecond) off();
      ac.abort();
      return;
    }
    off();
    try {
      onSecond?.();
    } finally {
      process.exit(EXIT_INTERRUPTED);
    }
  };
  process.on('SIGINT', onSig);
  process.on('SIGTERM', onSig);
  return { signal: ac.signal, done: off };
}

// ---- --json / --json-file: the same on every command -------------------------------------------------

/** What --json and --json-file asked for. */
export interface JsonOutput {
  /** --json: the JSON on stdout instead of the text. */
  json?: boolean;
  /** --json-file F: the JSON written to F (atomically); the text still goes to stdout. */
  jsonFile?: string;
}

/** Add --json and --json-file to a command (`what` says what the JSON holds). */
export function addJsonOptions(c: Command, what = 'the result'): Command {
  return c.option('--json', `print ${what} as JSON on stdout (instead of the text)`).option('--json-file <file>', `also write ${what} as JSON to this file (the text still goes to stdout)`);
}

/** Fail early (ERR_IO naming the flag) when `file` cannot be written because its folder does not exist. */
export function checkWritable(file: string, flag: string): void {
  const dir = dirname(resolve(file));
  let ok = false;
  try {
    ok = statSync(dir).isDirectory();
  } catch {
    /* reported below */
  }
  if (!ok) throw new RepairError('ERR_IO', `cannot write ${file} (${flag}): the folder ${dir} does not exist`, { file });
}

/** Write a file atomically: a temporary file beside it, then a rename over it. */
export function writeFileAtomic(file: string, text: string): void {
  const tmp = `${file}.tmp-${process.pid}`;
  try {
    writeFileSync(tmp, text);
    renameSync(tmp, file);
  } catch (e) {
    try {
      unlinkSync(tmp);
    } catch {
      /* nothing to clean */
    }
    throw new RepairError('ERR_IO', `cannot write ${file}: ${(e as Error).message}`, { file }, { cause: e });
  }
}

/** Emit a command's result: JSON to --json-file, then JSON (with --json) or the text to stdout. */
export async function emit(o: JsonOutput, value: unknown, text: () => string): Promise<void> {
  const json = `${JSON.stringify(value, null, 2)}\n`;
  if (o.jsonFile !== undefined) writeFileAtomic(o.jsonFile, json);
  await writeOut(o.json ? json : text());
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
