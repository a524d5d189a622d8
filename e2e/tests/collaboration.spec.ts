// Multi-user behaviour in real Chromium contexts against a real server.
import { test, expect, newUser, adaAndBob, runYjsScript, dragOnBoard, shapeCount } from './fixtures';
import { join } from 'node:path';

const shot = (name: string) => ({ path: join('test-results', 'screens', `${name}.png`) });

test('drawing, chat, presence and cursors flow between two users', async ({ browser, server }) => {
  const [a, b] = await adaAndBob(browser, server.url);
  await expect(a.getByTestId('presence-item').filter({ hasText: 'Bob' })).toBeVisible();
  await expect(b.getByTestId('presence-item').filter({ hasText: 'Ada' })).toBeVisible();
  await expect(a.getByTestId('connection-status')).toHaveAttribute('data-state', 'connected');

  // Every drawing tool makes a shape that the other user receives.
  const tools: Array<[string, number, number, number, number]> = [
    ['rect', 80, 80, 220, 160], ['ellipse', 260, 80, 400, 170], ['line', 80, 220, 220, 300],
    ['arrow', 260, 220, 400, 300], ['pen', 450, 90, 560, 200], ['sticky', 620, 80, 620, 80],
  ];
  let expected = 0;
  for (const [tool, x1, y1, x2, y2] of tools) {
    await a.getByTestId(`tool-${tool}`).click();
    await dragOnBoard(a, x1, y1, x2, y2);
    expected += 1;
    await expect(b.getByTestId('board'), `${tool} reaches Bob`).toHaveAttribute('data-shape-count', String(expected));
  }
  await a.keyboard.press('Escape');
  await a.getByTestId('tool-text').click();
  const box = (await a.getByTestId('board').boundingBox())!;
  await a.mouse.click(box.x + 100, box.y + 400);
  await a.getByTestId('text-editor').fill('Plan for Monday');
  await a.mouse.click(box.x + 900, box.y + 600);
  expected += 1;
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', String(expected));

  // B sees A's cursor, labelled with A's name.
  await a.mouse.move(box.x + 500, box.y + 450);
  await expect(b.locator('[data-testid=cursor][data-name="Ada"]')).toBeVisible();

  // Chat both ways, with names.
  await a.getByTestId('chat-input').fill('hello from Ada');
  await a.keyboard.press('Enter');
  await expect(b.getByTestId('chat-message').filter({ hasText: 'hello from Ada' })).toHaveAttribute('data-author', 'Ada');
  await b.getByTestId('chat-input').fill('hi Ada, Bob here');
  await b.getByTestId('chat-send').click();
  await expect(a.getByTestId('chat-message').filter({ hasText: 'Bob here' })).toHaveAttribute('data-author', 'Bob');
  await a.screenshot(shot('two-users-ada'));
  await b.screenshot(shot('two-users-bob'));

  // History survives a reload.
  await b.reload();
  await expect(b.getByTestId('board')).toHaveAttribute('data-synced', 'true');
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', String(expected));
  await expect(b.getByTestId('chat-message')).toHaveCount(2);

  // A leaves: gone from B's presence list.
  await a.close();
  await expect(b.getByTestId('presence-item').filter({ hasText: 'Ada' })).toHaveCount(0);
});

test('undo only undoes your own edits', async ({ browser, server }) => {
  const [a, b] = await adaAndBob(browser, server.url);
  await a.getByTestId('tool-rect').click();
  await dragOnBoard(a, 100, 100, 200, 200);
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '1');
  await b.getByTestId('tool-ellipse').click();
  await dragOnBoard(b, 300, 100, 400, 200);
  await expect(a.getByTestId('board')).toHaveAttribute('data-shape-count', '2');
  // Ada undoes twice: her rectangle goes, Bob's ellipse stays.
  await a.keyboard.press('Control+z');
  await a.keyboard.press('Control+z');
  await expect(a.getByTestId('board')).toHaveAttribute('data-shape-count', '1');
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '1');
  await a.keyboard.press('Control+Shift+z');
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '2');
});

test('a stock Yjs client adds a rectangle and a chat message the page shows', async ({ browser, server }) => {
  const page = await newUser(await browser.newContext(), server.url, 'Ada');
  const room = new URL(page.url()).pathname.split('/').pop()!;
  await runYjsScript(server, 'yjs-peer.mjs', room);
  await expect(page.getByTestId('board')).toHaveAttribute('data-shape-count', '1');
  await expect(page.getByTestId('chat-message').filter({ hasText: 'hello from a plain Yjs client' })).toBeVisible();
  await page.screenshot(shot('stock-yjs-client'));
});

test('text from peers is shown as text, never run as HTML', async ({ browser, server }) => {
  const a = await newUser(await browser.newContext(), server.url, 'Mallory');
  const b = await newUser(await browser.newContext(), a.url(), 'Bob');
  const payload = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>';
  await a.getByTestId('chat-input').fill(payload);
  await a.keyboard.press('Enter');
  await expect(b.getByTestId('chat-message').last()).toContainText('<img src=x onerror=');
  await a.getByTestId('tool-text').click();
  const box = (await a.getByTestId('board').boundingBox())!;
  await a.mouse.click(box.x + 200, box.y + 200);
  await a.getByTestId('text-editor').fill(payload);
  await a.mouse.click(box.x + 700, box.y + 500);
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '1');
  expect(await b.evaluate(() => (window as any).__pwned)).toBeUndefined();
  expect(await b.locator('img[src=x]').count()).toBe(0);
});

test('both clients ride out a server restart and keep the edits made during the outage', async ({ browser, server }) => {
  const [a, b] = await adaAndBob(browser, server.url);
  await a.getByTestId('tool-rect').click();
  await dragOnBoard(a, 100, 100, 200, 200);
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '1');

  await server.stop();
  await expect(a.getByTestId('connection-status')).toHaveAttribute('data-state', /reconnecting|offline|connecting/);
  await expect(b.getByTestId('connection-status')).toHaveAttribute('data-state', /reconnecting|offline|connecting/);
  await a.screenshot(shot('outage-ada'));
  // Both keep drawing while the server is down.
  await dragOnBoard(a, 250, 100, 350, 200);
  await b.getByTestId('tool-ellipse').click();
  await dragOnBoard(b, 100, 300, 200, 400);
  expect(await shapeCount(a)).toBe(2);
  expect(await shapeCount(b)).toBe(2);

  await server.start();
  await expect(a.getByTestId('connection-status')).toHaveAttribute('data-state', 'connected', { timeout: 45_000 });
  await expect(b.getByTestId('connection-status')).toHaveAttribute('data-state', 'connected', { timeout: 45_000 });
  await expect(a.getByTestId('board')).toHaveAttribute('data-shape-count', '3');
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '3');
});

test('export PNG and SVG contain the drawn shapes', async ({ browser, server }) => {
  const page = await newUser(await browser.newContext(), server.url, 'Ada');
  await page.getByTestId('tool-rect').click();
  await dragOnBoard(page, 100, 100, 300, 200);
  await page.getByTestId('tool-ellipse').click();
  await dragOnBoard(page, 350, 100, 450, 250);
  await page.keyboard.press('Escape'); // nothing selected: export the whole board
  const svgDownload = page.waitForEvent('download');
  await page.getByTestId('export-svg').click();
  const svg = await (await svgDownload).path();
  const text = require('node:fs').readFileSync(svg, 'utf8');
  expect(text).toContain('<rect x="');
  expect(text).toContain('<ellipse');
  const pngDownload = page.waitForEvent('download');
  await page.getByTestId('export-png').click();
  const png = require('node:fs').readFileSync(await (await pngDownload).path());
  expect(png.subarray(1, 4).toString()).toBe('PNG');
  // Both shapes span 350 board units across, plus padding.
  expect(png.readUInt32BE(16)).toBeGreaterThan(350);
  // With the ellipse selected, only the selection is exported.
  await page.getByTestId('tool-select').click();
  const box = (await page.getByTestId('board').boundingBox())!;
  await page.mouse.click(box.x + 400, box.y + 175);
  const selDownload = page.waitForEvent('download');
  await page.getByTestId('export-png').click();
  const sel = require('node:fs').readFileSync(await (await selDownload).path());
  expect(sel.readUInt32BE(16)).toBeLessThan(200);
});

test('a big room shows how far opening has got, then every shape, over one socket', async ({ browser, server }) => {
  const shapes = 18000; // about 2.5 MB: big enough for the "Opening the board" step (2 MiB)
  await runYjsScript(server, 'yjs-fill.mjs', 'big-room', String(shapes));
  const context = await browser.newContext();
  await context.addInitScript(() => {
    localStorage.setItem('huddle.identity', JSON.stringify({ id: 'u-ada', name: 'Ada', color: '#1971c2' }));
    // What the loading display says at each animation frame (what could be on screen), and
    // how many sockets the page opens.
    (window as any).__loadingSeen = [];
    const sample = () => {
      const text = document.querySelector('[data-testid=loading]')?.textContent;
      const seen = (window as any).__loadingSeen;
      if (text && seen[seen.length - 1] !== text) seen.push(text);
      requestAnimationFrame(sample);
    };
    requestAnimationFrame(sample);
    (window as any).__sockets = 0;
    const Native = window.WebSocket;
    (window as any).WebSocket = function (...args: any[]) { (window as any).__sockets++; return new (Native as any)(...args); };
    Object.assign((window as any).WebSocket, { prototype: Native.prototype, CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 });
  });
  const page = await context.newPage();
  await page.goto(`${server.url}/r/big-room`);
  const board = page.getByTestId('board');
  await expect(board).toHaveAttribute('data-synced', 'true');
  await expect(board).toHaveAttribute('data-shape-count', String(shapes));
  await expect(page.getByTestId('loading')).toHaveCount(0);
  const seen: string[] = await page.evaluate(() => (window as any).__loadingSeen);
  expect(seen.some((t) => /^Opening the board \(\d+\.\d MB\)…$/.test(t))).toBe(true);
  // The socket index.html opened before the app loaded was the one the app used.
  expect(await page.evaluate(() => (window as any).__sockets)).toBe(1);
  await page.screenshot(shot('big-room-open'));
});
