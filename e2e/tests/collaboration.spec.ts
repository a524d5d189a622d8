// Multi-user behaviour in real Chromium contexts against a real server.
import { test, expect, newUser, adaAndBob, runYjsScript, dragOnBoard, shapesOf, outage, HuddleServer } from './fixtures';
import { Page } from '@playwright/test';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { spawn } from 'node:child_process';
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
  // Bob has each tool's kind of shape, in order, and the text Ada typed.
  await expect.poll(async () => (await shapesOf(b)).map((s) => s.kind))
    .toEqual(['rect', 'ellipse', 'line', 'arrow', 'pen', 'sticky', 'text']);
  await expect.poll(async () => (await shapesOf(b)).find((s) => s.kind === 'text')?.text).toBe('Plan for Monday');

  // B sees A's cursor where A's pointer is, with A's name on a visible label, and it follows
  // A's pointer (both views are at the origin, zoom 1: board and screen points coincide).
  const cursor = b.locator('[data-testid=cursor][data-name="Ada"]');
  const label = cursor.locator('.cursor-label');
  const bBox = (await b.getByTestId('board').boundingBox())!;
  await a.mouse.move(box.x + 500, box.y + 450);
  await expect(cursor).toBeVisible();
  await expect(label).toBeVisible();
  await expect(label).toHaveText('Ada');
  await expect(cursor).toHaveAttribute('style', /translate\(500(\.0)?px, 450(\.0)?px\)/);
  await a.mouse.move(box.x + 300, box.y + 200, { steps: 5 });
  await expect(cursor).toHaveAttribute('style', /translate\(300(\.0)?px, 200(\.0)?px\)/);
  // Where it is drawn, too: the label sits 14 px right of and below the pointer's tip.
  await expect.poll(async () => {
    const l = (await label.boundingBox())!;
    return [Math.round(l.x - bBox.x), Math.round(l.y - bBox.y)];
  }).toEqual([314, 214]);

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
  expect((await shapesOf(b)).map((s) => s.kind)).toEqual(['ellipse']);
  await a.keyboard.press('Control+Shift+z');
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '2');
  // The toolbar's buttons do the same.
  await a.getByTestId('undo').click();
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '1');
  expect((await shapesOf(b)).map((s) => s.kind)).toEqual(['ellipse']);
  await a.getByTestId('redo').click();
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '2');
  expect((await shapesOf(b)).map((s) => s.kind).sort()).toEqual(['ellipse', 'rect']);
});

test('a stock Yjs client adds a rectangle and a chat message the page shows', async ({ browser, server }) => {
  const page = await newUser(await browser.newContext(), server.url, 'Ada');
  const room = new URL(page.url()).pathname.split('/').pop()!;
  await runYjsScript(server, 'yjs-peer.mjs', room);
  await expect(page.getByTestId('board')).toHaveAttribute('data-shape-count', '1');
  // The rectangle as the script wrote it (the schema's fields, read back by the page).
  const [rect] = await shapesOf(page);
  expect(rect).toMatchObject({ id: 'yjs-rect', kind: 'rect', x: 40, y: 40, w: 160, h: 90,
    stroke: '#1971c2', fill: '#a5d8ff', width: 3, z: 5 });
  await expect(page.getByTestId('chat-message').filter({ hasText: 'hello from a plain Yjs client' })).toBeVisible();
  await page.screenshot(shot('stock-yjs-client'));
});

test('text from peers is shown as text, never run as HTML', async ({ browser, server }) => {
  const a = await newUser(await browser.newContext(), server.url, 'Mallory');
  const b = await newUser(await browser.newContext(), a.url(), 'Bob');
  const dialogs: string[] = [];
  for (const page of [a, b]) page.on('dialog', (d) => { dialogs.push(d.message()); void d.dismiss(); });
  const payload = '<img src=x onerror="window.__pwned=1;alert(1)"><script>window.__pwned=2</script><b>bold</b>';
  await a.getByTestId('chat-input').fill(payload);
  await a.keyboard.press('Enter');
  // Bob's chat shows the payload's characters, exactly, as text.
  await expect(b.getByTestId('chat-message').last().locator('.text')).toHaveText(payload);
  await a.getByTestId('tool-text').click();
  const box = (await a.getByTestId('board').boundingBox())!;
  await a.mouse.click(box.x + 200, box.y + 200);
  await a.getByTestId('text-editor').fill(payload);
  await a.mouse.click(box.x + 700, box.y + 500);
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '1');
  // Bob has the text shape with the payload as its text...
  await expect.poll(async () => (await shapesOf(b))[0]?.text).toBe(payload);
  // ...and his SVG export of it carries it escaped, so the file cannot run it either.
  const svgDownload = b.waitForEvent('download');
  await b.getByTestId('export-svg').click();
  const svg = readFileSync(await (await svgDownload).path(), 'utf8');
  expect(svg).toContain('&lt;img src=x onerror=&quot;window.__pwned=1;alert(1)&quot;&gt;&lt;script&gt;');
  expect(svg).not.toContain('<img');
  expect(svg).not.toContain('<script');
  // An image that fails to load, as the payload's would: once its error handler has run, the
  // payload's would have run too, had it been parsed as HTML.
  for (const page of [a, b]) {
    await page.evaluate(() => new Promise((resolve) => {
      const probe = new Image();
      probe.onerror = resolve;
      probe.src = 'x';
    }));
    expect(await page.evaluate(() => (window as any).__pwned)).toBeUndefined();
    expect(await page.locator('img[src="x"]').count()).toBe(0);
    expect(await page.locator('b', { hasText: 'bold' }).count()).toBe(0);
  }
  expect(dialogs).toEqual([]);
});

test('a peer whose colours are addresses is shown in a neutral colour, and nothing is fetched from them', async ({ browser, server }) => {
  const a = await newUser(await browser.newContext(), server.url, 'Ada');
  const fetched: string[] = [];
  a.on('request', (r) => { if (r.url().includes('/leak-')) fetched.push(r.url()); });
  const room = new URL(a.url()).pathname.split('/').pop()!;
  // A stock Yjs client whose presence colour, shape colours and chat colour are all url(…).
  const eve = spawn('node', [join(__dirname, 'yjs-colors.mjs'), server.url.replace('http', 'ws') + '/ws', room, server.url],
    { stdio: ['pipe', 'pipe', 'inherit'] });
  try {
    await new Promise<void>((resolve, reject) => {
      eve.stdout!.on('data', (d) => { if (String(d).includes('ready')) resolve(); });
      eve.on('exit', (c) => reject(new Error(`yjs-colors.mjs exited with ${c}`)));
    });
    // Ada sees Eve, her cursor, her message and her rectangle...
    const person = a.getByTestId('presence-item').filter({ hasText: 'Eve' });
    await expect(person).toBeVisible();
    const label = a.getByTestId('cursor').filter({ hasText: 'Eve' }).locator('.cursor-label');
    await expect(label).toBeVisible();
    await expect(a.getByTestId('chat-message').filter({ hasText: 'look at my colours' })).toBeVisible();
    await expect(a.getByTestId('board')).toHaveAttribute('data-shape-count', '1');
    // ...in the neutral colour, with no image behind it.
    for (const el of [person.locator('.avatar'), label]) {
      const style = await el.evaluate((e) => { const c = getComputedStyle(e); return [c.backgroundImage, c.backgroundColor]; });
      expect(style).toEqual(['none', 'rgb(134, 142, 150)']);
    }
    const shape = (await shapesOf(a))[0];
    expect([shape.stroke, shape.fill]).toEqual(['#1e1e1e', 'transparent']);
    const svgDownload = a.waitForEvent('download');
    await a.getByTestId('export-svg').click();
    expect(readFileSync(await (await svgDownload).path(), 'utf8')).not.toContain('leak-');
    await a.screenshot(shot('peer-colours'));
    expect(fetched).toEqual([]);
  } finally {
    eve.stdin!.end();
  }
});

test('both clients ride out a server restart and keep the edits made during the outage', async ({ browser, server }) => {
  const [a, b] = await adaAndBob(browser, server.url);
  await a.getByTestId('tool-rect').click();
  await dragOnBoard(a, 100, 100, 200, 200);
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '1');

  await server.stop();
  // Both say when they will try again (the countdown of the backoff).
  for (const page of [a, b]) {
    await expect(page.getByTestId('connection-status')).toHaveText(/^Reconnecting in \d+ s$/);
    await expect(page.getByTestId('connection-status')).toHaveAttribute('data-state', 'reconnecting');
  }
  await a.screenshot(shot('outage-ada'));
  // Both keep drawing while the server is down.
  await dragOnBoard(a, 250, 100, 350, 200);
  await b.getByTestId('tool-ellipse').click();
  await dragOnBoard(b, 100, 300, 200, 400);
  await expect(a.getByTestId('board')).toHaveAttribute('data-shape-count', '2');
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '2');

  await server.start();
  await expect(a.getByTestId('connection-status')).toHaveAttribute('data-state', 'connected', { timeout: 45_000 });
  await expect(b.getByTestId('connection-status')).toHaveAttribute('data-state', 'connected', { timeout: 45_000 });
  await expect(a.getByTestId('board')).toHaveAttribute('data-shape-count', '3');
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '3');
});

/**
 * Decodes a PNG in the page and reports its size, how many of its pixels are not white, and for
 * each probe point the darkest pixel (sum of R, G and B, 765 = white) within 2 px of it.
 */
async function decodePng(page: Page, png: Buffer, probes: [number, number][]) {
  return page.evaluate(async ({ b64, probes }) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const bitmap = await createImageBitmap(new Blob([bytes], { type: 'image/png' }));
    const canvas = document.createElement('canvas');
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
    const ctx = canvas.getContext('2d')!;
    ctx.drawImage(bitmap, 0, 0);
    const d = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    let nonWhite = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i] < 250 || d[i + 1] < 250 || d[i + 2] < 250) nonWhite++;
    const darkest = probes.map(([x, y]) => {
      let best = 765;
      for (let dy = -2; dy <= 2; dy++) for (let dx = -2; dx <= 2; dx++) {
        const px = Math.round(x) + dx, py = Math.round(y) + dy;
        if (px < 0 || py < 0 || px >= canvas.width || py >= canvas.height) continue;
        const i = (py * canvas.width + px) * 4;
        best = Math.min(best, d[i] + d[i + 1] + d[i + 2]);
      }
      return best;
    });
    return { width: canvas.width, height: canvas.height, nonWhite, darkest };
  }, { b64: png.toString('base64'), probes });
}

test('export PNG and SVG contain the drawn shapes', async ({ browser, server }) => {
  const page = await newUser(await browser.newContext(), server.url, 'Ada');
  await page.getByTestId('tool-rect').click();
  await dragOnBoard(page, 100, 100, 300, 200);
  await page.getByTestId('tool-ellipse').click();
  await dragOnBoard(page, 350, 100, 450, 250);
  await page.keyboard.press('Escape'); // nothing selected: export the whole board
  const [rect, ellipse] = await shapesOf(page);
  expect([rect.kind, ellipse.kind]).toEqual(['rect', 'ellipse']);

  // SVG: one element per shape, each carrying its shape's id, of the right kind.
  const svgDownload = page.waitForEvent('download');
  await page.getByTestId('export-svg').click();
  const text = readFileSync(await (await svgDownload).path(), 'utf8');
  expect(text.match(/data-id="/g)).toHaveLength(2);
  expect(text).toMatch(new RegExp(`<rect [^>]*data-id="${rect.id}"`));
  expect(text).toMatch(new RegExp(`<ellipse [^>]*data-id="${ellipse.id}"`));

  // PNG: the image spans both shapes (plus 20 px of padding around their strokes), and the
  // shapes' outlines are drawn where they are, the empty inside of the rectangle is white.
  const pngDownload = page.waitForEvent('download');
  await page.getByTestId('export-png').click();
  const png = readFileSync(await (await pngDownload).path());
  expect(png.subarray(1, 4).toString()).toBe('PNG');
  const half = rect.width / 2;
  const ox = Math.min(rect.x, ellipse.x) - half - 20;
  const oy = Math.min(rect.y, ellipse.y) - half - 20;
  const decoded = await decodePng(page, png, [
    [rect.x - ox, rect.y + rect.h / 2 - oy], // the rectangle's left side
    [rect.x + rect.w / 2 - ox, rect.y + rect.h - oy], // its bottom side
    [rect.x + rect.w / 2 - ox, rect.y + rect.h / 2 - oy], // its (unfilled) middle
    [ellipse.x - ox, ellipse.y + ellipse.h / 2 - oy], // the ellipse's leftmost point
    [ellipse.x + ellipse.w / 2 - ox, ellipse.y + ellipse.h - oy], // its lowest point
  ]);
  expect(decoded.width).toBeCloseTo(ellipse.x + ellipse.w - rect.x + 2 * half + 40, -1);
  expect(decoded.height).toBeCloseTo(ellipse.h + 2 * half + 40, -1);
  const [left, bottom, middle, ellLeft, ellBottom] = decoded.darkest;
  expect(left, 'rectangle side drawn').toBeLessThan(300);
  expect(bottom, 'rectangle side drawn').toBeLessThan(300);
  expect(middle, 'inside of the rectangle white').toBe(765);
  expect(ellLeft, 'ellipse drawn').toBeLessThan(300);
  expect(ellBottom, 'ellipse drawn').toBeLessThan(300);
  // Outlines only: some pixels are drawn, most are background.
  expect(decoded.nonWhite).toBeGreaterThan(400);
  expect(decoded.nonWhite).toBeLessThan((decoded.width * decoded.height) / 4);

  // With the ellipse selected, only the selection is exported.
  await page.getByTestId('tool-select').click();
  const box = (await page.getByTestId('board').boundingBox())!;
  await page.mouse.click(box.x + 400, box.y + 175);
  const selDownload = page.waitForEvent('download');
  await page.getByTestId('export-png').click();
  const sel = readFileSync(await (await selDownload).path());
  expect(sel.readUInt32BE(16)).toBeLessThan(200);
  const selected = await decodePng(page, sel, [[20 + half, sel.readUInt32BE(20) / 2]]);
  expect(selected.darkest[0], 'ellipse drawn at the left of the selection export').toBeLessThan(300);
  const selSvgDownload = page.waitForEvent('download');
  await page.getByTestId('export-svg').click();
  const selSvg = readFileSync(await (await selSvgDownload).path(), 'utf8');
  expect(selSvg.match(/data-id="([^"]+)"/g)).toEqual([`data-id="${ellipse.id}"`]);
});

test('a big room shows how far opening has got, then every shape, over one socket, compressed', async ({ browser, server }) => {
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
  const received: number[] = [];
  page.on('websocket', (ws) => ws.on('framereceived', (f) => received.push(f.payload.length)));
  await page.goto(`${server.url}/r/big-room`);
  const board = page.getByTestId('board');
  await expect(board).toHaveAttribute('data-synced', 'true');
  await expect(board).toHaveAttribute('data-shape-count', String(shapes));
  await expect(page.getByTestId('loading')).toHaveCount(0);
  const seen: string[] = await page.evaluate(() => (window as any).__loadingSeen);
  expect(seen.some((t) => /^Opening the board \(\d+\.\d MB\)…$/.test(t))).toBe(true);
  // The socket index.html opened before the app loaded was the one the app used.
  expect(await page.evaluate(() => (window as any).__sockets)).toBe(1);
  // The 2.5 MB board travelled deflated: everything the socket received is under 1 MB.
  const total = received.reduce((a, b) => a + b, 0);
  expect(total, `bytes received: ${received.join(', ')}`).toBeLessThan(1_000_000);
  await page.screenshot(shot('big-room-open'));
});

test('coming back online to a big board that doubled meanwhile brings the other half, from her state', async ({ browser, server }) => {
  // 6,000 shapes now and 6,000 more while Ada is offline: a room big enough (over 10,000
  // items) that the server sends what she lacks from off its relay thread. (Opening a page
  // asks for the whole board at once, from index.html's early socket; a reconnect sends what
  // the page has.)
  const half = 6000;
  await runYjsScript(server, 'yjs-fill.mjs', 'half-room', String(half));
  const ctxA = await browser.newContext();
  const network = await outage(ctxA);
  await ctxA.addInitScript(() => localStorage.setItem('huddle.identity', JSON.stringify({ id: 'u-ada', name: 'Ada', color: '#1971c2' })));
  const a = await ctxA.newPage();
  await a.goto(`${server.url}/r/half-room`);
  const board = a.getByTestId('board');
  await expect(board).toHaveAttribute('data-shape-count', String(half));
  await expect(a.getByTestId('connection-status')).toHaveAttribute('data-state', 'connected');

  await network.cut();
  await expect(a.getByTestId('connection-status')).toHaveAttribute('data-state', 'offline');
  await runYjsScript(server, 'yjs-fill.mjs', 'half-room', String(half), String(half));
  const metric = async (name: string) => {
    const text = await (await fetch(`${server.url}/metrics`)).text();
    return Number(text.match(new RegExp(`^${name} (\\d+)$`, 'm'))?.[1] ?? NaN);
  };
  const before = await metric('huddle_pool_diffs_total');
  expect(before, 'the server counts the diffs it encodes off its relay thread').toBeGreaterThanOrEqual(0);

  await network.restore();
  await expect(board).toHaveAttribute('data-shape-count', String(2 * half));
  await expect(a.getByTestId('connection-status')).toHaveAttribute('data-state', 'connected');
  // (More than one if the page reconnected again while the answer was on its way, as it may
  // against a slow debug build.)
  expect(await metric('huddle_pool_diffs_total'), 'answered with a diff from her state').toBeGreaterThan(before);
  // The last shape of the second half is on the board as the filler wrote it.
  const shapes = await shapesOf(a);
  expect(shapes.find((sh) => sh.id === `s${2 * half - 1}`)).toMatchObject({ x: ((2 * half - 1) % 60) * 60, w: 44, h: 36 });
  await a.screenshot(shot('half-room-back-online'));
});

test('coming back to a room that grew by thousands of shapes meanwhile brings them all, compressed', async ({ browser, server }) => {
  // Ada's sockets go through Playwright, so she can be cut off, and what reaches her counted.
  const ctxA = await browser.newContext();
  const network = await outage(ctxA);
  const received = network.received;
  const a = await newUser(ctxA, server.url, 'Ada');
  await expect(a.getByTestId('connection-status')).toHaveAttribute('data-state', 'connected');
  await expect(a.getByTestId('board')).toHaveAttribute('data-shape-count', '0');
  const room = new URL(a.url()).pathname.split('/').pop()!;

  await network.cut();
  await expect(a.getByTestId('connection-status')).toHaveAttribute('data-state', 'offline');
  // Meanwhile someone fills the room: about 2.5 MB of shapes.
  const shapes = 18000;
  await runYjsScript(server, 'yjs-fill.mjs', room, String(shapes));

  // Back online, Ada's app opens a socket of its own (the page's early one is long gone), and
  // the difference comes as one compressed frame that the page inflates.
  await network.restore();
  const board = a.getByTestId('board');
  await expect(board).toHaveAttribute('data-shape-count', String(shapes));
  await expect(a.getByTestId('connection-status')).toHaveAttribute('data-state', 'connected');
  const last = received[received.length - 1];
  const total = last.reduce((x, y) => x + y, 0);
  expect(received.length, 'sockets opened').toBeGreaterThan(1);
  expect(total, `bytes received on the new socket: ${last.join(', ')}`).toBeLessThan(1_000_000);
  // And the board works on: a shape Ada draws now is the room's 18,001st.
  await a.keyboard.press('r');
  await dragOnBoard(a, 100, 100, 160, 150);
  await expect(board).toHaveAttribute('data-shape-count', String(shapes + 1));
});

test('a room at its size limit tells the one whose shape it refused, and the others carry on', async ({ browser }) => {
  const dir = mkdtempSync(join(tmpdir(), 'huddle-e2e-'));
  const server = new HuddleServer(dir, ['--max-room-bytes', '8192']);
  await server.start();
  try {
    // About 15 KB of shapes in one update: taken (the room was empty), and the room is full.
    await runYjsScript(server, 'yjs-fill.mjs', 'full-room', '100');
    const a = await newUser(await browser.newContext(), `${server.url}/r/full-room`, 'Ada');
    const b = await newUser(await browser.newContext(), `${server.url}/r/full-room`, 'Bob');
    await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '100');

    await a.getByTestId('tool-rect').click();
    await dragOnBoard(a, 100, 100, 200, 200);
    const status = a.getByTestId('connection-status');
    await expect(status).toHaveAttribute('data-state', 'refused');
    await expect(status).toHaveText(/^Room is full: your new shapes are not saved · retrying in \d+ s$/);
    await a.screenshot(shot('room-full-ada'));
    // Ada still sees what she drew; nobody else got it, and Bob is not disturbed.
    await expect(a.getByTestId('board')).toHaveAttribute('data-shape-count', '101');
    await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '100');
    await expect(b.getByTestId('connection-status')).toHaveAttribute('data-state', 'connected');
  } finally {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
