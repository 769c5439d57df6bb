// cli/edit.ts — `repair-edit edit --edits FILE.jsonl --out memory.safetensors [options]`: apply the
// edits of a JSONL file one after another and save the side memories.

import { existsSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import cliProgress from 'cli-progress';
import type { Command } from 'commander';
import { RepairError } from '../errors.js';
import { Editor } from '../editor.js';
import { loadModel, type BackendChoice } from '../model.js';
import { choiceOption, floatOption, formatTable, givenOnCli, intOption, interruptSignal, resolveModelDir, usageError, writeOut, type CliCommand } from './common.js';
import { editLocation, editorOptions, fmtNum, precheckRecords, readEditsFile, type EditorCliOptions } from './memory.js';

interface EditCliOptions extends EditorCliOptions {
  model?: string;
  edits: string;
  out: string;
  memory?: string;
  backend: BackendChoice;
  device?: number;
  threads?: number;
  json?: boolean;
  resume?: boolean;
  checkpointSecs: number;
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

interface EditRow {
  id: string;
  line: number;
  prompt: string;
  target: string;
  steps: number;
  loss: number;
  score: number;
  memory: 'working' | number | null;
  ms: number;
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
      process.stderr.write(`edit ${i + 1}/${total} ${r.id} (line ${r.line}): ${r.steps} steps, loss ${fmtNum(r.loss, 3)}, ${(r.ms / 1000).toFixed(2)} s\n`);
    },
    stop() {},
  };
}

export const editCommand: CliCommand = {
  name: 'edit',
  register(program: Command): void {
    program
      .command('edit')
      .description('apply the edits of a JSONL file ({prompt, target, rephrase?, irrelevant?, locality?, id?} per line) and save the side memories')
      .requiredOption('--edits <file>', 'the edits, one JSON object per line (blank lines are skipped)')
      .requiredOption('--out <file>', 'where to save the side memories (safetensors; written atomically)')
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
      .option('--threads <n>', 'CPU threads (0 = all)', intOption(0, 4096))
      .option('--json', 'print the results as JSON')
      .action(async (o: EditCliOptions, cmd: Command) => {
        if (o.resume && o.memory !== undefined) usageError(cmd, '--resume continues --out; it cannot be combined with --memory');
        if (o.memory !== undefined) {
          const clash = EDITOR_FLAGS.filter(([k]) => givenOnCli(cmd, k)).map(([, f]) => f);
          if (clash.length) usageError(cmd, `${clash.join(', ')} cannot be combined with --memory (a saved memory keeps its configuration)`);
        }
        if (o.saveFreq !== undefined && o.mergeFreq !== undefined && o.mergeFreq % o.saveFreq !== 0) {
          usageError(cmd, `--merge-freq (${o.mergeFreq}) must be a multiple of --save-freq (${o.saveFreq})`);
        }
        const records = readEditsFile(o.edits);
        const outDir = dirname(resolve(o.out));
        let isDir = false;
        try {
          isDir = statSync(outDir).isDirectory();
        } catch {
          /* reported below */
        }
        if (!isDir) throw new RepairError('ERR_IO', `cannot write ${o.out}: the folder ${outDir} does not exist`, { file: o.out });
        const dir = resolveModelDir(o.model);
        const intr = interruptSignal();
        const t0 = performance.now();
        try {
          await using model = await loadModel(dir, { backend: o.backend, device: o.device, threads: o.threads, signal: intr.signal });
          const resumeFrom = o.resume && existsSync(o.out) ? o.out : undefined;
          const from = o.memory ?? resumeFrom;
          await using editor = from !== undefined ? await Editor.load(model, from, { signal: intr.signal }) : await Editor.create(model, editorOptions(o));
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
          try {
            if (editor.config.method === 'repair' && (records.length > 0 || editor.pending().queued.length > 0)) {
              // The closed loop decides batches, retraining and pruning over the whole file at once.
              const te = performance.now();
              const reqs = records.map((r) => ({ ...r.request, id: r.request.id ?? `line${r.line}` }));
              const res = await editor.editMany(reqs, {
                signal: intr.signal,
                onEvent: (e) => {
                  if (e.type !== 'edit-trained') process.stderr.write(`repair-edit: ${e.type} ${JSON.stringify({ ...e, type: undefined })}\n`);
                },
              });
              const last = new Map<string, (typeof res.results)[number]>();
              for (const r of res.results) last.set(r.id, r);
              const ms = (performance.now() - te) / Math.max(1, records.length);
              records.forEach((rec, i) => {
                const r = last.get(reqs[i]!.id);
                if (!r) return; // given up by the loop (reported on stderr)
                const row: EditRow = { id: r.id, line: rec.line, prompt: rec.request.prompt, target: rec.request.target, steps: r.steps, loss: r.losses.at(-1) ?? Number.NaN, score: r.score, memory: r.memory, ms };
                rows.push(row);
                bar.done(i, row);
              });
            } else for (const [i, rec] of records.entries()) {
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
                score: r.score,
                memory: r.memory,
                ms: performance.now() - te,
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
              throw new RepairError(
                'ERR_ABORTED',
                `interrupted: ${o.out} holds the ${done} finished edit${done === 1 ? '' : 's'}; run the same command with --resume to continue`,
                { file: o.out },
              );
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
          if (o.json) {
            await writeOut(
              `${JSON.stringify(
                {
                  out: resolve(o.out),
                  continued: o.memory !== undefined ? resolve(o.memory) : null,
                  model: model.dir,
                  backend: model.backend,
                  config: editor.config,
                  results: rows,
                  editCount: editor.editCount,
                  memories: mem,
                  wallMs,
                },
                null,
                2,
              )}\n`,
            );
            return;
          }
          const table = formatTable(
            ['id', 'line', 'steps', 'final loss', 'memory', 'seconds'],
            rows.map((r) => [r.id, String(r.line), String(r.steps), fmtNum(r.loss, 4), r.memory === null ? '-' : r.memory === 'working' ? 'working' : String(r.memory), (r.ms / 1000).toFixed(2)]),
            ['l', 'r', 'r', 'r', 'l', 'r'],
          );
          const total = mem.working.edits.length + mem.memories.reduce((a, m) => a + m.edits.length, 0);
          await writeOut(
            `${table}\n\n` +
              `saved ${o.out}: ${total} edit${total === 1 ? '' : 's'} (${mem.working.edits.length} in the working memory, ${mem.memories.length} frozen/merged memor${mem.memories.length === 1 ? 'y' : 'ies'}); ` +
              `method ${editor.config.method}, layer ${editor.config.layer}, ${(wallMs / 1000).toFixed(1)} s\n`,
          );
        } finally {
          intr.done();
        }
      });
  },
};
