// cli/generate.ts — `repair-edit generate [options] "prompt"`.

import type { Command } from 'commander';
import { Editor } from '../editor.js';
import { loadModel, type BackendChoice, type Prompt } from '../model.js';
import { choiceOption, collect, floatOption, intOption, interruptSignal, resolveModelDir, writeOut, type CliCommand } from './common.js';
import { explanationJson } from './memory.js';

interface GenerateCliOptions {
  model?: string;
  maxNewTokens: number;
  temperature: number;
  topK: number;
  topP: number;
  seed: number;
  backend: BackendChoice;
  device?: number;
  threads?: number;
  contextLength?: number;
  stop?: string[];
  eos: boolean;
  chat?: boolean;
  system?: string;
  memory?: string;
  json?: boolean;
}

export const generateCommand: CliCommand = {
  name: 'generate',
  register(program: Command): void {
    program
      .command('generate')
      .description('generate a continuation; with --temperature 0 (greedy) prints the prompt and continuation exactly as decoded')
      .argument('<prompt>', 'the prompt text')
      .option('--model <dir>', 'Hugging Face model folder (default: the shipped stories260K demo model)')
      .option('--memory <file>', 'generate through side memories saved by `repair-edit edit` (routed; --json adds the route)')
      .option('--max-new-tokens <n>', 'tokens to generate at most', intOption(0), 64)
      .option('--temperature <t>', '0 = greedy', floatOption((x) => x >= 0, 'a number >= 0'), 0)
      .option('--top-k <k>', '0 = off', intOption(0, 0x7fffffff), 0)
      .option('--top-p <p>', '1 = off', floatOption((x) => x > 0 && x <= 1, 'a number in (0, 1]'), 1)
      .option('--seed <s>', 'sampling seed (uint32)', intOption(0, 0xffffffff), 0)
      .option('--backend <name>', 'auto | cpu | cuda (auto honours REPAIR_BACKEND)', choiceOption(['auto', 'cpu', 'cuda'] as const), 'auto')
      .option('--device <n>', 'CUDA device index', intOption(0, 1024))
      .option('--threads <n>', 'CPU threads (0 = all)', intOption(0, 4096))
      .option('--context-length <n>', 'cap on the context length', intOption(1))
      .option('--stop <str>', 'stop at this string (repeatable)', collect)
      .option('--no-eos', 'do not stop at the end-of-sequence token')
      .option('--chat', 'send the prompt as a user message through the chat template')
      .option('--system <text>', 'system message (with --chat)')
      .option('--json', 'print the result as JSON')
      .action(async (promptText: string, o: GenerateCliOptions) => {
        const dir = resolveModelDir(o.model);
        const intr = interruptSignal();
        try {
          await using model = await loadModel(dir, {
            backend: o.backend,
            device: o.device,
            threads: o.threads,
            contextLength: o.contextLength,
            signal: intr.signal,
          });
          const prompt: Prompt = o.chat
            ? [...(o.system !== undefined ? [{ role: 'system', content: o.system }] : []), { role: 'user', content: promptText }]
            : promptText;
          const genOpts = {
            maxNewTokens: o.maxNewTokens,
            temperature: o.temperature,
            topK: o.topK,
            topP: o.topP,
            seed: o.seed,
            stop: o.stop,
            stopOnEos: o.eos,
            signal: intr.signal,
          };
          if (o.memory !== undefined) {
            await using editor = await Editor.load(model, o.memory, { signal: intr.signal });
            const r = await editor.generate(prompt, genOpts);
            if (o.json) {
              // The route generate() took: decided once on the prompt, as explain() decides it.
              const route = explanationJson(await editor.explain(prompt, { signal: intr.signal }));
              await writeOut(`${JSON.stringify({ ...r, route, memoryFile: o.memory, model: model.dir, backend: model.backend }, null, 2)}\n`);
            } else {
              await writeOut(`${r.text}\n`);
            }
            return;
          }
          const r = await model.generate(prompt, genOpts);
          if (o.json) {
            await writeOut(`${JSON.stringify({ ...r, model: model.dir, backend: model.backend }, null, 2)}\n`);
          } else {
            await writeOut(`${r.text}\n`);
          }
        } finally {
          intr.done();
        }
      });
  },
};
