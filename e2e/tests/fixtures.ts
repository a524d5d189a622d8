// Fixtures: a real Huddle server per test (the built binary, a fresh data dir, a free port) and
// helpers to act as a user in a browser context.
import { test as base, expect, Page, Browser, BrowserContext, WebSocketRoute } from '@playwright/test';
import { spawn, ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

export class HuddleServer {
  url = '';
  private proc?: ChildProcess;
  private port = 0;
  /** `args`: more server flags, e.g. `['--max-room-bytes', '8192']`. */
  constructor(readonly dataDir: string, readonly args: string[] = []) {}

  async start(): Promise<void> {
    const bin = process.env.HUDDLE_SERVER_BIN;
    if (!bin) throw new Error('HUDDLE_SERVER_BIN is not set: run the e2e tests through `cargo xtask test`');
    // Reuse the port across restarts so open pages reconnect to the same address.
    const addr = `127.0.0.1:${this.port}`;
    this.proc = spawn(bin, ['--addr', addr, '--data-dir', this.dataDir, '--durability', 'process', ...this.args], {
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

export async function enterRoom(page: Page, url: string, name: string, color?: string): Promise<void> {
  await page.goto(url);
  await page.getByTestId('name-input').fill(name);
  if (color) await page.getByTestId(`color-${color.replace('#', '')}`).click();
  const create = page.getByTestId('create-room');
  if (await create.isVisible()) await create.click();
  else await page.getByTestId('enter-room').click();
  await expect(page.getByTestId('board')).toHaveAttribute('data-synced', 'true');
}

/** A user with `name` (and, if given, the colour `color`, e.g. '#2f9e44') in a new page of `context`. */
export async function newUser(context: BrowserContext, url: string, name: string, color?: string): Promise<Page> {
  const page = await context.newPage();
  await enterRoom(page, url, name, color);
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

/**
 * Routes a context's room sockets through Playwright, so that a network outage can be staged:
 * `cut()` takes the context offline and closes its open sockets at both ends (the server sees
 * them go), refusing new ones until `restore()`. `received` holds, per socket opened, the sizes
 * of the frames it brought the page.
 */
export async function outage(ctx: BrowserContext) {
  let offline = false;
  const received: number[][] = [];
  const open: Array<{ page: WebSocketRoute; server: WebSocketRoute }> = [];
  await ctx.routeWebSocket(/\/ws\//, (ws) => {
    if (offline) return void ws.close({ code: 1001, reason: 'offline' });
    const bytes: number[] = [];
    received.push(bytes);
    const upstream = ws.connectToServer();
    upstream.onMessage((m) => { bytes.push(typeof m === 'string' ? m.length : m.byteLength); ws.send(m); });
    open.push({ page: ws, server: upstream });
  });
  return {
    received,
    async cut() {
      offline = true;
      await ctx.setOffline(true);
      for (const { page, server } of open.splice(0)) {
        await server.close({ code: 1001, reason: 'offline' });
        await page.close({ code: 1001, reason: 'offline' });
      }
    },
    async restore() {
      offline = false;
      await ctx.setOffline(false);
    },
  };
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

export type ShapeJson = {
  id: string; kind: string; x: number; y: number; w: number; h: number; z: number;
  stroke: string; fill: string; width: number; points: number[]; text?: string;
};
export type RoomJson = { shapes: Record<string, ShapeJson>; chat: { text: string; author_name?: string }[] };

/** The room as its "Export JSON" button downloads it (a user-visible view of the document). */
export async function roomJson(page: Page): Promise<RoomJson> {
  const download = page.waitForEvent('download');
  await page.getByTestId('export-json').click();
  return JSON.parse(readFileSync(await (await download).path(), 'utf8'));
}

/** The room's shapes, bottom to top. */
export async function shapesOf(page: Page): Promise<ShapeJson[]> {
  return Object.values((await roomJson(page)).shapes).sort((a, b) => a.z - b.z);
}

/** The board element's `data-view` as numbers: [x, y, zoom]. */
export async function viewOf(page: Page): Promise<[number, number, number]> {
  const v = (await page.getByTestId('board').getAttribute('data-view'))!.split(',').map(Number);
  return [v[0], v[1], v[2]];
}

/**
 * How many pixels of the board's canvas inside the rectangle (board-element CSS pixels) are
 * painted (alpha > 100) in about the colour `rgb` (each channel within a distance `tol`). The
 * canvas is cleared to transparent each frame, so an anti-aliased line keeps its colour and only
 * its alpha drops.
 */
export async function boardPixels(
  page: Page, rect: { x: number; y: number; w: number; h: number }, rgb: [number, number, number], tol = 40,
): Promise<number> {
  return page.evaluate(({ rect, rgb, tol }) => {
    const canvas = document.querySelector('[data-testid=board] canvas') as HTMLCanvasElement;
    const dpr = canvas.width / canvas.clientWidth;
    const data = canvas.getContext('2d')!.getImageData(
      Math.round(rect.x * dpr), Math.round(rect.y * dpr), Math.round(rect.w * dpr), Math.round(rect.h * dpr)).data;
    let n = 0;
    for (let i = 0; i < data.length; i += 4) {
      if (data[i + 3] > 100 && Math.hypot(data[i] - rgb[0], data[i + 1] - rgb[1], data[i + 2] - rgb[2]) <= tol) n++;
    }
    return n;
  }, { rect, rgb, tol });
}

/** `#rrggbb` → [r, g, b]. */
export function rgbOf(hex: string): [number, number, number] {
  const n = parseInt(hex.replace('#', ''), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

/** Resolves after the page has rendered two more animation frames (what it queued is done). */
export async function nextFrames(page: Page): Promise<void> {
  await page.evaluate(() => new Promise<void>((r) => requestAnimationFrame(() => requestAnimationFrame(() => r()))));
}

export const test = base.extend<{ server: HuddleServer; closeContexts: void }>({
  // Tests open their users' browser contexts themselves; every one still open is closed when
  // the test ends, so pages of finished tests do not keep running (reconnecting to a stopped
  // server, drawing frames) and slow down the tests after them.
  closeContexts: [async ({ browser }, use) => {
    await use();
    await Promise.all(browser.contexts().map((c) => c.close()));
  }, { auto: true }],
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
