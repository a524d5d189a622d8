// Benchmark (not a test): opening a room whose chat holds N messages, and how long a message
// sent then takes to show, in headless Chromium (1280x800).
//
//   HUDDLE_SERVER_BIN=target/release/huddle-server node e2e/bench/chat-load.mjs 20000
//
// It starts a fresh server, posts N messages through a stock Yjs client (tests/yjs-chat-fill.mjs),
// then three times opens the room in a fresh browser context and prints: navigation → the newest
// message shown (Playwright's clock), the page's DOM node count, and send → shown for one more
// message typed into the chat.
import { chromium } from '@playwright/test';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
const n = Number(process.argv[2] || 5000);
const dir = mkdtempSync(join(tmpdir(), 'hc-'));
const proc = spawn(process.env.HUDDLE_SERVER_BIN, ['--addr', '127.0.0.1:0', '--data-dir', dir], { stdio: ['ignore', 'pipe', 'inherit'] });
const line = await new Promise((r) => createInterface({ input: proc.stdout }).once('line', r));
const url = line.split('listening on ')[1].trim();
execFileSync('node', [new URL('../tests/yjs-chat-fill.mjs', import.meta.url).pathname, url.replace('http', 'ws') + '/ws', 'chatty', String(n)]);
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu'] });
for (let i = 0; i < 3; i++) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  await ctx.addInitScript(() => localStorage.setItem('huddle.identity', JSON.stringify({ id: 'u-b', name: 'B', color: '#1971c2' })));
  const page = await ctx.newPage();
  const t0 = Date.now();
  await page.goto(`${url}/r/chatty`);
  await page.getByTestId('chat-message').last().waitFor();
  await page.getByText(`message ${n - 1}`, { exact: true }).waitFor();
  const open = Date.now() - t0;
  const nodes = await page.evaluate(() => document.querySelectorAll('*').length);
  // One more message from the page: how long until it shows.
  const t1 = Date.now();
  await page.getByTestId('chat-input').fill(`one more ${i}`);
  await page.getByTestId('chat-input').press('Enter');
  await page.getByText(`one more ${i}`, { exact: true }).waitFor();
  console.log(`open ${open} ms, DOM nodes ${nodes}, send→shown ${Date.now() - t1} ms`);
  await ctx.close();
}
await browser.close();
proc.kill();
