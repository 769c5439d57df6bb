// run.ts — `npm run bench`: runs the benchmark sections (bench/<section>.ts) and prints one markdown
// report on stdout (progress goes to stderr); --json FILE also writes every figure as JSON.
// Benchmarks are scripts, never tests: nothing here gates anything.
//
//   npx tsx bench/run.ts [--backend cpu|cuda|auto] [--only runtime[,cpu,edit,methods]] [--quick] [--json FILE]
//
// A section is a module exporting `section: BenchSection` (see below; import its types with `import type`). Sections run in SECTIONS order;
// an optional one (e.g. bench/edit.ts) is picked up when its file exists, so adding it needs no change here.

import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { loadNative, resolveAutoBackend } from '../lib/info.js';
import type { BackendName, NativeInfo } from '../lib/native.js';
import { packageRoot } from '../lib/paths.js';

// ---- the section contract ---------------------------------------------------------------------------

export interface BenchContext {
  /** The resolved backend every figure of the run is measured on. */
  backend: BackendName;
  /** Fewer repetitions and shorter samples (a smoke run; figures are noisier). */
  quick: boolean;
  /** Package root (absolute). */
  root: string;
  /** The addon's info() (CUDA devices, CPU threads). */
  native: NativeInfo;
  /** Progress line on stderr (stdout carries only the report). */
  log(msg: string): void;
}

export interface SectionResult {
  /** Markdown for the report (starts with a "## " heading). */
  markdown: string;
  /** Every figure of the section, JSON-serialisable. */
  json: unknown;
}

export interface BenchSection {
  name: string;
  /** One line for --help. */
  description: string;
  run(ctx: BenchContext): Promise<SectionResult>;
}

interface SectionEntry {
  name: string;
  /** Loads the module; undefined when an optional section's file is absent. */
  load: (() => Promise<{ section: BenchSection }>) | undefined;
}

const benchDir = dirname(fileURLToPath(import.meta.url));

/** A section that lives in bench/<name>.ts when someone has added it (imported by URL: tsx compiles it). */
function optional(name: string): SectionEntry {
  const file = join(benchDir, `${name}.ts`);
  return { name, load: existsSync(file) ? () => import(pathToFileURL(file).href) as Promise<{ section: BenchSection }> : undefined };
}

const SECTIONS: SectionEntry[] = [
  { name: 'runtime', load: () => import('./runtime.js') },
  optional('cpu'),
  optional('edit'),
  optional('methods'),
];

// ---- run metadata -----------------------------------------------------------------------------------

export interface MachineInfo {
  cpuModel: string;
  cpuCores: number; // logical CPUs (os.cpus().length)
  cpuThreads: number; // threads the CPU backend uses
  memoryGiB: number;
  /** 1-minute load average when the run started (other work on the machine skews every figure). */
  loadAverage1m: number;
  os: string;
  node: string;
  cuda: { available: boolean; reason: string; devices: { name: string; computeCapability: string; memoryGiB: number }[] };
}

function machineInfo(ni: NativeInfo): MachineInfo {
  const cpus = os.cpus();
  return {
    cpuModel: cpus[0]?.model.trim() ?? 'unknown',
    cpuCores: cpus.length,
    cpuThreads: ni.cpuThreads,
    memoryGiB: +(os.totalmem() / 2 ** 30).toFixed(1),
    loadAverage1m: +os.loadavg()[0]!.toFixed(2),
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    node: process.version,
    cuda: {
      available: ni.cuda.available,
      reason: ni.cuda.reason,
      devices: ni.cuda.devices.map((d) => ({ name: d.name, computeCapability: d.computeCapability, memoryGiB: +(d.totalMemory / 2 ** 30).toFixed(1) })),
    },
  };
}

/** CPU ticks (USER_HZ) busy on the whole machine, and used by this process and its waited-for children. Linux only. */
function cpuTicks(): { busy: number; total: number; own: number } | undefined {
  try {
    const cpu = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = cpu;
    const self = readFileSync('/proc/self/stat', 'utf8');
    const f = self.slice(self.lastIndexOf(')') + 2).split(' ').map(Number); // fields from 3 (state) on
    const own = f[11]! + f[12]! + f[13]! + f[14]!; // utime stime cutime cstime (fields 14-17)
    return { busy: user + nice + system + irq + softirq, total: user + nice + system + idle + iowait + irq + softirq + steal, own };
  } catch {
    return undefined;
  }
}

/** Share of the machine's CPU time used by other processes between two cpuTicks() readings. */
function otherLoad(a: ReturnType<typeof cpuTicks>, b: ReturnType<typeof cpuTicks>): number | null {
  if (!a || !b || b.total <= a.total) return null;
  return Math.max(0, (b.busy - a.busy - (b.own - a.own)) / (b.total - a.total));
}

function gitCommit(root: string): string | null {
  try {
    const head = execFileSync('git', ['rev-parse', 'HEAD'], { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    let dirty = false;
    try {
      dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim() !== '';
    } catch {
      /* unknown: report the commit alone */
    }
    return dirty ? `${head}+dirty` : head;
  } catch {
    return null;
  }
}

// ---- main -------------------------------------------------------------------------------------------

const HELP = `usage: npm run bench -- [options]     (or: npx tsx bench/run.ts [options])

  --backend cpu|cuda|auto   backend to measure (default auto: REPAIR_BACKEND, else cuda when available, else cpu)
  --only NAMES              comma-separated sections to run (default: all present)
  --quick                   fewer repetitions (smoke run; noisier figures)
  --json FILE               also write every figure, the machine, backend, date and commit as JSON
  --help

sections:
`;

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      backend: { type: 'string', default: 'auto' },
      json: { type: 'string' },
      only: { type: 'string' },
      quick: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
    strict: true,
    allowPositionals: false,
  });

  if (values.help) {
    const lines: string[] = [];
    for (const s of SECTIONS) {
      if (!s.load) {
        lines.push(`  ${s.name.padEnd(10)} (bench/${s.name}.ts not present)`);
        continue;
      }
      const { section } = await s.load();
      lines.push(`  ${s.name.padEnd(10)} ${section.description}`);
    }
    process.stdout.write(HELP + lines.join('\n') + '\n');
    return 0;
  }

  const choice = values.backend;
  if (choice !== 'auto' && choice !== 'cpu' && choice !== 'cuda') throw new Error(`--backend must be cpu, cuda or auto, got "${choice}"`);

  const wanted = values.only ? values.only.split(',').map((s) => s.trim()).filter(Boolean) : undefined;
  for (const w of wanted ?? []) {
    const e = SECTIONS.find((s) => s.name === w);
    if (!e) throw new Error(`--only: unknown section "${w}" (known: ${SECTIONS.map((s) => s.name).join(', ')})`);
    if (!e.load) throw new Error(`--only: section "${w}" is not present (bench/${w}.ts does not exist)`);
  }
  const toRun = SECTIONS.filter((s) => s.load && (!wanted || wanted.includes(s.name)));

  const root = packageRoot();
  const ni = loadNative().info();
  const backend: BackendName = choice === 'auto' ? resolveAutoBackend(ni.cuda.available) : choice;
  if (backend === 'cuda' && !ni.cuda.available) throw new Error(`--backend cuda: CUDA is not available (${ni.cuda.reason || 'no device'})`);

  const machine = machineInfo(ni);
  const date = new Date().toISOString();
  const commit = gitCommit(root);
  const command = ['npx', 'tsx', 'bench/run.ts', ...process.argv.slice(2)].join(' ');
  const ctx: BenchContext = {
    backend,
    quick: values.quick,
    root,
    native: ni,
    log: (msg) => process.stderr.write(`[bench] ${msg}\n`),
  };

  const out: string[] = [];
  out.push('# repair-edit benchmarks', '');
  out.push(`- command: \`${command}\`${values.quick ? ' (quick: fewer repetitions)' : ''}`);
  out.push(`- date: ${date}`);
  out.push(`- commit: ${commit ?? 'unknown (not a git checkout)'}`);
  out.push(`- backend: **${backend}**${choice === 'auto' ? ' (auto)' : ''}`);
  out.push(`- CPU: ${machine.cpuModel}, ${machine.cpuCores} logical CPUs (CPU backend threads: ${machine.cpuThreads}), ${machine.memoryGiB} GiB RAM`);
  out.push(`- OS: ${machine.os}; Node ${machine.node}; load average (1 min) at start: ${machine.loadAverage1m}`);
  out.push(
    `- CUDA: ${
      machine.cuda.available
        ? machine.cuda.devices.map((d) => `${d.name} (sm ${d.computeCapability}, ${d.memoryGiB} GiB)`).join(', ')
        : `not available (${machine.cuda.reason || 'no device'})`
    }`,
  );
  out.push('');

  const ticks0 = cpuTicks();
  const results: Record<string, unknown> = {};
  for (const s of toRun) {
    const { section } = await s.load!();
    ctx.log(`section ${section.name} on ${backend}`);
    const t0 = performance.now();
    const r = await section.run(ctx);
    ctx.log(`section ${section.name} done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    out.push(r.markdown.trimEnd(), '');
    results[section.name] = r.json;
  }

  // Other work on the machine skews every figure: say how much there was.
  const others = otherLoad(ticks0, cpuTicks());
  if (others !== null) {
    const pct = (100 * others).toFixed(1);
    out.push(
      others > 0.05
        ? `> **Warning**: other processes used ${pct} % of this machine's CPU time during the run; the figures above are skewed. Rerun on a quiet machine.`
        : `Other processes used ${pct} % of this machine's CPU time during the run.`,
      '',
    );
  }

  process.stdout.write(out.join('\n').trimEnd() + '\n');

  if (values.json) {
    const file = resolve(values.json);
    mkdirSync(dirname(file), { recursive: true });
    const doc = { date, commit, command, backend, backendChoice: choice, quick: values.quick, machine, otherProcessesCpuShare: others, sections: results };
    writeFileSync(file, JSON.stringify(doc, null, 2) + '\n');
    ctx.log(`wrote ${file}`);
  }
  return 0;
}

// Run only as the entry script (a section importing a value from here must not start a second run).
const isEntry = process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (isEntry) void main().then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`bench: ${e instanceof Error ? e.message : String(e)}\n`);
    if (e instanceof Error && e.stack && process.env.BENCH_DEBUG) process.stderr.write(e.stack + '\n');
    process.exitCode = 1;
  },
);
