// serve.ts — load test of `repair-edit serve` on loopback: the real CLI server as a child process,
// autocannon as the client (127.0.0.1 only, bounded connections and duration). Two phases:
//   1. generation only: C connections for D seconds of POST /v1/completions;
//   2. the same load while edits are applied one after another: for each edit, the time from
//      POST /v1/edits to the edit being live (its status) and to it being served (a completion of its
//      prompt routed to a side memory that says its target).
// Every response is checked (status 200, well-formed JSON with a completion text); the report says how
// many were not. A script, not a test: nothing here gates anything.
//
//   npx tsc -p tsconfig.json && npx tsx bench/serve.ts [--connections 16] [--duration 20] [--max-tokens 16] [--out FILE.md]

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import autocannon from 'autocannon';
import { packageRoot } from '../lib/paths.js';

const { values: args } = parseArgs({
  options: {
    connections: { type: 'string', default: '16' },
    duration: { type: 'string', default: '20' },
    'max-tokens': { type: 'string', default: '16' },
    model: { type: 'string' },
    out: { type: 'string' },
  },
});
const C = Number(args.connections);
const D = Number(args.duration);
const MAX_TOKENS = Number(args['max-tokens']);
const ROOT = packageRoot();
const MODEL = args.model ?? join(ROOT, 'models', 'stories260K');
const tmp = mkdtempSync(join(os.tmpdir(), 'repair-bench-serve-'));

function log(s: string): void {
  process.stderr.write(`${s}\n`);
}

function startServer(): Promise<{ child: ChildProcess; base: string }> {
  const child = spawn(process.execPath, [join(ROOT, 'dist', 'cli.js'), 'serve', '--model', MODEL, '--memory', join(tmp, 'bench.safetensors'), '--port', '0', '--backend', 'cpu'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /on (http:\/\/127\.0\.0\.1:\d+)/.exec(out);
      if (m) resolve({ child, base: m[1]! });
    });
    child.on('exit', (code) => reject(new Error(`server exited with ${code}: ${out}`)));
  });
}

interface Phase {
  name: string;
  requests: number;
  rps: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  tokensPerSec: number;
  non2xx: number;
  errors: number;
  timeouts: number;
  malformed: number;
}

async function load(base: string, name: string): Promise<Phase> {
  let malformed = 0;
  let tokens = 0;
  const body = JSON.stringify({ prompt: 'Once upon a time', max_tokens: MAX_TOKENS, temperature: 0 });
  const r = await autocannon({
    url: base,
    connections: C,
    duration: D,
    timeout: 60,
    requests: [
      {
        method: 'POST',
        path: '/v1/completions',
        headers: { 'content-type': 'application/json' },
        body,
        onResponse: (status: number, resBody: string) => {
          try {
            const j = JSON.parse(resBody) as { choices: { text: string; finish_reason: string }[]; usage: { completion_tokens: number } };
            if (status !== 200 || typeof j.choices[0]!.text !== 'string' || !['stop', 'length'].includes(j.choices[0]!.finish_reason)) malformed++;
            else tokens += j.usage.completion_tokens;
          } catch {
            malformed++;
          }
        },
      },
    ],
  });
  return {
    name,
    requests: r.requests.total,
    rps: r.requests.average,
    p50: r.latency.p50,
    p90: r.latency.p90,
    p99: r.latency.p99,
    max: r.latency.max,
    tokensPerSec: tokens / D,
    non2xx: r.non2xx,
    errors: r.errors,
    timeouts: r.timeouts,
    malformed,
  };
}

interface EditTiming {
  id: string;
  liveMs: number | null;
  servedMs: number | null;
  state: string;
}

const NAMES = ['Zog', 'Mib', 'Tuk', 'Fen', 'Rax', 'Pim', 'Dov', 'Kel', 'Lor', 'Nix', 'Quo', 'Sab', 'Wen', 'Yad', 'Bry', 'Cor'];
const COLOURS = ['purple', 'golden', 'silver', 'green', 'orange', 'blue', 'pink', 'black'];

/** Apply edits one after another while `running()`; time each to live and to served. */
async function editLoop(base: string, running: () => boolean): Promise<EditTiming[]> {
  const out: EditTiming[] = [];
  const post = (path: string, b: unknown) => fetch(`${base}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(b) });
  for (let i = 0; running(); i++) {
    const prompt = `The wizard ${NAMES[i % NAMES.length]}${i >= NAMES.length ? i : ''} lived in`;
    const target = `a ${COLOURS[i % COLOURS.length]} castle`;
    const t0 = performance.now();
    const r = (await (await post('/v1/edits', { prompt, target })).json()) as { data: { id: string }[] };
    const id = r.data[0]!.id;
    let liveMs: number | null = null;
    let servedMs: number | null = null;
    let state = 'queued';
    const end = t0 + 60_000;
    while (performance.now() < end) {
      if (liveMs === null) {
        const s = (await (await fetch(`${base}/v1/edits/${id}`)).json()) as { state: string };
        state = s.state;
        if (s.state === 'live') liveMs = performance.now() - t0;
        if (s.state === 'failed') break;
      }
      if (liveMs !== null) {
        const c = (await (await post('/v1/completions', { prompt, max_tokens: 6, temperature: 0 })).json()) as { choices: { text: string }[]; repair: { route: { memory: string | number } } };
        if (c.repair.route.memory !== 'main' && c.choices[0]!.text.trimStart().startsWith(target.split(' ').slice(0, 2).join(' '))) {
          servedMs = performance.now() - t0;
          break;
        }
        if (performance.now() - t0 - liveMs > 5000) break; // live but not said: the edit did not take
      }
      await new Promise((res) => setTimeout(res, 10));
    }
    out.push({ id, liveMs, servedMs, state });
    log(`edit ${id}: live ${liveMs?.toFixed(0)} ms, served ${servedMs?.toFixed(0)} ms`);
  }
  return out;
}

function pct(xs: number[], p: number): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

async function main(): Promise<void> {
  const load0 = os.loadavg();
  const { child, base } = await startServer();
  let report = '';
  try {
    log(`server on ${base}; phase 1: ${C} connections x ${D} s, no edits`);
    const idle = await load(base, 'generation only');
    log(`phase 2: the same load while edits are applied`);
    let running = true;
    const edits = editLoop(base, () => running);
    const busy = await load(base, 'while edits are applied');
    running = false;
    const timings = await edits;
    const metrics = await (await fetch(`${base}/metrics`)).text();
    const health = (await (await fetch(`${base}/health`)).json()) as { edits: Record<string, number> };
    const load1 = os.loadavg();
    const live = timings.map((t) => t.liveMs).filter((x): x is number => x !== null);
    const served = timings.map((t) => t.servedMs).filter((x): x is number => x !== null);
    const f = (x: number) => (Number.isFinite(x) ? x.toFixed(0) : '-');
    const row = (p: Phase) =>
      `| ${p.name} | ${p.requests} | ${p.rps.toFixed(1)} | ${p.p50} | ${p.p90} | ${p.p99} | ${p.max} | ${p.tokensPerSec.toFixed(0)} | ${p.non2xx} | ${p.errors + p.timeouts} | ${p.malformed} |`;
    report = [
      `# repair-edit serve: load test on loopback (${new Date().toISOString().slice(0, 10)})`,
      '',
      'Command (repository root):',
      '',
      '```sh',
      `npx tsc -p tsconfig.json && npx tsx bench/serve.ts --connections ${C} --duration ${D} --max-tokens ${MAX_TOKENS}${args.out ? ` --out ${args.out}` : ''}`,
      '```',
      '',
      `Machine: ${os.cpus().length} vCPU ${os.cpus()[0]?.model ?? ''}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}, CPU backend (all threads).`,
      `Load: shared with other engineers' jobs (builds and test suites of parallel branches); load average ${load0.map((x) => x.toFixed(2)).join(' ')} before, ${load1.map((x) => x.toFixed(2)).join(' ')} after.`,
      `Server: \`repair-edit serve --model ${MODEL.startsWith(ROOT) ? MODEL.slice(ROOT.length + 1) : MODEL} --memory FILE --port 0 --backend cpu\` (the model's preset: WISE, its nIter), a child process; client: autocannon in this process, 127.0.0.1 only.`,
      `Request: POST /v1/completions {"prompt": "Once upon a time", "max_tokens": ${MAX_TOKENS}, "temperature": 0}, ${C} connections for ${D} s per phase.`,
      '',
      '| phase | requests | req/s | p50 ms | p90 ms | p99 ms | max ms | tokens/s | non-2xx | errors+timeouts | malformed |',
      '|---|---|---|---|---|---|---|---|---|---|---|',
      row(idle),
      row(busy),
      '',
      `Edits during phase 2: ${timings.length} posted one after another (each waits until served before the next), ${live.length} live, ${served.length} served (routed to a side memory and saying the target), ${timings.filter((t) => t.state === 'failed').length} failed.`,
      '',
      '| time from POST /v1/edits | n | p50 ms | p90 ms | max ms |',
      '|---|---|---|---|---|',
      `| to live (GET /v1/edits/{id}) | ${live.length} | ${f(pct(live, 50))} | ${f(pct(live, 90))} | ${f(Math.max(...live))} |`,
      `| to served (a completion says it) | ${served.length} | ${f(pct(served, 50))} | ${f(pct(served, 90))} | ${f(Math.max(...served))} |`,
      '',
      `Edits by state at the end (/health): ${JSON.stringify(health.edits)}.`,
      `From /metrics: ${metrics
        .split('\n')
        .filter((l) => /^repair_(last_edit_latency_seconds|edit_queue_depth|last_edit_training_seconds) /.test(l))
        .join('; ')}.`,
      '',
    ].join('\n');
  } finally {
    child.kill('SIGTERM');
    await new Promise<void>((r) => (child.exitCode !== null ? r() : child.once('exit', () => r())));
    rmSync(tmp, { recursive: true, force: true });
  }
  process.stdout.write(report);
  if (args.out) writeFileSync(args.out, report);
}

await main();
