// The eval report as a person sees it: a real `repair-edit eval` run on the shipped stories260K and
// ZsRE slice (wise and repair, N = 2 and 6), its HTML opened in headless Chromium at 1280 px. Fails on a
// blank or broken page: page errors, too little text, less than 90 % of the window's width in use, few
// colours, the results table or the charts missing or of zero size, bars too thin to read. A partial
// report (interrupted run) must show its banner. Screenshots are kept under test/artifacts/.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Browser } from 'puppeteer-core';
import { packageRoot } from '../lib/paths.js';
import { renderHtmlReport, type EvalRunFile } from '../lib/cli/eval_report.js';
import { chromiumPath, collectPageErrors, keepScreenshot, launchBrowser, pageLooksAlive } from './helpers/browser.js';
import { budget } from './helpers/time.js';

const ROOT = packageRoot();
const CLI = join(ROOT, 'dist', 'cli.js');
const ready = existsSync(CLI) && existsSync(join(ROOT, 'models', 'stories260K', 'config.json')) && chromiumPath() !== '';
if (!ready) console.warn('[report_browser.test] needs dist/cli.js (npx tsc), models/stories260K and Chromium (apt-get install chromium): skipped');

let tmp = '';
let browser: Browser | undefined;
const html = () => join(tmp, 'report.html');
const json = () => join(tmp, 'report.json');

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'repair-report-browser-'));
  if (!ready) return;
  const r = await new Promise<{ code: number; stderr: string }>((resolve) => {
    execFile(
      process.execPath,
      [CLI, 'eval', '--data', 'zsre', '--skip-invalid', '--n', '2,6', '--method', 'wise,repair', '--n-iter', '10', '--json-file', json(), '--report', html()],
      { cwd: ROOT, env: { ...process.env, REPAIR_BACKEND: 'cpu' }, timeout: budget(240_000) },
      (err, _out, stderr) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stderr }),
    );
  });
  expect(r.code, r.stderr).toBe(0);
  browser = await launchBrowser();
}, budget(300_000));
afterAll(async () => {
  await browser?.close();
  rmSync(tmp, { recursive: true, force: true });
});

/** Open a report at 1280 × 900 and return the page's measures and its screenshot path. */
async function look(file: string, shot: string) {
  const page = await browser!.newPage();
  const errors = collectPageErrors(page);
  await page.setViewport({ width: 1280, height: 900 });
  await page.goto(pathToFileURL(file).href, { waitUntil: 'load' });
  const png = await page.screenshot({ fullPage: true });
  const kept = keepScreenshot(shot, png);
  const alive = await pageLooksAlive(page, png);
  const boxes = await page.evaluate(() => {
    const box = (el: Element | null) => (el ? { w: el.getBoundingClientRect().width, h: el.getBoundingClientRect().height } : null);
    const svgs = Array.from(document.querySelectorAll('svg'));
    const bars = Array.from(document.querySelectorAll('svg rect[data-count]')).map((r) => r.getBoundingClientRect().width);
    const bannerEl = document.querySelector('.banner');
    return {
      table: box(document.querySelector('table.results')),
      headers: Array.from(document.querySelectorAll('table.results th')).map((th) => th.textContent ?? ''),
      lineCharts: svgs.filter((s) => / against N$/.test(s.getAttribute('aria-label') ?? '')).map(box),
      histograms: svgs.filter((s) => (s.getAttribute('aria-label') ?? '').startsWith('Routing scores') && s.checkVisibility()).map(box),
      minBar: bars.filter((w) => w > 0).reduce((a, b) => Math.min(a, b), Infinity),
      banner: bannerEl ? { ...box(bannerEl)!, text: bannerEl.textContent ?? '' } : null,
    };
  });
  await page.close();
  return { errors, alive, boxes, kept };
}

describe.skipIf(!ready)('the eval report in headless Chromium', () => {
  it('a full report: no errors, text, the full width, colours, the table and the charts drawn', async () => {
    const { errors, alive, boxes, kept } = await look(html(), 'eval-report.png');
    expect(errors).toEqual([]);
    expect(existsSync(kept)).toBe(true);
    expect(alive.textChars).toBeGreaterThan(800);
    expect(alive.usedWidth / alive.viewportWidth).toBeGreaterThanOrEqual(0.9);
    expect(alive.colours).toBeGreaterThanOrEqual(8);
    expect(boxes.table!.w).toBeGreaterThan(0.85 * 1280);
    expect(boxes.table!.h).toBeGreaterThan(60);
    expect(boxes.headers).toEqual(expect.arrayContaining(['method', 'N', 'Rel', 'Gen', 'Loc', 'OP']));
    expect(boxes.headers).not.toContain('|');
    expect(boxes.lineCharts.length).toBeGreaterThanOrEqual(4);
    for (const b of boxes.lineCharts) expect(b!.w).toBeGreaterThan(200), expect(b!.h).toBeGreaterThan(120);
    expect(boxes.histograms).toHaveLength(2); // wise and repair at N = 6 (the others folded away)
    for (const b of boxes.histograms) expect(b!.w).toBeGreaterThan(400), expect(b!.h).toBeGreaterThan(150);
    // 18 prompts per histogram: bars a reader can see, not a rug of hairlines
    expect(boxes.minBar).toBeGreaterThanOrEqual(6);
    expect(boxes.banner).toBeNull();
  });

  it('a partial report shows its banner', async () => {
    const full = JSON.parse(readFileSync(json(), 'utf8')) as EvalRunFile;
    const partial: EvalRunFile = {
      ...full,
      partial: true,
      progress: { runsDone: 1, runsPlanned: 4, done: [{ label: 'wise', n: 2 }], notDone: [{ label: 'wise', n: 6 }, { label: 'repair', n: 2 }, { label: 'repair', n: 6 }], reason: 'Ctrl-C or SIGTERM' },
      results: [{ ...full.results[0]!, runs: full.results[0]!.runs.slice(0, 1) }],
    };
    const f = join(tmp, 'partial.html');
    writeFileSync(f, renderHtmlReport(partial));
    const { errors, alive, boxes } = await look(f, 'eval-report-partial.png');
    expect(errors).toEqual([]);
    expect(alive.usedWidth / alive.viewportWidth).toBeGreaterThanOrEqual(0.9);
    expect(boxes.banner!.w).toBeGreaterThan(600);
    expect(boxes.banner!.h).toBeGreaterThan(20);
    expect(boxes.banner!.text).toMatch(/Partial results: .* after 1 of 4 runs/);
  });
});
