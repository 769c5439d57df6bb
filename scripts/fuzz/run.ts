// npm run fuzz -- [--cases N] [--seed S] [--workers W] [--kinds a,b] [--max-seconds T] [--hang-ms MS]
//                 [--only-case I] [--json FILE] [--md FILE]
//
// The supervisor: case i of seed S is always the same input (scripts/fuzz/cases.ts), so a run is
// reproducible and one case replays with --only-case. Each case runs in a worker process; a worker that
// dies (signal, abort, non-zero exit) is a crash, one that does not answer within --hang-ms a hang (it is
// killed with SIGKILL); either way a fresh worker takes over and the run goes on. At the end one table:
// cases, typed errors by code, untyped errors, crashes, hangs, inputs that loaded and how many changed
// behaviour, NaN outputs, tampered memory files accepted and broken fault-script promises.
import { fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { KINDS, caseSeed, kindOf, type CaseResult, type Kind } from './cases.js';

const { values: a } = parseArgs({
  options: {
    cases: { type: 'string', default: '1000' },
    seed: { type: 'string', default: '1' },
    workers: { type: 'string', default: '1' },
    kinds: { type: 'string', default: KINDS.join(',') },
    'max-seconds': { type: 'string', default: '0' },
    'hang-ms': { type: 'string', default: '60000' },
    'only-case': { type: 'string' },
    json: { type: 'string' },
    md: { type: 'string' },
    quiet: { type: 'boolean', default: false },
  },
});
const total = Number(a.cases);
const seed = Number(a.seed);
const nWorkers = Math.max(1, Number(a.workers));
const kinds = a.kinds!.split(',').filter(Boolean) as Kind[];
for (const k of kinds) if (!(KINDS as readonly string[]).includes(k)) throw new Error(`unknown kind ${k} (${KINDS.join(', ')})`);
const maxMs = Number(a['max-seconds']) * 1000;
const hangMs = Number(a['hang-ms']);
const only = a['only-case'] !== undefined ? Number(a['only-case']) : undefined;

interface Row {
  cases: number;
  codes: Record<string, number>;
  untyped: number;
  crashes: number;
  hangs: number;
  loaded: number;
  changed: number;
  nan: number;
  tampered: number;
  violations: number;
}
const rows = new Map<Kind, Row>();
const row = (k: Kind): Row => {
  let r = rows.get(k);
  if (!r) rows.set(k, (r = { cases: 0, codes: {}, untyped: 0, crashes: 0, hangs: 0, loaded: 0, changed: 0, nan: 0, tampered: 0, violations: 0 }));
  return r;
};
const findings: { index: number; kind: Kind; what: string; detail?: string }[] = [];

function record(index: number, kind: Kind, res: CaseResult | 'crash' | 'hang', detail?: string): void {
  const r = row(kind);
  r.cases++;
  if (res === 'crash' || res === 'hang') {
    if (res === 'crash') r.crashes++;
    else r.hangs++;
    findings.push({ index, kind, what: res, detail });
    return;
  }
  if (res.outcome === 'typed') r.codes[res.code!] = (r.codes[res.code!] ?? 0) + 1;
  if (res.outcome === 'untyped') {
    r.untyped++;
    findings.push({ index, kind, what: `untyped ${res.code}`, detail: res.detail });
  }
  if (res.outcome === 'loaded') {
    r.loaded++;
    if (res.code) r.codes[res.code] = (r.codes[res.code] ?? 0) + 1; // killsave: which state the file holds (old / new)
    if (res.changed) r.changed++;
  }
  if (res.nan) {
    r.nan++;
    findings.push({ index, kind, what: 'NaN output' });
  }
  if (res.tamperedAccepted) {
    r.tampered++;
    findings.push({ index, kind, what: 'tampered memory file accepted' });
  }
  if (res.violation) {
    r.violations++;
    findings.push({ index, kind, what: `violation: ${res.violation}` });
  }
}

const workDir = mkdtempSync(join(tmpdir(), 'repair-fuzz-'));
const WORKER = join(import.meta.dirname, 'worker.ts');
const indices = only !== undefined ? [only] : Array.from({ length: total }, (_, i) => i);
let next = 0;
const t0 = Date.now();
let lastPrint = 0;
let done = 0;

function progress(): void {
  if (a.quiet || Date.now() - lastPrint < 5000) return;
  lastPrint = Date.now();
  const rate = done / ((Date.now() - t0) / 1000);
  process.stderr.write(`fuzz: ${done}/${indices.length} cases, ${rate.toFixed(1)}/s\n`);
}

/** One worker slot: keeps a live worker and feeds it cases until none are left. */
async function slot(): Promise<void> {
  let w: ChildProcess | undefined;
  let ready: Promise<void> | undefined;
  const start = (): void => {
    w = fork(WORKER, [workDir], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
    let err = '';
    w.stderr!.on('data', (b) => (err = (err + String(b)).slice(-2000)));
    (w as ChildProcess & { lastErr: () => string }).lastErr = () => err;
    ready = new Promise<void>((res, rej) => {
      const onMsg = (m: { ready?: boolean }) => {
        if (m.ready) {
          w!.off('message', onMsg);
          res();
        }
      };
      w!.on('message', onMsg);
      w!.once('exit', (c, s) => rej(new Error(`worker failed to start (${c ?? s}): ${err}`)));
    });
  };
  start();
  await ready;
  for (;;) {
    if (maxMs && Date.now() - t0 > maxMs) break;
    if (next >= indices.length) break;
    const index = indices[next++]!;
    const kind = kindOf(seed, index, kinds);
    const cseed = caseSeed(seed, index);
    const outcome = await new Promise<{ res: CaseResult } | { fail: 'crash' | 'hang'; detail: string }>((res) => {
      const timer = setTimeout(() => {
        cleanup();
        w!.kill('SIGKILL');
        res({ fail: 'hang', detail: `no answer in ${hangMs} ms` });
      }, hangMs);
      const onMsg = (m: { index?: number; res?: CaseResult }) => {
        if (m.index !== index) return;
        cleanup();
        res({ res: m.res! });
      };
      const onExit = (code: number | null, sig: string | null) => {
        cleanup();
        res({ fail: 'crash', detail: `exit ${code ?? sig}: ${(w as ChildProcess & { lastErr: () => string }).lastErr().slice(-600)}` });
      };
      const cleanup = () => {
        clearTimeout(timer);
        w!.off('message', onMsg);
        w!.off('exit', onExit);
      };
      w!.on('message', onMsg);
      w!.once('exit', onExit);
      w!.send({ index, kind, seed: cseed });
    });
    done++;
    if ('res' in outcome) {
      record(index, kind, outcome.res);
    } else {
      record(index, kind, outcome.fail, outcome.detail);
      start(); // a fresh worker takes over
      await ready;
    }
    progress();
  }
  w?.kill('SIGKILL');
}

await Promise.all(Array.from({ length: nWorkers }, () => slot()));
const seconds = (Date.now() - t0) / 1000;
rmSync(workDir, { recursive: true, force: true });

// ---- the table ----
const all: Row = { cases: 0, codes: {}, untyped: 0, crashes: 0, hangs: 0, loaded: 0, changed: 0, nan: 0, tampered: 0, violations: 0 };
for (const r of rows.values()) {
  for (const k of ['cases', 'untyped', 'crashes', 'hangs', 'loaded', 'changed', 'nan', 'tampered', 'violations'] as const) all[k] += r[k];
  for (const [c, n] of Object.entries(r.codes)) all.codes[c] = (all.codes[c] ?? 0) + n;
}
const fmtCodes = (c: Record<string, number>) =>
  Object.entries(c)
    .sort((x, y) => y[1] - x[1])
    .map(([k, n]) => `${k.replace(/^ERR_/, '')} ${n}`)
    .join(', ') || '-';
const lines = [
  `| kind | cases | typed errors by code (killsave: file state after the kill) | untyped | crashes | hangs | loaded | loaded, changed behaviour | NaN outputs | tampered accepted | fault violations |`,
  `|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|`,
  ...[...rows.entries()]
    .sort((x, y) => KINDS.indexOf(x[0]) - KINDS.indexOf(y[0]))
    .map(([k, r]) => `| ${k} | ${r.cases} | ${fmtCodes(r.codes)} | ${r.untyped} | ${r.crashes} | ${r.hangs} | ${r.loaded} | ${r.changed} | ${r.nan} | ${r.tampered} | ${r.violations} |`),
  `| **all** | **${all.cases}** | ${fmtCodes(all.codes)} | **${all.untyped}** | **${all.crashes}** | **${all.hangs}** | ${all.loaded} | ${all.changed} | **${all.nan}** | **${all.tampered}** | **${all.violations}** |`,
];
const head = `repair-edit fuzz: seed ${seed}, ${all.cases} cases${only !== undefined ? ` (case ${only})` : ''}, ${nWorkers} worker(s), ${seconds.toFixed(0)} s (${(all.cases / seconds).toFixed(1)} cases/s)`;
console.log(head);
console.log(lines.join('\n'));
if (findings.length) {
  console.log(`\nfindings (replay one with --seed ${seed} --only-case I):`);
  for (const f of findings.slice(0, 50)) console.log(`  case ${f.index} [${f.kind}] ${f.what}${f.detail ? `: ${f.detail.split('\n').slice(0, 3).join(' | ')}` : ''}`);
}
const summary = { seed, cases: all.cases, seconds, workers: nWorkers, kinds, rows: Object.fromEntries(rows), all, findings };
if (a.json) writeFileSync(a.json, JSON.stringify(summary, null, 2));
if (a.md) writeFileSync(a.md, `${head}\n\n${lines.join('\n')}\n`);
process.exitCode = all.untyped + all.crashes + all.hangs + all.nan + all.tampered + all.violations > 0 ? 1 : 0;
