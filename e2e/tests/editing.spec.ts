// Editing propagates: move, resize, delete, z-order and colour changes made by one user reach the
// other; follow mode moves one user's view with another's. Shape attributes are read from the
// room's JSON export (a user-visible feature), not from hooks into the code.
import { test, expect, newUser, adaAndBob, runYjsScript, dragOnBoard, viewOf, HuddleServer } from './fixtures';
import { Browser, Page } from '@playwright/test';
import { readFileSync } from 'node:fs';

type ShapeJson = { id: string; kind: string; x: number; y: number; w: number; h: number; z: number; stroke: string; fill: string; width: number; points: number[] };

async function roomJson(page: Page): Promise<{ shapes: Record<string, ShapeJson>; chat: unknown[] }> {
  const download = page.waitForEvent('download');
  await page.getByTestId('export-json').click();
  return JSON.parse(readFileSync(await (await download).path(), 'utf8'));
}

async function shapesOf(page: Page): Promise<ShapeJson[]> {
  return Object.values((await roomJson(page)).shapes).sort((a, b) => a.z - b.z);
}

test('move, resize, recolour, restack and delete reach the other user', async ({ browser, server }) => {
  const [a, b] = await adaAndBob(browser, server.url);
  await a.getByTestId('tool-rect').click();
  await dragOnBoard(a, 100, 100, 200, 180);
  await a.getByTestId('tool-ellipse').click();
  await dragOnBoard(a, 150, 140, 260, 240);
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '2');
  let [rect, ellipse] = await shapesOf(b);
  expect(rect.kind).toBe('rect');
  expect(ellipse.kind).toBe('ellipse');

  // Move the rectangle by dragging it with the select tool.
  await a.getByTestId('tool-select').click();
  await dragOnBoard(a, 110, 110, 410, 310);
  await expect.poll(async () => (await shapesOf(b)).find((s) => s.kind === 'rect')!.x).toBeCloseTo(rect.x + 300, 0);

  // Recolour it (it is selected): stroke red, fill blue.
  await a.getByTestId('stroke-e03131').click();
  await a.getByTestId('fill-a5d8ff').click();
  await expect.poll(async () => (await shapesOf(b)).find((s) => s.kind === 'rect')!.stroke).toBe('#e03131');
  expect((await shapesOf(b)).find((s) => s.kind === 'rect')!.fill).toBe('#a5d8ff');

  // Resize with the handle at the bottom-right corner of the selection.
  rect = (await shapesOf(a)).find((s) => s.kind === 'rect')!;
  const right = rect.x + rect.w + 4 + 1;
  const bottom = rect.y + rect.h + 4 + 1;
  await dragOnBoard(a, right, bottom, right + 60, bottom + 40);
  await expect.poll(async () => (await shapesOf(b)).find((s) => s.kind === 'rect')!.w).toBeGreaterThan(rect.w + 40);

  // Send the rectangle to the back, then the ellipse is on top for Bob.
  await a.getByTestId('send-back').click();
  await expect.poll(async () => (await shapesOf(b))[0].kind).toBe('rect');
  await a.getByTestId('bring-front').click();
  await expect.poll(async () => (await shapesOf(b))[1].kind).toBe('rect');

  // Delete it.
  await a.keyboard.press('Delete');
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '1');
  [ellipse] = await shapesOf(b);
  expect(ellipse.kind).toBe('ellipse');
  await b.screenshot({ path: 'test-results/screens/after-edits-bob.png' });
});

test('undo never brings back a shape someone else deleted', async ({ browser, server }) => {
  const [a, b] = await adaAndBob(browser, server.url);
  await a.getByTestId('tool-rect').click();
  await dragOnBoard(a, 100, 100, 200, 200);
  // Ada moves her rectangle 200 px right and 100 px down.
  await a.getByTestId('tool-select').click();
  await dragOnBoard(a, 150, 150, 350, 250);
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '1');
  // Bob selects it where it now is and deletes it.
  await b.getByTestId('tool-select').click();
  const box = (await b.getByTestId('board').boundingBox())!;
  await b.mouse.click(box.x + 350, box.y + 250);
  await b.keyboard.press('Delete');
  await expect(a.getByTestId('board')).toHaveAttribute('data-shape-count', '0');
  // Ada undoes her move: that must not restore the rectangle Bob deleted. Then she draws an
  // ellipse; once Bob has it, he has everything her undo sent.
  await a.keyboard.press('Control+z');
  await a.getByTestId('tool-ellipse').click();
  await dragOnBoard(a, 500, 100, 600, 200);
  for (const page of [b, a]) {
    await expect.poll(async () => (await shapesOf(page)).map((s) => s.kind)).toEqual(['ellipse']);
  }
});

test("undo takes back only what you changed, never a collaborator's later move", async ({ browser, server }) => {
  const [a, b] = await adaAndBob(browser, server.url);
  await a.getByTestId('tool-rect').click();
  await dragOnBoard(a, 100, 100, 200, 200);
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '1');
  const [drawn] = await shapesOf(b);
  // Ada selects it and makes it red.
  await a.getByTestId('tool-select').click();
  await a.mouse.click((await a.getByTestId('board').boundingBox())!.x + 150, (await a.getByTestId('board').boundingBox())!.y + 150);
  await a.getByTestId('stroke-e03131').click();
  await expect.poll(async () => (await shapesOf(b))[0].stroke).toBe('#e03131');
  // Bob moves it 200 px right and 100 px down.
  await b.getByTestId('tool-select').click();
  await dragOnBoard(b, 150, 150, 350, 250);
  await expect.poll(async () => (await shapesOf(a))[0].x).toBeCloseTo(drawn.x + 200, 0);
  // Ada moves it 200 px further down, then undoes twice: her move, then her colour.
  await dragOnBoard(a, 350, 250, 350, 450);
  await expect.poll(async () => (await shapesOf(b))[0].y).toBeCloseTo(drawn.y + 300, 0);
  await a.keyboard.press('Control+z');
  await a.keyboard.press('Control+z');
  // Bob's move stays, for both of them; Ada's colour and move are gone.
  for (const page of [a, b]) {
    await expect.poll(async () => {
      const [s] = await shapesOf(page);
      return [s.x - drawn.x, s.y - drawn.y, s.stroke];
    }).toEqual([200, 100, '#1e1e1e']);
  }
  // Redo brings Ada's colour back on the shape where Bob left it.
  await a.keyboard.press('Control+Shift+z');
  await expect.poll(async () => {
    const [s] = await shapesOf(b);
    return [s.x - drawn.x, s.y - drawn.y, s.stroke];
  }).toEqual([200, 100, '#e03131']);
});

test('lines and pen strokes resize with the handle too', async ({ browser, server }) => {
  const [a, b] = await adaAndBob(browser, server.url);
  await a.getByTestId('tool-line').click();
  await dragOnBoard(a, 100, 300, 200, 350);
  await a.getByTestId('tool-pen').click();
  await dragOnBoard(a, 300, 100, 380, 160);
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '2');
  const extentX = (s: ShapeJson) => Math.max(...s.points.filter((_, i) => i % 2 === 0)) - Math.min(...s.points.filter((_, i) => i % 2 === 0));
  for (const kind of ['line', 'pen']) {
    const shape = (await shapesOf(a)).find((s) => s.kind === kind)!;
    const xs = shape.points.filter((_, i) => i % 2 === 0);
    const ys = shape.points.filter((_, i) => i % 2 === 1);
    const right = shape.x + Math.max(...xs) + shape.width / 2;
    const bottom = shape.y + Math.max(...ys) + shape.width / 2;
    const before = extentX(shape);
    // Select it by clicking a point on it, then drag its bottom-right handle 60 px right.
    await a.getByTestId('tool-select').click();
    await a.mouse.click((await a.getByTestId('board').boundingBox())!.x + shape.x + shape.points[0], (await a.getByTestId('board').boundingBox())!.y + shape.y + shape.points[1]);
    await dragOnBoard(a, right, bottom, right + 60, bottom + 30);
    await expect.poll(async () => extentX((await shapesOf(b)).find((s) => s.kind === kind)!)).toBeGreaterThan(before + 40);
  }
  await b.screenshot({ path: 'test-results/screens/after-point-resize-bob.png' });
});

test('copy and paste go through the system clipboard: shapes into another tab\'s room, text as a text shape', async ({ browser, server }) => {
  const context = await browser.newContext();
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: server.url });
  const a = await newUser(context, server.url, 'Ada');
  await a.getByTestId('tool-rect').click();
  await dragOnBoard(a, 100, 100, 200, 180);
  await a.getByTestId('tool-select').click();
  await a.keyboard.press('Control+a');
  await a.keyboard.press('Control+c');
  await expect.poll(() => a.evaluate(() => navigator.clipboard.readText())).toContain('huddle-shapes');

  // Another tab, another room: the rectangle pastes there.
  const b = await newUser(context, server.url, 'Ada');
  expect(b.url()).not.toBe(a.url());
  await b.getByTestId('board').click();
  await b.keyboard.press('Control+v');
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '1');
  const [pasted] = await shapesOf(b);
  expect(pasted.kind).toBe('rect');
  expect(pasted.w).toBeCloseTo(100, 0);

  // Text from anywhere else becomes a text shape.
  await b.evaluate(() => navigator.clipboard.writeText('hello from elsewhere'));
  await b.keyboard.press('Control+v');
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '2');
  const texts = (await roomJson(b)).shapes;
  expect(Object.values(texts).some((s) => s.kind === 'text' && (s as unknown as { text: string }).text === 'hello from elsewhere')).toBe(true);
  await b.screenshot({ path: 'test-results/screens/pasted-from-clipboard.png' });
});

test('follow mode moves Bob\'s view with Ada\'s', async ({ browser, server }) => {
  const [a, b] = await adaAndBob(browser, server.url);
  await b.getByTestId('presence-item').filter({ hasText: 'Ada' }).getByTestId('follow').click();
  await expect(b.getByTestId('follow')).toHaveAttribute('aria-pressed', 'true');
  // Ada zooms in twice: Bob's zoom label follows.
  await a.getByTestId('zoom-in').click();
  await a.getByTestId('zoom-in').click();
  await expect(a.getByTestId('zoom-reset')).toHaveText('156%');
  await expect(b.getByTestId('zoom-reset')).toHaveText('156%');
  // Ada pans with the hand tool; Bob sees the same board region (her shape stays in his view).
  await a.getByTestId('tool-rect').click();
  await dragOnBoard(a, 300, 300, 380, 360);
  await a.getByTestId('tool-hand').click();
  await dragOnBoard(a, 600, 400, 400, 300);
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '1');
  const adaView = await a.getByTestId('board').getAttribute('data-view');
  expect(adaView).not.toBe('0.0,0.0,1.000');
  await expect(b.getByTestId('board')).toHaveAttribute('data-view', adaView!);
  await b.screenshot({ path: 'test-results/screens/follow-bob.png' });
  await a.screenshot({ path: 'test-results/screens/follow-ada.png' });
  // Bob pans on his own: he stops following, and Ada's next move leaves his view alone.
  await b.getByTestId('tool-hand').click();
  await dragOnBoard(b, 500, 400, 300, 300);
  await expect(b.getByTestId('follow')).toHaveAttribute('aria-pressed', 'false');
  const bobView = await b.getByTestId('board').getAttribute('data-view');
  expect(bobView).not.toBe(adaView);
  // Ada pans again, then points somewhere new: once Bob sees her cursor move, he has her
  // presence with her new view too, and his own view stayed where he put it.
  const adaCursor = b.getByTestId('cursor').filter({ hasText: 'Ada' });
  const before = await adaCursor.getAttribute('style');
  await dragOnBoard(a, 600, 400, 500, 400);
  await expect(a.getByTestId('board')).not.toHaveAttribute('data-view', adaView!);
  await a.getByTestId('tool-select').click();
  const box = (await a.getByTestId('board').boundingBox())!;
  await a.mouse.move(box.x + 200, box.y + 150, { steps: 3 });
  await expect(adaCursor).not.toHaveAttribute('style', before!);
  expect(await b.getByTestId('board').getAttribute('data-view')).toBe(bobView);
});

test('following from a smaller screen shows all of the leader\'s view, around the same centre', async ({ browser, server }) => {
  const a = await newUser(await browser.newContext({ viewport: { width: 1280, height: 800 } }), server.url, 'Ada');
  const b = await newUser(await browser.newContext({ viewport: { width: 390, height: 740 } }), a.url(), 'Bob');
  await b.getByTestId('presence-item').filter({ hasText: 'Ada' }).getByTestId('follow').click();
  await a.getByTestId('zoom-in').click();
  await a.getByTestId('tool-hand').click();
  await dragOnBoard(a, 600, 400, 450, 300);
  // What each board shows, in board units: [left, top, right, bottom].
  const shown = async (page: Page) => {
    const [x, y, zoom] = await viewOf(page);
    const box = (await page.getByTestId('board').boundingBox())!;
    return [x, y, x + box.width / zoom, y + box.height / zoom];
  };
  const ada = await shown(a);
  expect(ada[0]).not.toBe(0);
  await expect.poll(async () => {
    const bob = await shown(b);
    const centre = (r: number[]) => [(r[0] + r[2]) / 2, (r[1] + r[3]) / 2];
    const [ca, cb] = [centre(ada), centre(bob)];
    // The same centre (to the rounding of data-view), and every edge of Ada's view on Bob's screen.
    return Math.abs(ca[0] - cb[0]) < 2 && Math.abs(ca[1] - cb[1]) < 2
      && bob[0] <= ada[0] + 2 && bob[1] <= ada[1] + 2 && bob[2] >= ada[2] - 2 && bob[3] >= ada[3] - 2;
  }).toBe(true);
  await b.screenshot({ path: 'test-results/screens/follow-small-bob.png' });
});

test('a reload while the server is down still shows the board, and offline edits arrive later', async ({ browser, server }) => {
  const context = await browser.newContext();
  const a = await newUser(context, server.url, 'Ada');
  await a.getByTestId('tool-rect').click();
  await dragOnBoard(a, 100, 100, 200, 200);
  await dragOnBoard(a, 250, 100, 350, 200);
  await expect(a.getByTestId('board')).toHaveAttribute('data-cached', 'true');
  // The service worker holds the app shell once it controls the page.
  await a.waitForFunction(() => navigator.serviceWorker.controller !== null);
  // The page names the app's files by version, and a versioned file is cached for good, so a
  // returning visitor does not wait on the server for them; the bare name is revalidated.
  const html = await (await a.request.get(`${server.url}/r/any`)).text();
  const wasm = html.match(/\/huddle_web_bg\.wasm\?v=[0-9a-f]+/)![0];
  expect((await a.request.get(server.url + wasm)).headers()['cache-control']).toContain('immutable');
  expect((await a.request.get(`${server.url}/huddle_web_bg.wasm`)).headers()['cache-control']).toBe('no-cache');
  // It is sent precompressed in the best coding the browser takes, and it is the same file.
  const plain = await a.request.get(server.url + wasm, { headers: { 'accept-encoding': 'identity' } });
  expect(plain.headers()['content-encoding']).toBeUndefined();
  for (const [accept, coding] of [['gzip, deflate', 'gzip'], ['gzip, deflate, br, zstd', 'br']]) {
    const r = await a.request.get(server.url + wasm, { headers: { 'accept-encoding': accept } });
    expect(r.headers()['content-encoding']).toBe(coding);
    expect(r.headers()['vary']).toBe('accept-encoding');
    expect((await r.body()).equals(await plain.body())).toBe(true);
  }
  const sent = await a.evaluate(() => {
    const e = performance.getEntriesByType('resource').find((r) => r.name.includes('huddle_web_bg.wasm')) as PerformanceResourceTiming;
    return { encoded: e.encodedBodySize, decoded: e.decodedBodySize };
  });
  expect(sent.encoded).toBeGreaterThan(0);
  expect(sent.encoded).toBeLessThan(sent.decoded / 2);

  await server.stop();
  await a.reload();
  await expect(a.getByTestId('board')).toHaveAttribute('data-shape-count', '2');
  await expect(a.getByTestId('connection-status')).not.toHaveAttribute('data-state', 'connected');
  await a.getByTestId('tool-ellipse').click();
  await dragOnBoard(a, 100, 300, 200, 400);
  await expect(a.getByTestId('board')).toHaveAttribute('data-cached', 'true');
  // The app's own images come from the service worker's copy too (no broken logo).
  await expect.poll(() => a.locator('.brand img').evaluate((img: HTMLImageElement) => img.naturalWidth)).toBeGreaterThan(0);
  await a.screenshot({ path: 'test-results/screens/offline-reload.png' });

  await server.start();
  await expect(a.getByTestId('connection-status')).toHaveAttribute('data-state', 'connected', { timeout: 45_000 });
  const b = await newUser(await browser.newContext(), a.url(), 'Bob');
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '3');
});

test('a shape drawn while the server was down reaches others when the room is opened again later', async ({ browser, server }) => {
  const context = await browser.newContext();
  const a = await newUser(context, server.url, 'Ada');
  const room = a.url();
  await a.getByTestId('tool-rect').click();
  await dragOnBoard(a, 100, 100, 200, 200);
  await expect(a.getByTestId('board')).toHaveAttribute('data-cached', 'true');
  await server.stop();
  await expect(a.getByTestId('connection-status')).not.toHaveAttribute('data-state', 'connected');
  await a.getByTestId('tool-ellipse').click();
  await dragOnBoard(a, 250, 100, 350, 200);
  await expect(a.getByTestId('board')).toHaveAttribute('data-shape-count', '2');
  await expect(a.getByTestId('board')).toHaveAttribute('data-cached', 'true');
  await a.close();
  // Later, with the server back, Ada opens the room again: her copy on this device holds the
  // ellipse the server never got, and the page sends what the server lacks.
  await server.start();
  const again = await context.newPage();
  await again.goto(room);
  await expect(again.getByTestId('board')).toHaveAttribute('data-synced', 'true');
  await expect(again.getByTestId('board')).toHaveAttribute('data-shape-count', '2');
  const b = await newUser(await browser.newContext(), room, 'Bob');
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '2');
});

/** With everything on `page`'s board in its offline copy and its app shell held by the service
 * worker, the server stops and the page notices. */
async function serverDownWithBoardCached(page: Page, server: HuddleServer): Promise<void> {
  await expect(page.getByTestId('board')).toHaveAttribute('data-cached', 'true');
  await page.waitForFunction(() => navigator.serviceWorker.controller !== null);
  await server.stop();
  await expect(page.getByTestId('connection-status')).not.toHaveAttribute('data-state', 'connected');
}

/** The server starts again, `page` reconnects by itself, and Bob, opening `room`, sees `count` shapes. */
async function backOnlineBobSees(browser: Browser, server: HuddleServer, page: Page, room: string, count: number): Promise<void> {
  await server.start();
  await expect(page.getByTestId('connection-status')).toHaveAttribute('data-state', 'connected', { timeout: 45_000 });
  const bob = await newUser(await browser.newContext(), room, 'Bob');
  await expect(bob.getByTestId('board')).toHaveAttribute('data-shape-count', String(count));
}

test('an edit made just before a reload while the server is down survives the reload', async ({ browser, server }) => {
  const a = await newUser(await browser.newContext(), server.url, 'Ada');
  await a.getByTestId('tool-rect').click();
  await dragOnBoard(a, 100, 100, 200, 200);
  await expect(a.getByTestId('board')).toHaveAttribute('data-cached', 'true');
  await a.waitForFunction(() => navigator.serviceWorker.controller !== null);
  await server.stop();
  await expect(a.getByTestId('connection-status')).not.toHaveAttribute('data-state', 'connected');
  // She draws and reloads at once, before the page's usual save has come round.
  await dragOnBoard(a, 250, 100, 350, 200);
  await expect(a.getByTestId('board')).toHaveAttribute('data-shape-count', '2');
  await a.reload();
  await expect(a.getByTestId('board')).toHaveAttribute('data-shape-count', '2');
  await server.start();
  await expect(a.getByTestId('connection-status')).toHaveAttribute('data-state', 'connected', { timeout: 45_000 });
  const b = await newUser(await browser.newContext(), a.url(), 'Bob');
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '2');
});

test('offline, another tab opened on the room shows every edit the first had cached', async ({ browser, server }) => {
  const context = await browser.newContext();
  const a = await newUser(context, server.url, 'Ada');
  const room = a.url();
  // A room with some history: each save then writes only what changed, beside a whole copy.
  await runYjsScript(server, 'yjs-fill.mjs', new URL(room).pathname.split('/').pop()!, '300');
  await expect(a.getByTestId('board')).toHaveAttribute('data-shape-count', '300');
  await serverDownWithBoardCached(a, server);
  await a.getByTestId('tool-rect').click();
  await dragOnBoard(a, 100, 100, 200, 200);
  await expect(a.getByTestId('board')).toHaveAttribute('data-cached', 'true');
  await a.getByTestId('tool-ellipse').click();
  await dragOnBoard(a, 250, 100, 350, 200);
  await expect(a.getByTestId('board')).toHaveAttribute('data-shape-count', '302');
  await expect(a.getByTestId('board')).toHaveAttribute('data-cached', 'true');
  // A second tab, while the first is still open (so nothing was saved on its way out), opens
  // the room from what the first one cached.
  const again = await context.newPage();
  await again.goto(room);
  await expect(again.getByTestId('board')).toHaveAttribute('data-shape-count', '302');
  // And once the server is back, the others get both.
  await backOnlineBobSees(browser, server, again, room, 302);
});

test('two tabs editing one room offline never lose each other\'s cached edits', async ({ browser, server }) => {
  const context = await browser.newContext();
  const a = await newUser(context, server.url, 'Ada');
  const room = a.url();
  await a.getByTestId('tool-rect').click();
  await dragOnBoard(a, 100, 100, 160, 150);
  await serverDownWithBoardCached(a, server);
  // A second tab opens the room from the cache and draws; the first draws on, several saves'
  // worth (in a room this small every other save is a whole copy).
  const b = await context.newPage();
  await b.goto(room);
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '1');
  await b.getByTestId('tool-ellipse').click();
  await dragOnBoard(b, 300, 300, 380, 360);
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '2');
  await expect(b.getByTestId('board')).toHaveAttribute('data-cached', 'true');
  for (let i = 0; i < 3; i++) {
    await dragOnBoard(a, 100 + i * 80, 200, 160 + i * 80, 250);
    await expect(a.getByTestId('board')).toHaveAttribute('data-shape-count', String(2 + i));
    await expect(a.getByTestId('board')).toHaveAttribute('data-cached', 'true');
  }
  // A third tab sees what both cached: the first rectangle, Ada's three and the ellipse.
  const c = await context.newPage();
  await c.goto(room);
  await expect(c.getByTestId('board')).toHaveAttribute('data-shape-count', '5');
  await backOnlineBobSees(browser, server, c, room, 5);
});

test('a long pen stroke reaches the other user and a stock Yjs client whole', async ({ browser, server }) => {
  const [a, b] = await adaAndBob(browser, server.url);
  await a.getByTestId('tool-pen').click();
  const box = (await a.getByTestId('board').boundingBox())!;
  await a.mouse.move(box.x + 100, box.y + 200);
  await a.mouse.down();
  // A wavy stroke, drawn over many pointer moves (it is appended to while it grows).
  for (let i = 1; i <= 120; i++) {
    await a.mouse.move(box.x + 100 + i * 5, box.y + 200 + Math.sin(i / 6) * 60);
    // Ada holds still mid-stroke for longer than separate edits are merged for (400 ms): the
    // stroke must still be one undo step (this is user input, not a wait for a result).
    if (i === 60) await a.waitForTimeout(700);
  }
  await a.mouse.up();
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '1');
  const [mine] = await shapesOf(a);
  expect(mine.kind).toBe('pen');
  expect(mine.points.length).toBeGreaterThan(40);
  await expect.poll(async () => (await shapesOf(b))[0].points).toEqual(mine.points);

  const room = new URL(a.url()).pathname.split('/').pop()!;
  const out = await runYjsScript(server, 'yjs-read.mjs', room);
  const [read] = Object.values(JSON.parse(out)) as { form: string; kind: string; pointsType: string; points: number[] }[];
  expect(read.kind).toBe('pen');
  // Appended to while drawn, the finished stroke is stored as one plain object.
  expect(read.form).toBe('object');
  expect(read.pointsType).toBe('array');
  expect(read.points).toEqual(mine.points);
  await b.screenshot({ path: 'test-results/screens/long-stroke-bob.png' });

  // The stroke, pause included, is one undo step for Ada, and redo brings it back whole.
  await a.keyboard.press('Control+z');
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '0');
  await a.keyboard.press('Control+Shift+z');
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '1');
  await expect.poll(async () => (await shapesOf(b))[0].points).toEqual(mine.points);
});

test('on a plain-HTTP address (no secure context, as on a LAN server) copy, paste and sharing still work', async ({ browser, server }) => {
  // `huddle.test` maps to this server (playwright.config.ts), but unlike 127.0.0.1 it is not a
  // secure context: the page has no `navigator.clipboard` and no service worker.
  const url = server.url.replace('127.0.0.1', 'huddle.test');
  const context = await browser.newContext();
  const errors: string[] = [];
  context.on('weberror', (e) => errors.push(e.error().message));
  const a = await newUser(context, url, 'Ada');
  expect(await a.evaluate(() => window.isSecureContext)).toBe(false);
  expect(await a.evaluate(() => navigator.clipboard === undefined)).toBe(true);

  await a.getByTestId('tool-rect').click();
  await dragOnBoard(a, 100, 100, 200, 180);
  await a.getByTestId('tool-select').click();
  await a.keyboard.press('Control+a');
  await a.keyboard.press('Control+c');
  await a.keyboard.press('Control+v');
  await expect(a.getByTestId('board')).toHaveAttribute('data-shape-count', '2');
  // The copy went onto the clipboard all the same: it pastes into another tab's room.
  const other = await newUser(context, url, 'Ada');
  expect(other.url()).not.toBe(a.url());
  await other.getByTestId('board').click();
  await other.keyboard.press('Control+v');
  await expect(other.getByTestId('board')).toHaveAttribute('data-shape-count', '1');
  await other.close();
  await a.bringToFront();

  // Share cannot copy by itself here: it shows the link, selected, for the person to copy.
  await a.getByTestId('copy-link').click();
  const link = a.getByTestId('share-link');
  await expect(link).toBeVisible();
  await expect(link).toHaveValue(a.url());
  expect(await a.evaluate(() => (document.activeElement as HTMLInputElement | null)?.dataset.testid)).toBe('share-link');
  await a.screenshot({ path: 'test-results/screens/share-without-clipboard.png' });
  await a.keyboard.press('Escape');
  await expect(link).toHaveCount(0);

  // The page keeps working, and a second person on the same address sees it all.
  await a.getByTestId('tool-ellipse').click();
  await dragOnBoard(a, 300, 100, 380, 160);
  await expect(a.getByTestId('board')).toHaveAttribute('data-shape-count', '3');
  const b = await newUser(await browser.newContext(), a.url(), 'Bob');
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '3');
  expect(errors).toEqual([]);
});

test('Share copies the room link and says so', async ({ browser, server }) => {
  const context = await browser.newContext();
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: server.url });
  const a = await newUser(context, server.url, 'Ada');
  await a.getByTestId('copy-link').click();
  await expect(a.getByTestId('share-note')).toHaveText('Link copied');
  await expect.poll(() => a.evaluate(() => navigator.clipboard.readText())).toBe(a.url());
});

test('with no room on this device for an offline copy, edits made while the server is away are flagged, and leaving asks first', async ({ browser, server }) => {
  const context = await browser.newContext();
  // This device cannot store anything: opening IndexedDB fails, as it does when storage is full.
  await context.addInitScript(() => {
    IDBFactory.prototype.open = function () {
      throw new DOMException('The quota has been exceeded.', 'QuotaExceededError');
    };
  });
  const a = await newUser(context, server.url, 'Ada');
  await expect(a.getByTestId('connection-status')).toHaveAttribute('data-state', 'connected');
  await expect(a.getByTestId('connection-status')).not.toContainText('not saved');
  await server.stop();
  await expect(a.getByTestId('connection-status')).not.toHaveAttribute('data-state', 'connected');
  await a.getByTestId('tool-rect').click();
  await dragOnBoard(a, 100, 100, 200, 200);
  await expect(a.getByTestId('board')).toHaveAttribute('data-shape-count', '1');
  await expect(a.getByTestId('connection-status')).toContainText('edits not saved on this device');
  await a.screenshot({ path: 'test-results/screens/offline-not-saved.png' });
  // Closing the tab asks first; Ada stays, and her rectangle with her.
  const dialogs: string[] = [];
  a.on('dialog', (dialog) => {
    dialogs.push(dialog.type());
    void dialog.dismiss();
  });
  await a.close({ runBeforeUnload: true });
  await expect.poll(() => dialogs).toEqual(['beforeunload']);
  expect(a.isClosed()).toBe(false);
  await expect(a.getByTestId('board')).toHaveAttribute('data-shape-count', '1');
  // The server back, the rectangle reaches it, and the warning goes.
  await server.start();
  await expect(a.getByTestId('connection-status')).toHaveAttribute('data-state', 'connected', { timeout: 45_000 });
  await expect(a.getByTestId('connection-status')).not.toContainText('not saved');
  const b = await newUser(await browser.newContext(), a.url(), 'Bob');
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '1');
});

test('when the device has room again, the offline copy is saved without waiting for another edit', async ({ browser, server }) => {
  const context = await browser.newContext();
  // Storage is full (opening IndexedDB fails) until the page says otherwise; the flag outlives
  // a reload.
  await context.addInitScript(() => {
    const open = IDBFactory.prototype.open;
    IDBFactory.prototype.open = function (this: IDBFactory, ...args: Parameters<IDBFactory['open']>) {
      if (localStorage.getItem('storage-full') !== 'no') {
        throw new DOMException('The quota has been exceeded.', 'QuotaExceededError');
      }
      return open.apply(this, args);
    };
  });
  const a = await newUser(context, server.url, 'Ada');
  await expect(a.getByTestId('connection-status')).toHaveAttribute('data-state', 'connected');
  await server.stop();
  await expect(a.getByTestId('connection-status')).not.toHaveAttribute('data-state', 'connected');
  await a.getByTestId('tool-rect').click();
  await dragOnBoard(a, 100, 100, 200, 200);
  await expect(a.getByTestId('connection-status')).toContainText('edits not saved on this device');
  // Space is freed; Ada draws nothing more.
  await a.evaluate(() => localStorage.setItem('storage-full', 'no'));
  await expect(a.getByTestId('connection-status')).not.toContainText('not saved');
  await expect(a.getByTestId('board')).toHaveAttribute('data-cached', 'true');
  // Her rectangle is on this device: a reload while the server is still away shows it.
  await a.reload();
  await expect(a.getByTestId('board')).toHaveAttribute('data-shape-count', '1');
});

test('offline, a reload opens the room even after the browser let go of the cached app files', async ({ browser, server }) => {
  const context = await browser.newContext();
  const a = await newUser(context, server.url, 'Ada');
  await a.getByTestId('tool-rect').click();
  await dragOnBoard(a, 100, 100, 200, 200);
  await expect(a.getByTestId('board')).toHaveAttribute('data-cached', 'true');
  await a.waitForFunction(() => navigator.serviceWorker.controller !== null);
  // The worker has kept the app's files (the wasm among them).
  await a.waitForFunction(async () => {
    for (const name of await caches.keys()) {
      const keys = await (await caches.open(name)).keys();
      if (keys.some((k) => k.url.includes('huddle_web_bg.wasm?v='))) return true;
    }
    return false;
  });
  // The browser's HTTP cache forgets everything (as it may, under storage pressure), and the
  // network goes away.
  const cdp = await context.newCDPSession(a);
  await cdp.send('Network.clearBrowserCache');
  await context.setOffline(true);
  await a.reload();
  await expect(a.getByTestId('board')).toHaveAttribute('data-shape-count', '1');
  await expect(a.getByTestId('connection-status')).not.toHaveAttribute('data-state', 'connected');
  // And she can go on drawing.
  await a.getByTestId('tool-ellipse').click();
  await dragOnBoard(a, 250, 100, 350, 200);
  await expect(a.getByTestId('board')).toHaveAttribute('data-shape-count', '2');
});
