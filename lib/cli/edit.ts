// cli/edit.ts — `repair-edit edit --edits FILE.jsonl --out memory.safetensors [options]`: apply the
// edits of a JSONL file one after another and save the side memories.

import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import cliProgress from 'cli-progress';
import type { Command } from 'commander';
import { RepairError } from '../errors.js';
import { Editor, type RepairEvent } from '../editor.js';
import { loadModel, type BackendChoice } from '../model.js';
import { addJsonOptions, checkWritable, choiceOption, emit, floatOption, formatTable, givenOnCli, intOption, interruptSignal, resolveModelDir, usageError, writeOut, type CliCommand, type JsonOutput } from './common.js';
import { addConfigOptions, mergeEditor, mergeRuntime, readConfigFile, withConfigErrors } from './config_file.js';
import { editLocation, editorOptions, fmtNum, loadEditor, precheckRecords, readEditsFile, type EditorCliOptions } from './memory.js';

interface EditCliOptions extends EditorCliOptions, JsonOutput {
  model?: string;
  edits: string;
  out: string;
  memory?: string;
  backend: BackendChoice;
  device?: number;
  threads?: number;
  resume?: boolean;
  checkpointSecs: number;
  config?: string;
  printConfig?: boolean;
}

const EDITOR_FLAGS: [keyof EditorCliOptions, string][] = [
  ['method', '--method'],
  ['layer', '--layer'],
  ['saveFreq', '--save-freq'],
  ['mergeFreq', '--merge-freq'],
  ['nIter', '--n-iter'],
  ['lr', '--lr'],
  ['seed', '--seed'],
  ['chat', '--chat/--no-chat'],
];

/** A batch of the REPAIR loop (its figures are the batch's, shared by the edits trained in it). */
interface BatchFigures {
  index: number;
  size: number;
  steps: number;
  /** Last-step loss of the batch (CE + routing margin + distillation, summed over its samples). */
  loss: number;
  /** Wall time from the previous batch (or the start) until this batch was in: training plus the loop's monitoring. */
  seconds: number;
}

interface EditRow {
  id: string;
  line: number;
  prompt: string;
  target: string;
  /** Optimisation steps of the training that put the edit in (its batch's, for repair). */
  steps: number;
  /** Last-step loss of that training (CE + routing margin; the batch's, for repair). */
  loss: number;
  /** This edit's own share of the cross-entropy at the last step. */
  editLoss: number | null;
  /** This edit's routing statistic at the last step (what sets its memory's threshold). */
  score: number;
  memory: 'working' | number | null;
  /** This edit's wall time (wise, ft); null for repair, whose time is per batch. */
  ms: number | null;
  /** repair: the batch that last trained it. */
  batch: BatchFigures | null;
}

/** Progress on stderr: a bar on a terminal, else one line per finished edit. */
function progress(total: number, nIter: number) {
  if (process.stderr.isTTY) {
    const bar = new cliProgress.SingleBar(
      {
        stream: process.stderr,
        format: 'editing [{bar}] {edit}/{edits} {id}  step {step}/{nIter}  loss {loss}  {duration_formatted}',
        hideCursor: true,
        clearOnComplete: true,
        fps: 10,
      },
      cliProgress.Presets.shades_classic,
    );
    bar.start(total * nIter, 0, { edit: 0, edits: total, id: '', step: 0, nIter, loss: '-' });
    return {
      step(i: number, id: string, step: number, loss: number) {
        bar.update(i * nIter + Math.min(step, nIter), { edit: i + 1, id, step, loss: fmtNum(loss, 3) });
      },
      done(i: number, r: EditRow) {
        bar.update((i + 1) * nIter, { edit: i + 1, id: r.id, step: r.steps, loss: fmtNum(r.loss, 3) });
      },
      stop() {
        bar.stop();
      },
    };
  }
  return {
    step() {},
    done(i: number, r: EditRow) {
      const t = r.ms !== null ? `${(r.ms / 1000).toFixed(2)} s` : `batch ${r.batch!.index} (${r.batch!.size} edits, ${r.batch!.seconds.toFixed(2)} s)`;
      process.stderr.write(`edit ${i + 1}/${total} ${r.id} (line ${r.line}): ${r.steps} steps, loss ${fmtNum(r.loss, 3)}, ${t}\n`);
    },
    stop() {},
  };
}

/**
 * The results table: one row per edit with its own figures (its CE share, routing score, memory); where a
 * figure belongs to a REPAIR batch (steps, loss, time) it is shown once, on the batch's first row, and
 * marked. Returns the table and its footnote lines.
 */
export function editTable(rows: readonly EditRow[]): string {
  const where = (r: EditRow) => (r.memory === null ? '-' : r.memory === 'working' ? 'working' : String(r.memory));
  const own = (r: EditRow) => [r.id, String(r.line), r.editLoss === null ? '-' : fmtNum(r.editLoss, 4), fmtNum(r.score, 2), where(r)];
  if (!rows.some((r) => r.batch)) {
    return formatTable(
      ['id', 'line', 'edit CE', 'score', 'memory', 'steps', 'final loss', 'seconds'],
      rows.map((r) => [...own(r), String(r.steps), fmtNum(r.loss, 4), r.ms === null ? '-' : (r.ms / 1000).toFixed(2)]),
      ['l', 'r', 'r', 'r', 'l', 'r', 'r', 'r'],
    );
  }
  const seen = new Set<number>();
  const table = formatTable(
    ['id', 'line', 'edit CE', 'score', 'memory', 'batch', 'steps*', 'batch loss*', 'seconds*'],
    rows.map((r) => {
      const b = r.batch;
      if (!b) return [...own(r), '-', '-', '-', '-'];
      const first = !seen.has(b.index);
      seen.add(b.index);
      return [...own(r), `${b.index} (${b.size})`, ...(first ? [String(b.steps), fmtNum(b.loss, 4), b.seconds.toFixed(2)] : ['·', '·', '·'])];
    }),
    ['l', 'r', 'r', 'r', 'l', 'r', 'r', 'r', 'r'],
  );
  return `${table}\n* per batch (the closed loop trains edits in batches: 'batch' is the batch that last trained the edit, with its size); shown on the batch's first row, · on the others. seconds = wall time until the batch was in, the loop's monitoring included.`;
}

export const editCommand: CliCommand = {
  name: 'edit',
  register(program: Command): void {
    const c = program
      .command('edit')
      .description('apply the edits of a JSONL file ({prompt, target, rephrase?, irrelevant?, locality?, id?, subject?} per line) and save the side memories')
      .option('--edits <file>', 'the edits, one JSON object per line (blank lines are skipped); required')
      .option('--out <file>', 'where to save the side memories (safetensors; written atomically); required')
      .option('--model <dir>', 'Hugging Face model folder (default: the shipped stories260K demo model)')
      .option('--memory <file>', 'continue editing this saved memory (its configuration is kept)')
      .option('--resume', 'continue an interrupted run: load --out when it exists (its saved configuration is kept) and skip the edits it already holds (same id, or same prompt and target)')
      .option('--checkpoint-secs <s>', 'save --out (atomically) after a finished edit when this many seconds passed since the last save; 0 = after every edit', intOption(0, 86400), 30)
      .option('--method <name>', 'wise | repair | ft (default: wise); repair runs the closed loop over the whole file', choiceOption(['wise', 'repair', 'ft'] as const))
      .option('--layer <n>', "decoder layer whose MLP down-projection gets side memories (default: the model's preset)", intOption(0))
      .option('--save-freq <n>', 'freeze the working memory as a new memory every n edits (default 500)', intOption(1))
      .option('--merge-freq <n>', 'TIES-merge the frozen memories every n edits; a multiple of --save-freq (default 1000)', intOption(1))
      .option('--n-iter <n>', "optimisation steps per edit (default: the model's preset)", intOption(1, 100000))
      .option('--lr <x>', "learning rate (default: the model's preset)", floatOption((x) => x > 0, 'a number > 0'))
      .option('--seed <s>', 'seed of the context templates and shard masks (uint32, default 0)', intOption(0, 0xffffffff))
      .option('--chat', 'train the edits through the chat template (default: on for instruct/chat models whose tokenizer has one)')
      .option('--no-chat', 'train the edits on the plain prompt text, even for an instruct model')
      .option('--backend <name>', 'auto | cpu | cuda (auto honours REPAIR_BACKEND)', choiceOption(['auto', 'cpu', 'cuda'] as const), 'auto')
      .option('--device <n>', 'CUDA device index', intOption(0, 1024))
      .option('--threads <n>', 'CPU threads (0 = all)', intOption(0, 4096));
    addConfigOptions(addJsonOptions(c, 'the results'), 'every editor option, e.g. lr, nIter, layer, repair: {...}').action(async (o: EditCliOptions, cmd: Command) => {
      if (!o.printConfig) for (const [k, f] of [['edits', '--edits <file>'], ['out', '--out <file>']] as const) if (o[k] === undefined) usageError(cmd, `required option '${f}' not specified`);
      if (o.resume && o.memory !== undefined) usageError(cmd, '--resume continues --out; it cannot be combined with --memory');
      if (o.memory !== undefined) {
        const clash = EDITOR_FLAGS.filter(([k]) => givenOnCli(cmd, k)).map(([, f]) => f);
        if (clash.length) usageError(cmd, `${clash.join(', ')} cannot be combined with --memory (a saved memory keeps its configuration)`);
      }
      if (o.saveFreq !== undefined && o.mergeFreq !== undefined && o.mergeFreq % o.saveFreq !== 0) {
        usageError(cmd, `--merge-freq (${o.mergeFreq}) must be a multiple of --save-freq (${o.saveFreq})`);
      }
      const cfg = o.config !== undefined ? readConfigFile(o.config) : undefined;
      const rt = mergeRuntime(cmd, o, cfg);
      const flags = editorOptions(o);
      const opts = mergeEditor(cfg, flags);
      const records = o.printConfig ? [] : readEditsFile(o.edits);
      if (!o.printConfig) checkWritable(o.out, '--out');
      if (o.jsonFile !== undefined) checkWritable(o.jsonFile, '--json-file');
      const dir = resolveModelDir(rt.model);
      const intr = interruptSignal();
      const t0 = performance.now();
      try {
        await using model = await loadModel(dir, { backend: rt.backend, device: rt.device, threads: rt.threads, signal: intr.signal });
        const resumeFrom = o.resume && existsSync(o.out) ? o.out : undefined;
        const from = o.memory ?? resumeFrom;
        if (from !== undefined && cfg && Object.keys(cfg.editor).length && !o.printConfig) {
          process.stderr.write(`repair-edit: note: ${cfg.file}: its editor options do not apply to ${from} (a saved memory keeps its configuration)\n`);
        }
        await using editor = from !== undefined ? await loadEditor(model, from, intr.signal) : await withConfigErrors(cfg, flags, () => Editor.create(model, opts));
        if (o.printConfig) {
          await writeOut(`${JSON.stringify({ configFile: cfg?.file ?? null, ...rt, model: model.dir, backend: model.backend, editor: editor.config, editorFrom: from ?? null }, null, 2)}\n`);
          return;
        }
        const given = records.length;
        if (resumeFrom) {
          // skip what the checkpoint already holds (trained, or queued by an interrupted repair loop)
          const held = new Set<string>();
          const keyOf = (r: { prompt: string; target: string }) => `${r.prompt}\u0000${r.target}`;
          for (const id of [...editor.edits(), ...editor.pending().queued]) {
            const e = editor.editInfo(id);
            held.add(`id:${id}`);
            if (e) held.add(keyOf(e.request));
          }
          const left = records.filter((r) => !(r.request.id !== undefined ? held.has(`id:${r.request.id}`) : held.has(keyOf(r.request))));
          process.stderr.write(`repair-edit: resuming ${o.out}: ${given - left.length} of ${given} edits already held, ${left.length} to go\n`);
          records.splice(0, records.length, ...left);
        }
        precheckRecords(editor, records, o.edits);
        const nIter = editor.config.nIter;
        const bar = progress(records.length, nIter);
        const rows: EditRow[] = [];
        let lastSave = performance.now();
        const checkpoint = async (force: boolean) => {
          if (!force && performance.now() - lastSave < o.checkpointSecs * 1000) return;
          await editor.save(o.out); // atomic; no signal: a checkpoint is never half-done
          lastSave = performance.now();
        };
        const editLoss = (id: string) => editor.editInfo(id)?.loss ?? null;
        try {
          if (editor.config.method === 'repair' && (records.length > 0 || editor.pending().queued.length > 0)) {
            // The closed loop decides batches, retraining and pruning over the whole file at once.
            const reqs = records.map((r) => ({ ...r.request, id: r.request.id ?? `line${r.line}` }));
            const batches: BatchFigures[] = [];
            const batchOf = new Map<string, BatchFigures>();
            let tb = performance.now();
            const res = await editor.editMany(reqs, {
              signal: intr.signal,
              onEvent: (e: RepairEvent) => {
                if (e.type === 'edit-trained') {
                  const now = performance.now();
                  const b: BatchFigures = { index: batches.length + 1, size: e.ids.length, steps: e.steps, loss: e.loss, seconds: (now - tb) / 1000 };
                  tb = now;
                  batches.push(b);
                  for (const id of e.ids) batchOf.set(id, b); // the last batch that trained it
                } else process.stderr.write(`repair-edit: ${e.type} ${JSON.stringify({ ...e, type: undefined })}\n`);
              },
            });
            const last = new Map<string, (typeof res.results)[number]>();
            for (const r of res.results) last.set(r.id, r);
            records.forEach((rec, i) => {
              const r = last.get(reqs[i]!.id);
              if (!r) return; // given up by the loop (reported on stderr)
              const b = batchOf.get(r.id) ?? null;
              const row: EditRow = { id: r.id, line: rec.line, prompt: rec.request.prompt, target: rec.request.target, steps: r.steps, loss: r.losses.at(-1) ?? Number.NaN, editLoss: editLoss(r.id), score: r.score, memory: r.memory, ms: null, batch: b };
              rows.push(row);
              bar.done(i, row);
            });
          } else
            for (const [i, rec] of records.entries()) {
              const te = performance.now();
              const label = rec.request.id ?? `line ${rec.line}`;
              const r = await editor.edit(rec.request, { signal: intr.signal, onProgress: (p) => bar.step(i, label, p.step, p.loss) });
              const row: EditRow = {
                id: r.id,
                line: rec.line,
                prompt: rec.request.prompt,
                target: rec.request.target,
                steps: r.steps,
                loss: r.losses.at(-1) ?? Number.NaN,
                editLoss: editLoss(r.id),
                score: r.score,
                memory: r.memory,
                ms: performance.now() - te,
                batch: null,
              };
              rows.push(row);
              bar.done(i, row);
              await checkpoint(o.checkpointSecs === 0);
            }
        } catch (e) {
          if (e instanceof RepairError && e.code === 'ERR_ABORTED') {
            // Ctrl-C: nothing acknowledged is lost. An aborted edit leaves the editor as it was before it,
            // so what is saved holds every edit that finished (and a repair loop's queue).
            await editor.save(o.out);
            const done = editor.edits().length;
            throw new RepairError('ERR_ABORTED', `interrupted: ${o.out} holds the ${done} finished edit${done === 1 ? '' : 's'}; run the same command with --resume to continue`, { file: o.out });
          }
          throw e;
        } finally {
          bar.stop();
        }
        await editor.save(o.out, { signal: intr.signal });
        // Saves and merges may have moved earlier edits: report where each one lives now.
        for (const r of rows) r.memory = editLocation(editor, r.id) ?? null;
        const mem = editor.memories();
        const wallMs = performance.now() - t0;
        const total = mem.working.edits.length + mem.memories.reduce((a, m) => a + m.edits.length, 0);
        await emit(
          o,
          { out: resolve(o.out), continued: o.memory !== undefined ? resolve(o.memory) : null, model: model.dir, backend: model.backend, config: editor.config, results: rows, editCount: editor.editCount, memories: mem, wallMs },
          () =>
            `${editTable(rows)}\n\n` +
            `saved ${o.out}: ${total} edit${total === 1 ? '' : 's'} (${mem.working.edits.length} in the working memory, ${mem.memories.length} frozen/merged memor${mem.memories.length === 1 ? 'y' : 'ies'}); ` +
            `method ${editor.config.method}, layer ${editor.config.layer}, ${(wallMs / 1000).toFixed(1)} s\n`,
        );
      } finally {
        intr.done();
      }
    });
  },
};
