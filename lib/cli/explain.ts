// cli/explain.ts — `repair-edit explain --memory FILE [options] "prompt"`: which memory a prompt routes
// to, its score and threshold, and every memory's score.

import type { Command } from 'commander';
import { loadModel, type BackendChoice, type Prompt } from '../model.js';
import { addJsonOptions, checkWritable, choiceOption, emit, intOption, interruptSignal, resolveModelDir, type CliCommand, type JsonOutput } from './common.js';
import { addConfigOptions, loadOnlyConfig } from './config_file.js';
import { explanationJson, fmtNum, loadEditor, routeLabel, scoresTable } from './memory.js';

interface ExplainCliOptions extends JsonOutput {
  config?: string;
  printConfig?: boolean;
  model?: string;
  memory: string;
  teacherForced?: boolean;
  chat?: boolean;
  system?: string;
  backend: BackendChoice;
  device?: number;
  threads?: number;
}

export const explainCommand: CliCommand = {
  name: 'explain',
  register(program: Command): void {
    const c = program
      .command('explain')
      .description('show how a prompt is routed through saved side memories: the chosen memory (or main), its score and threshold, and all scores')
      .argument('<prompt>', 'the prompt text (with --teacher-forced: a full row such as prompt + answer)')
      .requiredOption('--memory <file>', 'side memories saved by `repair-edit edit`')
      .option('--model <dir>', 'Hugging Face model folder (default: the shipped stories260K demo model)')
      .option('--teacher-forced', 'route the text as teacher-forced evaluation does (full rows, reference thresholds) instead of as a bare prompt before generation')
      .option('--chat', 'send the prompt as a user message through the chat template')
      .option('--system <text>', 'system message (with --chat)')
      .option('--backend <name>', 'auto | cpu | cuda (auto honours REPAIR_BACKEND)', choiceOption(['auto', 'cpu', 'cuda'] as const), 'auto')
      .option('--device <n>', 'CUDA device index', intOption(0, 1024))
      .option('--threads <n>', 'CPU threads (0 = all)', intOption(0, 4096));
    addConfigOptions(addJsonOptions(c), 'model, backend, device, threads').action(async (promptText: string, o: ExplainCliOptions, cmd: Command) => {
        if (o.jsonFile !== undefined) checkWritable(o.jsonFile, '--json-file');
        const rt = await loadOnlyConfig(cmd, o);
        if (!rt) return;
        const dir = resolveModelDir(rt.model);
        const intr = interruptSignal();
        try {
          await using model = await loadModel(dir, { backend: rt.backend, device: rt.device, threads: rt.threads, signal: intr.signal });
          rt.checkEditor(model);
          await using editor = await loadEditor(model, o.memory, intr.signal);
          const prompt: Prompt = o.chat
            ? [...(o.system !== undefined ? [{ role: 'system', content: o.system }] : []), { role: 'user', content: promptText }]
            : promptText;
          const e = await editor.explain(prompt, { signal: intr.signal, teacherForced: o.teacherForced === true });
          const basis = o.teacherForced ? 'teacher-forced' : 'prompt';
          const chosen = e.route === 'main' ? undefined : e.scores.find((s) => s.memory === e.route);
          const lines = [
            `route:     ${routeLabel(e.route)}${chosen ? ` (${chosen.kind}, ${chosen.edits} edit${chosen.edits === 1 ? '' : 's'})` : ' (the unedited weights)'}`,
            `score:     ${fmtNum(e.score)} ${e.score >= e.threshold ? '>=' : '<'} threshold ${fmtNum(e.threshold)}${e.route === 'main' ? ' (best memory)' : ''}`,
            ...(e.key ? [`key:       nearest stored edit ${e.key.edit} (cosine ${e.key.similarity.toFixed(3)}; key routing picks its memory)`] : []),
            `basis:     ${basis} (${e.tokens} tokens)`,
            '',
            scoresTable(e),
          ];
          await emit(o, { prompt: promptText, basis, ...explanationJson(e), memoryFile: o.memory, model: model.dir, backend: model.backend }, () => `${lines.join('\n')}\n`);
        } finally {
          intr.done();
        }
      });
  },
};
