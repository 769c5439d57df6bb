// The serve command's web page at / in headless Chromium (Debian's, through puppeteer-core): type a
// prompt and see the streamed output and its route, add an edit and watch it go live in the queue, see
// the prompt now routed to the memory, roll the edit back. The screenshot is kept as a test artifact
// (test/artifacts/server-page.png).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import type { Browser } from 'puppeteer-core';
import { loadModel, type Model } from '../lib/model.js';
import { Editor } from '../lib/editor.js';
import { packageRoot } from '../lib/paths.js';
import { createServer, type RepairServer } from '../lib/server/app.js';
import { chromiumPath, collectPageErrors, keepScreenshot, launchBrowser, pageLooksAlive } from './helpers/browser.js';
import { budget } from './helpers/time.js';

const STORIES = join(packageRoot(), 'models', 'stories260K');
const haveChromium = chromiumPath() !== '';
if (!haveChromium) console.warn('[server_page.test] no Chromium (apt-get install chromium): the page test is skipped');

describe.skipIf(!haveChromium)('serve: the web page in headless Chromium', () => {
  let model: Model;
  let server: RepairServer;
  let base: string;
  let browser: Browser;
  beforeAll(async () => {
    model = await loadModel(STORIES, { backend: 'cpu' });
    const editor = await Editor.create(model, { nIter: 15 });
    server = await createServer(editor, { port: 0 });
    base = await server.listen();
    browser = await launchBrowser();
  });
  afterAll(async () => {
    await browser?.close();
    await server?.close();
    await model?.dispose();
  });

  it('tries a prompt, shows the route, adds an edit, sees it live and served, rolls it back', async () => {
    const page = await browser.newPage();
    await page.setViewport({ width: 1100, height: 800 });
    const errors = collectPageErrors(page);
    await page.goto(`${base}/`, { waitUntil: 'load' });
    const wait = { timeout: budget(30_000) };
    const until = async (what: string, fn: () => boolean) => {
      try {
        await page.waitForFunction(fn, wait);
      } catch (e) {
        keepScreenshot('server-page-failed.png', await page.screenshot({ fullPage: true }));
        throw new Error(`the page never showed: ${what} (${(e as Error).message}); errors: ${errors.join('; ')}`);
      }
    };
    await until('the model name', () => document.getElementById('model')!.textContent!.includes('stories260K'));

    // a prompt, streamed, routed to the main weights
    await page.type('#prompt', 'The wizard Zog lived in');
    await page.$eval('#max-tokens', (el) => ((el as HTMLInputElement).value = '8'));
    await page.click('#generate');
    await until('a route', () => document.getElementById('route')!.textContent!.startsWith('route:') && !(document.getElementById('generate') as HTMLButtonElement).disabled);
    const before = await page.$eval('#output', (el) => el.textContent!);
    expect(before.startsWith('The wizard Zog lived in')).toBe(true);
    expect(before.length).toBeGreaterThan('The wizard Zog lived in'.length);
    expect(await page.$eval('#route', (el) => el.textContent!)).toMatch(/main weights \(no edits yet\)/);

    // an edit: accepted, shown in the queue, live
    await page.type('#edit-prompt', 'The wizard Zog lived in');
    await page.type('#edit-target', 'a purple castle');
    await page.click('#add-edit');
    await until('the edit accepted', () => document.getElementById('edit-msg')!.textContent!.startsWith('accepted'));
    await until('the edit live', () => Array.from(document.querySelectorAll('#edits td.state')).some((td) => td.textContent === 'live'));
    const rows = await page.$$eval('#edits tr', (trs) => trs.map((tr) => Array.from(tr.querySelectorAll('td')).map((td) => td.textContent)));
    expect(rows).toHaveLength(1);
    expect(rows[0]!.slice(1, 4)).toEqual(['live', 'The wizard Zog lived in', 'a purple castle']);

    // the same prompt now routes to the working memory and says the new fact
    await page.click('#generate');
    await until('the working-memory route', () => document.getElementById('route')!.textContent!.includes('working memory') && !(document.getElementById('generate') as HTMLButtonElement).disabled);
    expect(await page.$eval('#output', (el) => el.textContent!)).toMatch(/^The wizard Zog lived in a purple/);
    const png = await page.screenshot({ fullPage: true });
    const shot = keepScreenshot('server-page.png', png);
    const alive = await pageLooksAlive(page, png);
    expect(alive.textChars).toBeGreaterThan(200);
    expect(alive.usedWidth).toBeGreaterThan(alive.viewportWidth * 0.8);
    expect(alive.colours).toBeGreaterThan(8);
    expect(shot).toMatch(/server-page\.png$/);

    // roll it back from the table
    // (the table is redrawn every second: click inside the page, not through a node handle that may go stale)
    await page.evaluate(() => (document.querySelector('#edits button.rollback') as HTMLButtonElement).click());
    await until('the edit rolled back', () => Array.from(document.querySelectorAll('#edits td.state')).some((td) => td.textContent === 'rolled back'));
    expect(server.queue.counts().rolled_back).toBe(1);
    expect(errors).toEqual([]);
    await page.close();
  });
});
