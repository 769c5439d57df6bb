// browser.ts — headless Chromium (Debian's, through puppeteer-core) for the tests that look at a page
// as a person would: the eval report and the server's page. One launcher, one "is this page broken?"
// check, screenshots kept as test artifacts under test/artifacts/ (git-ignored).
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Browser, Page } from 'puppeteer-core';

const here = dirname(fileURLToPath(import.meta.url));
export const artifactsDir = join(here, '..', 'artifacts');

/** The Chromium binary: $CHROME_PATH, else Debian's. '' when none is installed. */
export function chromiumPath(): string {
  const cands = [process.env.CHROME_PATH ?? '', '/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome'];
  return cands.find((p) => p && existsSync(p)) ?? '';
}

/** Launch headless Chromium. Throws with a message naming the fix when none is installed (CI installs it). */
export async function launchBrowser(): Promise<Browser> {
  const exe = chromiumPath();
  if (!exe) throw new Error('no Chromium found: apt-get install chromium (or set CHROME_PATH)');
  const { launch } = await import('puppeteer-core');
  return launch({
    executablePath: exe,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run', '--font-render-hinting=none'],
  });
}

/** What went wrong on a page while it loaded and ran: uncaught errors, console errors, failed requests. */
export function collectPageErrors(page: Page): string[] {
  const errs: string[] = [];
  page.on('pageerror', (e) => errs.push(`pageerror: ${e instanceof Error ? e.message : String(e)}`));
  page.on('console', (m) => {
    if (m.type() === 'error') errs.push(`console.error: ${m.text()}`);
  });
  page.on('requestfailed', (r) => errs.push(`requestfailed: ${r.url()} ${r.failure()?.errorText ?? ''}`));
  return errs;
}

/** Save a PNG under test/artifacts/ and return its path. */
export function keepScreenshot(name: string, png: Uint8Array): string {
  mkdirSync(artifactsDir, { recursive: true });
  const p = join(artifactsDir, name);
  writeFileSync(p, png);
  return p;
}

/**
 * Measures what a blank or broken page lacks: visible text, the page's width in use, and how many
 * distinct colours its pixels show (sampled in the page from a screenshot drawn into a canvas).
 */
export async function pageLooksAlive(page: Page, png: Uint8Array): Promise<{ textChars: number; usedWidth: number; viewportWidth: number; colours: number }> {
  const b64 = Buffer.from(png).toString('base64');
  return page.evaluate(async (data: string) => {
    const img = new Image();
    img.src = `data:image/png;base64,${data}`;
    await img.decode();
    const c = document.createElement('canvas');
    c.width = img.width;
    c.height = img.height;
    const ctx = c.getContext('2d')!;
    ctx.drawImage(img, 0, 0);
    const px = ctx.getImageData(0, 0, c.width, c.height).data;
    const seen = new Set<number>();
    for (let i = 0; i < px.length && seen.size < 4096; i += 4 * 97) seen.add((px[i]! << 16) | (px[i + 1]! << 8) | px[i + 2]!);
    let right = 0;
    for (const el of Array.from(document.body.querySelectorAll('*'))) {
      const r = el.getBoundingClientRect();
      if (r.width > 0 && r.height > 0) right = Math.max(right, Math.min(r.right, window.innerWidth));
    }
    return { textChars: document.body.innerText.trim().length, usedWidth: right, viewportWidth: window.innerWidth, colours: seen.size };
  }, b64);
}
