// cli/generate.ts — `repair-edit generate [options] "prompt"`.

import type { Command } from 'commander';
import { loadModel, type BackendChoice, type Prompt } from '../model.js';
import { addJsonOptions, checkWritable, choiceOption, collect, emit, floatOption, intOption, interruptSignal, resolveModelDir, type CliCommand, type JsonOutput } from './common.js';
import { addConfigOptions, loadOnlyConfig } from './config_file.js';
import { explanationJson, loadEditor } from './memory.js';

interface GenerateCliOptions extends JsonOutput {
  config?: string;
  printConfig?: boolean;
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
}

export const generateCommand: CliCommand = {
  name: 'generate',
  register(program: Command): void {
    const c = program
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
      .option('--system <text>', 'system message (with --chat)');
    addConfigOptions(addJsonOptions(c), 'model, backend, device, threads').action(async (promptText: string, o: GenerateCliOptions, cmd: Command) => {
        if (o.jsonFile !== undefined) checkWritable(o.jsonFile, '--json-file');
        const rt = await loadOnlyConfig(cmd, o);
        if (!rt) return;
        const dir = resolveModelDir(rt.model);
        const intr = interruptSignal();
        try {
          await using model = await loadModel(dir, {
            backend: rt.backend,
            device: rt.device,
            threads: rt.threads,
            contextLength: o.contextLength,
            signal: intr.signal,
          });
          rt.checkEditor(model);
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
            await using editor = await loadEditor(model, o.memory, intr.signal);
            const r = await editor.generate(prompt, genOpts);
            // The route generate() took (JSON only): decided once on the prompt, as explain() decides it.
            const route = o.json || o.jsonFile !== undefined ? explanationJson(await editor.explain(prompt, { signal: intr.signal })) : null;
            await emit(o, { ...r, route, memoryFile: o.memory, model: model.dir, backend: model.backend }, () => `${r.text}\n`);
            return;
          }
          const r = await model.generate(prompt, genOpts);
          await emit(o, { ...r, model: model.dir, backend: model.backend }, () => `${r.text}\n`);
        } finally {
          intr.done();
        }
      });
  },
};
