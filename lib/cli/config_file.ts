// cli/config_file.ts — `--config FILE` and `--print-config`: a JSON or YAML file holding editor options
// (the API's EditorOptions, camelCase, `repair:` for the closed loop's options, as EasyEdit users keep a
// hyper-parameter YAML per model) and the runtime keys model / backend / device / threads. Flags given on
// the command line override the file; the file overrides the presets. Editor keys are checked by the same
// validation as the API (Editor.create), reported as ERR_CONFIG naming the file and the key, on every
// command that takes --config (those that only load saved memories check them without using them).

import { readFileSync } from 'node:fs';
import { extname } from 'node:path';
import type { Command } from 'commander';
import { parse as parseYaml } from 'yaml';
import { RepairError, toRepairError } from '../errors.js';
import type { EditorOptions } from '../editor.js';
import { resolveConfig } from '../editor/config.js';
import { loadModel, type BackendChoice, type Model } from '../model.js';
import { parseSafetensorsHeader } from '../safetensors.js';
import { givenOnCli, resolveModelDir, writeOut } from './common.js';

/** Keys of a config file that are not editor options: where and how to run. */
export const RUNTIME_KEYS = ['model', 'backend', 'device', 'threads'] as const;

export interface RuntimeOptions {
  model?: string;
  backend: BackendChoice;
  device?: number;
  threads?: number;
}

export interface ConfigFile {
  file: string;
  runtime: Partial<RuntimeOptions>;
  /** Every other key, as given (validated when an editor is built). */
  editor: EditorOptions;
}

const configError = (file: string, key: string | undefined, msg: string, cause?: unknown): RepairError =>
  new RepairError('ERR_CONFIG', `${file}: ${key !== undefined ? `key "${key}": ` : ''}${msg}`, key !== undefined ? { file, field: key } : { file }, cause !== undefined ? { cause } : undefined);

/** Read a config file: JSON (.json) or YAML (.yaml, .yml, anything else), one mapping at the top. */
export function readConfigFile(file: string): ConfigFile {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new RepairError('ERR_IO', `cannot read the config file ${file}${code === 'ENOENT' ? ': it does not exist' : ` (${code ?? (e as Error).message})`}`, { file }, { cause: e });
  }
  let v: unknown;
  try {
    v = extname(file).toLowerCase() === '.json' ? JSON.parse(text) : parseYaml(text);
  } catch (e) {
    throw configError(file, undefined, `not valid ${extname(file).toLowerCase() === '.json' ? 'JSON' : 'YAML'} (${(e as Error).message.split('\n')[0]})`, e);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw configError(file, undefined, 'must hold one mapping of option names to values (e.g. lr: 1.0e-4)');
  const runtime: Partial<RuntimeOptions> = {};
  const editor: Record<string, unknown> = {};
  for (const [k, val] of Object.entries(v as Record<string, unknown>)) {
    if (val === null || val === undefined) throw configError(file, k, 'has no value');
    if (k === 'model') {
      if (typeof val !== 'string' || val === '') throw configError(file, k, `must be a model folder (a string), got ${JSON.stringify(val)}`);
      runtime.model = val;
    } else if (k === 'backend') {
      if (val !== 'auto' && val !== 'cpu' && val !== 'cuda') throw configError(file, k, `must be auto, cpu or cuda, got ${JSON.stringify(val)}`);
      runtime.backend = val;
    } else if (k === 'device' || k === 'threads') {
      const hi = k === 'device' ? 1024 : 4096;
      if (typeof val !== 'number' || !Number.isSafeInteger(val) || val < 0 || val > hi) throw configError(file, k, `must be an integer in [0, ${hi}], got ${JSON.stringify(val)}`);
      runtime[k] = val;
    } else editor[k] = val;
  }
  return { file, runtime, editor: editor as EditorOptions };
}

/** The runtime options: flags given on the command line, else the file's, else the flags' defaults. */
export function mergeRuntime(cmd: Command, o: Partial<RuntimeOptions>, cfg: ConfigFile | undefined): RuntimeOptions {
  const r = cfg?.runtime ?? {};
  const pick = <K extends keyof RuntimeOptions>(k: K): RuntimeOptions[K] | undefined => (givenOnCli(cmd, k) || r[k] === undefined ? o[k] : r[k]) as RuntimeOptions[K] | undefined;
  return { model: pick('model'), backend: pick('backend') ?? 'auto', device: pick('device'), threads: pick('threads') };
}

/** Editor options: the file's, with the flags' on top (`repair` merged key by key). */
export function mergeEditor(cfg: ConfigFile | undefined, flags: EditorOptions): EditorOptions {
  const out: EditorOptions = { ...(cfg?.editor ?? {}), ...flags };
  if (cfg?.editor.repair !== undefined || flags.repair !== undefined) {
    const fileRepair = cfg?.editor.repair;
    if (fileRepair !== undefined && (typeof fileRepair !== 'object' || fileRepair === null || Array.isArray(fileRepair))) {
      throw configError(cfg!.file, 'repair', 'must be a mapping of REPAIR option names to values');
    }
    out.repair = { ...(fileRepair ?? {}), ...(flags.repair ?? {}) };
  }
  return out;
}

/**
 * Run `fn` (which builds editors); an invalid editor option that came from the config file (not from a
 * flag) is reported as ERR_CONFIG naming the file and the key.
 */
export async function withConfigErrors<T>(cfg: ConfigFile | undefined, flags: EditorOptions, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    const err = toRepairError(e);
    const field = typeof err.details?.field === 'string' ? err.details.field : undefined;
    if (!cfg || err.code !== 'ERR_INVALID_ARG' || field === undefined) throw err;
    const repairKeys = Object.keys((cfg.editor.repair as Record<string, unknown> | undefined) ?? {});
    const inFile = field in cfg.editor && !(field in flags);
    const inRepair = repairKeys.includes(field) && !(field in (flags.repair ?? {}));
    if (!inFile && !inRepair) throw err;
    throw configError(cfg.file, inFile ? field : `repair.${field}`, err.message, err);
  }
}

/** Commander options shared by every command that reads a config file. */
export function addConfigOptions(c: Command, what: string): Command {
  return c
    .option('--config <file>', `JSON or YAML file of options (${what}; keys as the API's EditorOptions, plus model, backend, device, threads); flags override it`)
    .option('--print-config', 'print the resolved configuration (JSON) and exit');
}

/** The editor configuration a memory file was saved with (read from its header; no model needed). */
export function savedEditorConfig(file: string): Record<string, unknown> {
  try {
    const meta = JSON.parse(parseSafetensorsHeader(file).metadata.editor ?? '{}') as { config?: Record<string, unknown> };
    if (typeof meta.config !== 'object' || meta.config === null) throw new Error('no config');
    return meta.config;
  } catch (e) {
    throw e instanceof RepairError ? e : new RepairError('ERR_MEMORY_FILE', `${file}: cannot read its saved configuration (${(e as Error).message})`, { file }, { cause: e });
  }
}

/**
 * The editor keys of a config file checked as Editor.create resolves them on `model` (the model's preset,
 * then the file's keys; the same validation as the API, no editor built): ERR_CONFIG naming the file and
 * the key (`repair.<key>` for the closed loop's options).
 */
export function checkEditorConfig(cfg: ConfigFile | undefined, model: Model): void {
  if (!cfg || Object.keys(cfg.editor).length === 0) return;
  const opts = mergeEditor(cfg, {});
  try {
    resolveConfig(model, opts);
  } catch (e) {
    const err = toRepairError(e);
    if (err.code !== 'ERR_INVALID_ARG') throw err;
    const field = typeof err.details?.field === 'string' ? err.details.field : undefined;
    const key = field === undefined ? undefined : field in cfg.editor ? field : `repair.${field}`;
    throw configError(cfg.file, key, err.message, err);
  }
}

/** What loadOnlyConfig resolves: the runtime options, and the check of the file's editor keys on the model. */
export interface LoadOnlyConfig extends RuntimeOptions {
  /** checkEditorConfig on the loaded model, then the note that the editor keys do not apply here. */
  checkEditor(model: Model): void;
}

/**
 * --config / --print-config for the commands that only load saved memories (generate, explain, memory):
 * the runtime keys apply; editor keys do not (a memory file keeps the configuration it was saved with)
 * but are validated as Editor.create would (ERR_CONFIG naming the file and the key: checkEditor once the
 * model is loaded; --print-config loads the model to check them) and named on stderr. With --print-config,
 * prints the resolved configuration and returns null.
 */
export async function loadOnlyConfig(cmd: Command, o: Partial<RuntimeOptions> & { config?: string; printConfig?: boolean; memory?: string }): Promise<LoadOnlyConfig | null> {
  const cfg = o.config !== undefined ? readConfigFile(o.config) : undefined;
  const rt = mergeRuntime(cmd, o, cfg);
  const ignored = Object.keys(cfg?.editor ?? {});
  if (o.printConfig) {
    if (ignored.length) {
      await using model = await loadModel(resolveModelDir(rt.model), { backend: rt.backend, device: rt.device, threads: rt.threads });
      checkEditorConfig(cfg, model);
    }
    const editor = o.memory !== undefined ? savedEditorConfig(o.memory) : null;
    await writeOut(`${JSON.stringify({ configFile: cfg?.file ?? null, ...rt, model: resolveModelDir(rt.model), editor, ...(ignored.length ? { ignored } : {}) }, null, 2)}\n`);
    return null;
  }
  return {
    ...rt,
    checkEditor(model: Model): void {
      checkEditorConfig(cfg, model);
      if (ignored.length) process.stderr.write(`repair-edit: note: ${cfg!.file}: editor option${ignored.length === 1 ? '' : 's'} ${ignored.join(', ')} ${ignored.length === 1 ? 'does' : 'do'} not apply here (a saved memory keeps its configuration)\n`);
    },
  };
}
