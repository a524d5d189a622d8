// Fixtures: a real Huddle server per test (the built binary, a fresh data dir, a free port) and
// helpers to act as a user in a browser context.
import { test as base, expect, Page, Browser, BrowserContext } from '@playwright/test';
import { spawn, ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

export class HuddleServer {
  url = '';
  private proc?: ChildProcess;
  private port = 0;
  constructor(readonly dataDir: string) {}

  async start(): Promise<void> {
    const bin = process.env.HUDDLE_SERVER_BIN;
    if (!bin) throw new Error('HUDDLE_SERVER_BIN is not set: run the e2e tests through `cargo xtask test`');
    // Reuse the port across restarts so open pages reconnect to the same address.
    const addr = `127.0.0.1:${this.port}`;
    this.proc = spawn(bin, ['--addr', addr, '--data-dir', this.dataDir, '--durability', 'process'], {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: { ...process.env, RUST_LOG: 'warn' },
    });
    const lines = createInterface({ input: this.proc.stdout! });
    const line: string = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('server did not start')), 20_000);
      lines.once('line', (l) => { clearTimeout(timer); resolve(l); });
      this.proc!.once('exit', (code) => reject(new Error(`server exited with ${code}`)));
    });
    this.url = line.split('listening on ')[1].trim();
    this.port = Number(new URL(this.url).port);
  }

  async stop(): Promise<void> {
    if (!this.proc || this.proc.exitCode !== null) return;
    const exited = new Promise((r) => this.proc!.once('exit', r));
    this.proc.kill('SIGTERM');
    await exited;
  }
}

export async function enterRoom(page: Page, url: string, name: string): Promise<void> {
  await page.goto(url);
  await page.getByTestId('name-input').fill(name);
  const create = page.getByTestId('create-room');
  if (await create.isVisible()) await create.click();
  else await page.getByTestId('enter-room').click();
  await expect(page.getByTestId('board')).toHaveAttribute('data-synced', 'true');
}

export async function newUser(context: BrowserContext, url: string, name: string): Promise<Page> {
  const page = await context.newPage();
  await enterRoom(page, url, name);
  return page;
}

/** Ada creates a room and Bob joins it, each in a browser context of their own. */
export async function adaAndBob(browser: Browser, url: string): Promise<[Page, Page]> {
  const a = await newUser(await browser.newContext(), url, 'Ada');
  const b = await newUser(await browser.newContext(), a.url(), 'Bob');
  return [a, b];
}

/**
 * Runs one of the stock-Yjs scripts beside these tests (`node tests/<script> ws://…/ws <args>`)
 * and resolves to what it printed; rejects if it exits with an error.
 */
export function runYjsScript(server: HuddleServer, script: string, ...args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const ws = server.url.replace('http', 'ws') + '/ws';
    const p = spawn('node', [join(__dirname, script), ws, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    p.stdout!.on('data', (d) => (out += d));
    p.on('exit', (c) => (c === 0 ? resolve(out) : reject(new Error(`${script} exited with ${c}`))));
  });
}

/** Drags on the board from (x1, y1) to (x2, y2), in board-element pixels. */
export async function dragOnBoard(page: Page, x1: number, y1: number, x2: number, y2: number): Promise<void> {
  const box = (await page.getByTestId('board').boundingBox())!;
  await page.mouse.move(box.x + x1, box.y + y1);
  await page.mouse.down();
  await page.mouse.move((box.x + x1 + box.x + x2) / 2, (box.y + y1 + box.y + y2) / 2, { steps: 4 });
  await page.mouse.move(box.x + x2, box.y + y2, { steps: 4 });
  await page.mouse.up();
}

export async function shapeCount(page: Page): Promise<number> {
  return Number(await page.getByTestId('board').getAttribute('data-shape-count'));
}

export const test = base.extend<{ server: HuddleServer }>({
  server: async ({}, use) => {
    const dir = mkdtempSync(join(tmpdir(), 'huddle-e2e-'));
    const server = new HuddleServer(dir);
    await server.start();
    await use(server);
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  },
});
export { expect };
