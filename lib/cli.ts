#!/usr/bin/env node
// cli.ts — the repair-edit command line. Subcommands live in lib/cli/ (one file each, listed in cli/commands.ts).

import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Command, CommanderError } from 'commander';
import { packageVersion } from './info.js';
import { commands } from './cli/commands.js';
import { EXIT_OK, EXIT_USAGE, reportError } from './cli/common.js';

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('repair-edit')
    .description('Lifelong knowledge editing for LLMs (WISE side memories + REPAIR), native CPU/CUDA runtime')
    .version(packageVersion(), '-V, --version')
    .option('--verbose', 'print stack traces with errors')
    .exitOverride()
    .configureOutput({
      outputError: (str, write) => write(`repair-edit: ERR_USAGE: ${str.replace(/^error: /, '')}`),
    });
  for (const c of commands) c.register(program);
  // Subcommands inherit the program's error handling.
  for (const sub of program.commands) {
    sub.exitOverride();
    sub.configureOutput(program.configureOutput());
  }
  return program;
}

/** Run the CLI on `argv` (user arguments only); resolves to the exit code. */
export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  const verbose = argv.includes('--verbose');
  try {
    if (argv.length === 0) {
      program.outputHelp({ error: true });
      return EXIT_USAGE;
    }
    await program.parseAsync(argv, { from: 'user' });
    return EXIT_OK;
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help') return EXIT_OK;
      return EXIT_USAGE; // commander already printed the message
    }
    return reportError(e, verbose);
  }
}

function isEntry(): boolean {
  const arg = process.argv[1];
  if (!arg) return false;
  try {
    return realpathSync(arg) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isEntry()) {
  process.exitCode = await main(process.argv.slice(2));
}
