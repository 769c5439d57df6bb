// cli/memories.ts — `repair-edit memory ls | show ID | rollback ID --memory FILE`: what a saved side-memory
// file holds (memories, thresholds, edits, queued work), one edit in full, and undoing one edit (the
// memory that held it is retrained without it; the file is rewritten atomically, or --out).

import type { Command } from 'commander';
import type { Editor, EditInfo } from '../editor.js';
import { RepairError } from '../errors.js';
import { loadModel, type BackendChoice } from '../model.js';
import { addJsonOptions, checkWritable, choiceOption, emit, formatTable, intOption, interruptSignal, resolveModelDir, type CliCommand, type JsonOutput } from './common.js';
import { addConfigOptions, loadOnlyConfig } from './config_file.js';
import { fmtNum, loadEditor } from './memory.js';

interface MemoryCliOptions extends JsonOutput {
  memory: string;
  model?: string;
  backend: BackendChoice;
  device?: number;
  threads?: number;
  out?: string;
  config?: string;
  printConfig?: boolean;
}

function addCommon(c: Command): Command {
  c.requiredOption('--memory <file>', 'side memories saved by `repair-edit edit` (or Editor#save)')
    .option('--model <dir>', 'the Hugging Face model folder the memories were trained on (default: the shipped stories260K demo model)')
    .option('--backend <name>', 'auto | cpu | cuda (auto honours REPAIR_BACKEND)', choiceOption(['auto', 'cpu', 'cuda'] as const), 'auto')
    .option('--device <n>', 'CUDA device index', intOption(0, 1024))
    .option('--threads <n>', 'CPU threads (0 = all)', intOption(0, 4096));
  return addConfigOptions(addJsonOptions(c), 'model, backend, device, threads');
}

async function withEditor<T>(o: MemoryCliOptions, cmd: Command, fn: (editor: Editor, signal: AbortSignal) => Promise<T>): Promise<T | undefined> {
  if (o.jsonFile !== undefined) checkWritable(o.jsonFile, '--json-file');
  const rt = await loadOnlyConfig(cmd, o);
  if (!rt) return undefined;
  const intr = interruptSignal();
  try {
    await using model = await loadModel(resolveModelDir(rt.model), { backend: rt.backend, device: rt.device, threads: rt.threads, signal: intr.signal });
    rt.checkEditor(model);
    await using editor = await loadEditor(model, o.memory, intr.signal);
    return await fn(editor, intr.signal);
  } finally {
    intr.done();
  }
}

const where = (m: EditInfo['memory']) => (m === 'working' ? 'working' : m === 'queued' ? 'queued' : `memory ${m}`);

function infoOrFail(editor: Editor, id: string, file: string): EditInfo {
  const e = editor.editInfo(id);
  if (!e) {
    const ids = editor.edits();
    throw new RepairError('ERR_UNKNOWN_EDIT', `${file} holds no edit "${id}" (its edits: ${ids.length ? ids.slice(0, 20).join(', ') + (ids.length > 20 ? ', ...' : '') : 'none'})`, { id });
  }
  return e;
}

export const memoryCommand: CliCommand = {
  name: 'memory',
  register(program: Command): void {
    const mem = program.command('memory').description('inspect a side-memory file and roll edits back: memory ls | show ID | rollback ID');

    addCommon(mem.command('ls').description('list the memories (kind, threshold, edits) and the edits still queued')).action(async (o: MemoryCliOptions, cmd: Command) => {
      await withEditor(o, cmd, async (editor) => {
        const m = editor.memories();
        const p = editor.pending();
        const rows = [{ name: 'working', kind: 'working', threshold: m.working.threshold, edits: m.working.edits }, ...m.memories.map((x, i) => ({ name: `memory ${i}`, kind: x.kind, threshold: x.threshold, edits: x.edits }))];
        const edits = editor.edits().map((id) => editor.editInfo(id)!);
        const lines = [
          `${o.memory}: method ${editor.config.method}, ${edits.length} edit${edits.length === 1 ? '' : 's'} in effect, layer ${editor.config.layer}`,
          '',
          formatTable(['memory', 'kind', 'threshold', 'edits'], rows.map((r) => [r.name, r.kind, fmtNum(r.threshold), r.edits.length ? r.edits.join(' ') : '-'])),
          '',
          formatTable(['id', 'where', 'prompt', 'target'], edits.map((e) => [e.id, where(e.memory), e.request.prompt, e.request.target])),
        ];
        if (p.queued.length) lines.push('', `queued (an interrupted editMany resumes them): ${p.queued.join(' ')}`);
        if (p.gaveUp.length) lines.push(`gave up (retrigger budget spent): ${p.gaveUp.join(' ')}`);
        await emit(o, { file: o.memory, method: editor.config.method, memories: rows, edits, pending: p }, () => `${lines.join('\n')}\n`);
      });
    });

    addCommon(mem.command('show').description('one edit: its request, the memory that holds it, its training figures').argument('<id>', 'edit id (memory ls lists them)')).action(
      async (id: string, o: MemoryCliOptions, cmd: Command) => {
        await withEditor(o, cmd, async (editor) => {
          const e = infoOrFail(editor, id, o.memory);
          const r = e.request;
          const lines = [`id:        ${e.id}`, `where:     ${where(e.memory)}`, `prompt:    ${r.prompt}`, `target:    ${r.target}`];
          if (r.rephrase !== undefined) lines.push(`rephrase:  ${r.rephrase}`);
          if (r.locality?.length) for (const l of r.locality) lines.push(`locality:  ${l.prompt} -> ${l.answer}`);
          if (e.score !== undefined) lines.push(`score:     ${fmtNum(e.score)} (prompt ${fmtNum(e.promptScore!)}), last-step loss ${fmtNum(e.loss!)}`);
          await emit(o, e, () => `${lines.join('\n')}\n`);
        });
      },
    );

    addCommon(mem.command('rollback').description('undo one edit: retrain the memory that held it without it, then save (atomically) to --out or back to --memory').argument('<id>', 'edit id'))
      .option('--out <file>', 'write the result here instead of rewriting --memory')
      .action(async (id: string, o: MemoryCliOptions, cmd: Command) => {
        if (o.out !== undefined) checkWritable(o.out, '--out');
        await withEditor(o, cmd, async (editor, signal) => {
          const e = infoOrFail(editor, id, o.memory);
          const t0 = performance.now();
          await editor.rollback(id, { signal });
          const out = o.out ?? o.memory;
          await editor.save(out, { signal });
          const res = { id, was: where(e.memory), file: out, editsLeft: editor.edits().length, seconds: (performance.now() - t0) / 1000 };
          await emit(o, res, () => `rolled back ${id} (${res.was}); ${res.editsLeft} edit${res.editsLeft === 1 ? '' : 's'} left; saved ${out} (${res.seconds.toFixed(1)} s)\n`);
        });
      });
  },
};
