// cli/commands.ts — every subcommand of the CLI, in help order. Add a command: write lib/cli/<name>.ts
// exporting a CliCommand and list it here.

import type { CliCommand } from './common.js';
import { demoCommand } from './demo.js';
import { editCommand } from './edit.js';
import { evalCommand } from './eval.js';
import { explainCommand } from './explain.js';
import { generateCommand } from './generate.js';
import { infoCommand } from './info.js';
import { memoryCommand } from './memories.js';
import { serveCommand } from './serve.js';

export const commands: CliCommand[] = [infoCommand, generateCommand, editCommand, explainCommand, memoryCommand, evalCommand, demoCommand, serveCommand];
