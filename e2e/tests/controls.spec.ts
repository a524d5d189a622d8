// The controls: tool shortcuts, selection commands, zoom and pan, the landing page, the chat's
// finer points, presence (selections, away), the theme, going offline, and accessible labels.
// Shape attributes are read from the room's JSON export (a user-visible feature), the canvas
// through its pixels, never through hooks into the code.
import { test, expect, newUser, adaAndBob, runYjsScript, dragOnBoard, shapesOf, viewOf, boardPixels, rgbOf, nextFrames } from './fixtures';
import { Page, WebSocketRoute } from '@playwright/test';

const board = (page: Page) => page.getByTestId('board');
const canvas = (page: Page) => page.getByTestId('board').locator('canvas');

test('every tool has its key, and the keys draw the right shapes', async ({ browser, server }) => {
  const page = await newUser(await browser.newContext(), server.url, 'Ada');
  const tools: Array<[string, string]> = [
    ['v', 'select'], ['h', 'hand'], ['p', 'pen'], ['r', 'rect'], ['o', 'ellipse'], ['l', 'line'],
    ['a', 'arrow'], ['t', 'text'], ['n', 'sticky'], ['e', 'eraser'], ['k', 'laser'], ['V', 'select'],
  ];
  const pressed = page.locator('[data-testid^="tool-"][aria-pressed="true"]');
  for (const [key, tool] of tools) {
    await page.keyboard.press(key);
    await expect(page.getByTestId(`tool-${tool}`), `${key} selects ${tool}`).toHaveAttribute('aria-pressed', 'true');
    await expect(pressed, 'one tool at a time').toHaveCount(1);
  }
  // Keys typed into a text field are text, not shortcuts.
  await page.getByTestId('chat-input').click();
  await page.keyboard.type('hello plan');
  await expect(page.getByTestId('chat-input')).toHaveValue('hello plan');
  await expect(page.getByTestId('tool-select')).toHaveAttribute('aria-pressed', 'true');
  await page.getByTestId('chat-input').fill('');
  await page.getByTestId('chat-input').blur();

  // Each drawing key, then a drag, makes that kind of shape.
  const draws: Array<[string, number, number, number, number]> = [
    ['r', 100, 100, 200, 180], ['o', 250, 100, 350, 180], ['l', 100, 250, 200, 300],
    ['a', 250, 250, 350, 300], ['p', 400, 100, 500, 180],
  ];
  for (const [i, [key, x1, y1, x2, y2]] of draws.entries()) {
    await page.keyboard.press(key);
    await dragOnBoard(page, x1, y1, x2, y2);
    await expect(board(page)).toHaveAttribute('data-shape-count', String(i + 1));
  }
  expect((await shapesOf(page)).map((s) => s.kind)).toEqual(['rect', 'ellipse', 'line', 'arrow', 'pen']);
});

test('arrow keys move the selection, Shift ten at a time, and the other user sees it', async ({ browser, server }) => {
  const [a, b] = await adaAndBob(browser, server.url);
  await a.getByTestId('tool-rect').click();
  await dragOnBoard(a, 100, 100, 200, 200);
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '1');
  const [before] = await shapesOf(b);
  // Nothing selected: the arrows do nothing to the board.
  await a.keyboard.press('Escape');
  await a.keyboard.press('ArrowRight');
  await a.keyboard.press('v');
  const box = (await a.getByTestId('board').boundingBox())!;
  await a.mouse.click(box.x + 150, box.y + 150);
  for (let i = 0; i < 3; i++) await a.keyboard.press('ArrowRight');
  await a.keyboard.press('Shift+ArrowDown');
  await a.keyboard.press('ArrowUp');
  await expect.poll(async () => { const [s] = await shapesOf(b); return [s.x - before.x, s.y - before.y]; })
    .toEqual([3, 9]);
  await expect(a.getByTestId('board')).toHaveAttribute('role', 'application');
});

test('duplicate, stroke width, marquee and shift-click selection, and delete reach the other user', async ({ browser, server }) => {
  const [a, b] = await adaAndBob(browser, server.url);
  await a.keyboard.press('r');
  await dragOnBoard(a, 100, 100, 200, 180);
  await expect(board(b)).toHaveAttribute('data-shape-count', '1');
  const [original] = await shapesOf(b);
  expect(original.width).toBe(2);

  // The new rectangle is selected: a wider stroke applies to it, and Bob sees that.
  await a.getByTestId('stroke-width').fill('6');
  await expect.poll(async () => (await shapesOf(b))[0].width).toBe(6);

  // Duplicate with the button, then the copy again with Ctrl+D: each copy lands 20 px lower
  // right, same size and style, and Bob gets both.
  await a.getByTestId('duplicate').click();
  await expect(board(b)).toHaveAttribute('data-shape-count', '2');
  await a.keyboard.press('Control+d');
  await expect(board(b)).toHaveAttribute('data-shape-count', '3');
  const [r1, d1, d2] = await shapesOf(b);
  expect(r1.id).toBe(original.id);
  for (const [copy, offset] of [[d1, 20], [d2, 40]] as const) {
    expect(copy.kind).toBe('rect');
    expect(copy.id).not.toBe(original.id);
    expect([copy.x - r1.x, copy.y - r1.y, copy.w, copy.h, copy.width]).toEqual([offset, offset, r1.w, r1.h, 6]);
  }

  // New shapes take the chosen width too.
  await a.keyboard.press('o');
  await dragOnBoard(a, 400, 100, 500, 200);
  await a.keyboard.press('r');
  await dragOnBoard(a, 600, 400, 700, 480);
  await expect(board(b)).toHaveAttribute('data-shape-count', '5');
  const all = await shapesOf(b);
  const [ellipse, far] = all.slice(3);
  expect([ellipse.kind, ellipse.width, far.kind, far.width]).toEqual(['ellipse', 6, 'rect', 6]);

  // A marquee around the three rectangles selects exactly them: Delete removes those for Bob.
  await a.keyboard.press('v');
  await dragOnBoard(a, 60, 60, 270, 260);
  await a.keyboard.press('Delete');
  await expect(board(b)).toHaveAttribute('data-shape-count', '2');
  expect((await shapesOf(b)).map((s) => s.id)).toEqual([ellipse.id, far.id]);

  // Click the ellipse, shift-click the far rectangle: both are selected, Delete removes both.
  await canvas(a).click({ position: { x: 450, y: 150 } });
  await canvas(a).click({ position: { x: 650, y: 440 }, modifiers: ['Shift'] });
  await a.keyboard.press('Delete');
  await expect(board(b)).toHaveAttribute('data-shape-count', '0');
  await expect(board(a)).toHaveAttribute('data-shape-count', '0');

  // Bob draws two; Ada selects everything with Ctrl+A and removes it with the toolbar's button.
  await b.keyboard.press('r');
  await dragOnBoard(b, 100, 100, 200, 200);
  await dragOnBoard(b, 300, 100, 400, 200);
  await expect(board(a)).toHaveAttribute('data-shape-count', '2');
  await a.keyboard.press('Control+a');
  await a.getByTestId('delete').click();
  await expect(board(b)).toHaveAttribute('data-shape-count', '0');
});

test('zoom and pan: ctrl+wheel, wheel, space+drag, reset and zoom to fit', async ({ browser, server }) => {
  const page = await newUser(await browser.newContext(), server.url, 'Ada');
  const box = (await board(page).boundingBox())!;
  expect(await viewOf(page)).toEqual([0, 0, 1]);

  // Ctrl+wheel up zooms in around the pointer: the board point under it stays put.
  const [sx, sy] = [300, 200];
  await page.mouse.move(box.x + sx, box.y + sy);
  await page.keyboard.down('Control');
  await page.mouse.wheel(0, -200);
  await page.keyboard.up('Control');
  await expect.poll(async () => (await viewOf(page))[2]).toBeGreaterThan(1.2);
  let [x, y, zoom] = await viewOf(page);
  expect(x + sx / zoom).toBeCloseTo(sx, 0);
  expect(y + sy / zoom).toBeCloseTo(sy, 0);
  await expect(page.getByTestId('zoom-reset')).toHaveText(`${Math.round(zoom * 100)}%`);

  // A plain wheel pans, by the wheel's distance in screen pixels, at the same zoom.
  await page.mouse.wheel(120, 80);
  await expect.poll(async () => (await viewOf(page))[0]).not.toBe(x);
  let [x2, y2, zoom2] = await viewOf(page);
  expect(zoom2).toBe(zoom);
  expect((x2 - x) * zoom).toBeCloseTo(120, 0);
  expect((y2 - y) * zoom).toBeCloseTo(80, 0);

  // Holding space turns a drag with the select tool into a pan (the board follows the pointer)
  // and draws no marquee or shape; let go of space, and the same drag pans no more.
  await page.keyboard.down('Space');
  await dragOnBoard(page, 500, 400, 400, 350);
  await page.keyboard.up('Space');
  [x, y] = await viewOf(page);
  expect((x - x2) * zoom).toBeCloseTo(100, 0);
  expect((y - y2) * zoom).toBeCloseTo(50, 0);
  await expect(page.getByTestId('tool-select')).toHaveAttribute('aria-pressed', 'true');
  await dragOnBoard(page, 500, 400, 400, 350);
  expect(await viewOf(page)).toEqual([x, y, zoom]);
  await expect(board(page)).toHaveAttribute('data-shape-count', '0');

  // Reset: back to 100 % at the origin.
  await page.getByTestId('zoom-reset').click();
  await expect(board(page)).toHaveAttribute('data-view', '0.0,0.0,1.000');
  await expect(page.getByTestId('zoom-reset')).toHaveText('100%');
  // The zoom-out button: below 100 %, and reset again.
  await page.getByTestId('zoom-out').click();
  await expect.poll(async () => (await viewOf(page))[2]).toBeLessThan(1);
  await expect(page.getByTestId('zoom-reset')).not.toHaveText('100%');
  await page.getByTestId('zoom-reset').click();
  await expect(board(page)).toHaveAttribute('data-view', '0.0,0.0,1.000');

  // Two rectangles far apart (the second drawn after panning away): zoom to fit shows both.
  await page.keyboard.press('r');
  await dragOnBoard(page, 100, 100, 300, 250);
  await page.mouse.move(box.x + 400, box.y + 300);
  await page.mouse.wheel(1500, 900);
  await expect.poll(async () => (await viewOf(page))[0]).toBeGreaterThan(1000);
  await dragOnBoard(page, 400, 300, 600, 450);
  await expect(board(page)).toHaveAttribute('data-shape-count', '2');
  const before = await board(page).getAttribute('data-view');
  await page.getByTestId('zoom-fit').click();
  await expect(board(page)).not.toHaveAttribute('data-view', before!);
  [x, y, zoom] = await viewOf(page);
  expect(zoom).toBeLessThan(1);
  const shapes = await shapesOf(page);
  for (const s of shapes) {
    for (const [bx, by] of [[s.x, s.y], [s.x + s.w, s.y + s.h]]) {
      const [px, py] = [(bx - x) * zoom, (by - y) * zoom];
      expect(px, `${s.id} on screen`).toBeGreaterThanOrEqual(0);
      expect(px).toBeLessThanOrEqual(box.width);
      expect(py).toBeGreaterThanOrEqual(0);
      expect(py).toBeLessThanOrEqual(box.height);
    }
  }
  // And it fits snugly: the pair spans most of the board's width or height.
  const spanX = (Math.max(...shapes.map((s) => s.x + s.w)) - Math.min(...shapes.map((s) => s.x))) * zoom;
  const spanY = (Math.max(...shapes.map((s) => s.y + s.h)) - Math.min(...shapes.map((s) => s.y))) * zoom;
  expect(Math.max(spanX / box.width, spanY / box.height)).toBeGreaterThan(0.8);
  await page.screenshot({ path: 'test-results/screens/zoom-to-fit.png' });
});

test('landing page: a readable random room, joining by name or link, a name is required', async ({ browser, server }) => {
  const a = await (await browser.newContext()).newPage();
  await a.goto(server.url);
  // No name: an error, and no room.
  await a.getByTestId('create-room').click();
  await expect(a.getByTestId('landing-error')).toHaveText('Please enter your name first.');
  expect(new URL(a.url()).pathname).toBe('/');
  await a.getByTestId('name-input').fill('Ada');
  await a.getByTestId('color-9c36b5').click();
  await a.getByTestId('create-room').click();
  await expect(a).toHaveURL(/\/r\/[a-z]+-[a-z]+-\d{4}$/);
  await expect(a.getByTestId('presence-me').locator('.avatar')).toHaveCSS('background-color', 'rgb(156, 54, 181)');
  const created = new URL(a.url()).pathname.split('/').pop()!;
  await expect(a.getByTestId('connection-status')).toHaveAttribute('data-state', 'connected');
  await expect(a.getByTestId('room-name')).toHaveText(created);
  await expect(a).toHaveTitle(`${created} · Huddle`);

  // Home again: the name is remembered; a room name that cannot be one is refused with a reason;
  // a typed name leads to that room.
  await a.getByTestId('home').click();
  await expect(a.getByTestId('name-input')).toHaveValue('Ada');
  await expect(a.getByTestId('color-9c36b5')).toHaveAttribute('aria-checked', 'true');
  // Also in a new page load.
  await a.reload();
  await expect(a.getByTestId('name-input')).toHaveValue('Ada');
  await expect(a.getByTestId('color-9c36b5')).toHaveAttribute('aria-checked', 'true');
  await a.getByTestId('join-input').fill('team standup!');
  await a.getByTestId('join-input').press('Enter');
  await expect(a.getByTestId('landing-error')).toContainText("That room name won't work");
  expect(new URL(a.url()).pathname).toBe('/');
  await a.getByTestId('join-input').fill('team-standup');
  await a.getByTestId('join-input').press('Enter');
  await expect(a).toHaveURL(`${server.url}/r/team-standup`);
  await expect(a.getByTestId('connection-status')).toHaveAttribute('data-state', 'connected');
  await expect(a.getByTestId('room-name')).toHaveText('team-standup');

  // Bob pastes the room's link into the join box: same room, he and Ada see each other.
  const b = await (await browser.newContext()).newPage();
  await b.goto(server.url);
  await b.getByTestId('join-input').fill(`${server.url}/r/team-standup`);
  await b.getByTestId('join-room').click();
  await expect(b.getByTestId('landing-error')).toHaveText('Please enter your name first.');
  await b.getByTestId('name-input').fill('Bob');
  await b.getByTestId('join-room').click();
  await expect(b).toHaveURL(`${server.url}/r/team-standup`);
  await expect(b.getByTestId('presence-item').filter({ hasText: 'Ada' })).toBeVisible();
  await expect(a.getByTestId('presence-item').filter({ hasText: 'Bob' })).toBeVisible();

  // Carol opens the link itself: the board loads at once behind the name prompt, so she sees
  // what she is joining; nobody sees her and she cannot draw until she gives a name, and she
  // cannot skip it.
  await a.getByTestId('tool-rect').click();
  await dragOnBoard(a, 100, 100, 200, 180);
  const c = await (await browser.newContext()).newPage();
  await c.goto(`${server.url}/r/team-standup`);
  await expect(c.getByTestId('join-prompt')).toBeVisible();
  await expect(c.getByTestId('join-room-name')).toHaveText('You are joining team-standup. Who are you?');
  await expect(c.getByTestId('name-input')).toBeFocused();
  await expect(c.getByTestId('board')).toHaveAttribute('data-synced', 'true');
  await expect(c.getByTestId('board')).toHaveAttribute('data-shape-count', '1');
  await c.getByTestId('enter-room').click();
  await expect(c.getByTestId('landing-error')).toHaveText('Please enter your name first.');
  await c.screenshot({ path: 'test-results/screens/join-prompt.png' });
  await c.locator('body').press('Control+a');
  await c.locator('body').press('Delete');
  await expect(a.getByTestId('presence-item')).toHaveCount(1);
  await expect(c.getByTestId('presence-me')).toHaveCount(0);
  await c.getByTestId('name-input').fill('Carol');
  await c.getByTestId('enter-room').click();
  await expect(c.getByTestId('join-prompt')).toHaveCount(0);
  await expect(c).toHaveURL(`${server.url}/r/team-standup`);
  await expect(c.getByTestId('presence-me')).toHaveText(/Carol \(you\)/);
  await expect(c.getByTestId('presence-item')).toHaveCount(2);
  await expect(a.getByTestId('presence-item').filter({ hasText: 'Carol' })).toBeVisible();
  // Her keys before joining changed nothing (anything she had sent would have reached Ada
  // before her presence did: one socket, relayed in order).
  await expect(a.getByTestId('board')).toHaveAttribute('data-shape-count', '1');
  await expect(c.getByTestId('board')).toHaveAttribute('data-shape-count', '1');
});

test('chat: times, new lines, the length limit, the unread badge and scrolling', async ({ browser, server }) => {
  const [a, b] = await adaAndBob(browser, server.url);
  const hhmm = (page: Page) => page.evaluate(() => {
    const d = new Date();
    return `${String(d.getHours()).padStart(2, '0')}:${String(d.getMinutes()).padStart(2, '0')}`;
  });
  const input = a.getByTestId('chat-input');
  const messagesAtB = b.getByTestId('chat-message');

  // Shift+Enter is a new line in the message; Enter sends it. Bob sees both lines, and when.
  const before = await hhmm(b);
  await input.click();
  await a.keyboard.type('line one');
  await a.keyboard.press('Shift+Enter');
  await a.keyboard.type('line two');
  await expect(input).toHaveValue('line one\nline two');
  await a.keyboard.press('Enter');
  await expect(input).toHaveValue('');
  await expect(messagesAtB).toHaveCount(1);
  const after = await hhmm(b);
  expect(await messagesAtB.first().locator('.text').evaluate((p: HTMLElement) => p.innerText)).toBe('line one\nline two');
  const time = messagesAtB.first().locator('time');
  await expect(time).toHaveText(/^\d{2}:\d{2}$/);
  expect([before, after]).toContain(await time.textContent());

  // Over the limit: a clear message, Send disabled, Enter sends nothing.
  await input.fill('x'.repeat(4001));
  await expect(a.getByTestId('chat-too-long')).toHaveText('Messages are limited to 4000 characters (4001 now).');
  await expect(a.getByTestId('chat-send')).toBeDisabled();
  await input.press('Enter');
  await input.fill('x'.repeat(4000));
  await expect(a.getByTestId('chat-too-long')).toHaveCount(0);
  await expect(a.getByTestId('chat-send')).toBeEnabled();
  await input.fill('short again');
  await a.getByTestId('chat-send').click();
  // What Bob receives next is the short one: the long one was never sent.
  await expect(messagesAtB).toHaveCount(2);
  await expect(messagesAtB.last().locator('.text')).toHaveText('short again');

  // Bob collapses the chat; Ada sends enough to fill it: a badge counts them.
  await b.getByTestId('chat-toggle').click();
  await expect(b.getByTestId('chat-toggle')).toHaveAttribute('aria-expanded', 'false');
  await expect(b.getByTestId('chat-unread')).toHaveCount(0);
  for (let i = 1; i <= 25; i++) {
    await input.fill(`message ${i}`);
    await input.press('Enter');
    if (i === 1) await expect(b.getByTestId('chat-unread')).toHaveText('1');
  }
  await expect(b.getByTestId('chat-unread')).toHaveText('25');
  // Opening the chat clears the badge and shows the newest message.
  await b.getByTestId('chat-toggle').click();
  await expect(b.getByTestId('chat-unread')).toHaveCount(0);
  const list = b.getByTestId('chat-messages');
  const gap = () => list.evaluate((l) => l.scrollHeight - l.scrollTop - l.clientHeight);
  expect(await list.evaluate((l) => l.scrollHeight > l.clientHeight + 100), 'enough messages to scroll').toBe(true);
  await expect.poll(gap, { message: 'scrolled to the newest' }).toBeLessThan(2);
  await expect(messagesAtB.last()).toContainText('message 25');
  await expect(messagesAtB.last()).toBeInViewport();

  // Bob scrolls up to read: a new message does not pull him down...
  await list.hover();
  await b.mouse.wheel(0, -100000);
  await expect.poll(() => list.evaluate((l) => l.scrollTop)).toBe(0);
  await nextFrames(b); // the scroll event has been handled
  await input.fill('while you read');
  await input.press('Enter');
  await expect(messagesAtB.last()).toContainText('while you read');
  await nextFrames(b);
  expect(await list.evaluate((l) => l.scrollTop)).toBe(0);
  await expect(messagesAtB.first()).toBeInViewport();
  // ...but once he is back at the bottom, the next one is scrolled into view.
  await b.mouse.wheel(0, 100000);
  await expect.poll(gap).toBeLessThan(2);
  await nextFrames(b);
  await input.fill('back at the bottom');
  await input.press('Enter');
  await expect(messagesAtB.last()).toContainText('back at the bottom');
  await expect.poll(gap).toBeLessThan(2);
  await expect(messagesAtB.last()).toBeInViewport();
  await b.screenshot({ path: 'test-results/screens/chat-scrolled.png' });
});

test('chat messages from a client that leaves out their ids all show, and so do the ones after them', async ({ browser, server }) => {
  const a = await newUser(await browser.newContext(), server.url, 'Ada');
  const room = new URL(a.url()).pathname.split('/').pop()!;
  await runYjsScript(server, 'yjs-chat-fill.mjs', room, '2', 'noid');
  const messages = a.getByTestId('chat-message');
  await expect(messages).toHaveCount(2);
  await a.getByTestId('chat-input').fill('and mine');
  await a.getByTestId('chat-input').press('Enter');
  await expect(messages).toHaveCount(3);
  await expect(messages.nth(0)).toContainText('message 0');
  await expect(messages.nth(1)).toContainText('message 1');
  await expect(messages.nth(2)).toContainText('and mine');
});

test('a chat message another client removes and replaces in one change shows as replaced', async ({ browser, server }) => {
  const a = await newUser(await browser.newContext(), server.url, 'Ada');
  const room = new URL(a.url()).pathname.split('/').pop()!;
  const messages = a.getByTestId('chat-message');
  for (const text of ['first', 'second']) {
    await a.getByTestId('chat-input').fill(text);
    await a.getByTestId('chat-input').press('Enter');
  }
  await expect(messages).toHaveCount(2);
  await expect(messages.last()).toContainText('second');
  // A stock Yjs client deletes Ada's last message and posts one in the same transaction: the
  // count stays 2, and Ada's panel must still show the change.
  await runYjsScript(server, 'yjs-chat-replace.mjs', room, 'replaced by Kim');
  await expect(messages.last()).toContainText('replaced by Kim');
  await expect(messages).toHaveCount(2);
  await expect(messages.filter({ hasText: 'second' })).toHaveCount(0);
});

test('a long chat history opens at its newest messages, with earlier ones a click away', async ({ browser, server }) => {
  const a = await newUser(await browser.newContext(), server.url, 'Ada');
  const room = new URL(a.url()).pathname.split('/').pop()!;
  await runYjsScript(server, 'yjs-chat-fill.mjs', room, '1000');
  const b = await newUser(await browser.newContext(), a.url(), 'Bob');
  const messages = b.getByTestId('chat-message');
  // The newest 100, the latest in view; the other 900 are not drawn.
  await expect(messages).toHaveCount(100);
  await expect(messages.last()).toContainText('message 999');
  await expect(messages.last()).toBeInViewport();
  await expect(messages.first()).toContainText('message 900');
  // A page of earlier ones goes above, and the one being read stays in view.
  await messages.first().scrollIntoViewIfNeeded();
  await b.getByTestId('chat-earlier').click();
  await expect(messages).toHaveCount(200);
  await expect(messages.first()).toContainText('message 800');
  await expect(messages.filter({ hasText: 'message 900' })).toBeInViewport();
  await b.screenshot({ path: 'test-results/screens/chat-earlier.png' });
  // New messages still come in at the bottom, both ways; while Bob reads above, what he is
  // reading stays put (nothing is dropped above it).
  await a.getByTestId('chat-input').fill('still here');
  await a.getByTestId('chat-input').press('Enter');
  await expect(messages.last()).toContainText('still here');
  await expect(messages).toHaveCount(201);
  await expect(messages.first()).toContainText('message 800');
  await b.getByTestId('chat-input').fill('me too');
  await b.getByTestId('chat-input').press('Enter');
  await expect(a.getByTestId('chat-message').last()).toContainText('me too');
  await expect(a.getByTestId('chat-message')).toHaveCount(100);
});

test("presence: Ada's selection is outlined in her colour at Bob's, and a hidden tab shows her away", async ({ browser, server }) => {
  const green = '#2f9e44';
  const a = await newUser(await browser.newContext(), server.url, 'Ada', green);
  const b = await newUser(await browser.newContext(), a.url(), 'Bob', '#1971c2');
  const ada = b.locator('[data-testid=presence-item][data-name="Ada"]');
  await expect(ada).toHaveAttribute('data-idle', 'false');
  await expect(ada.locator('.avatar')).toHaveCSS('background-color', 'rgb(47, 158, 68)');

  await a.keyboard.press('r');
  await dragOnBoard(a, 200, 200, 320, 280);
  await expect(board(b)).toHaveAttribute('data-shape-count', '1');
  const [rect] = await shapesOf(b);
  // The outline runs 4 px outside the shape's bounds (stroke included): look for green on a
  // strip just left of the rectangle, and along its top.
  const x0 = rect.x - rect.width / 2;
  const y0 = rect.y - rect.width / 2;
  const outlined = async () =>
    (await boardPixels(b, { x: x0 - 8, y: y0, w: 6, h: rect.h }, rgbOf(green), 30)) +
    (await boardPixels(b, { x: x0, y: y0 - 8, w: rect.w, h: 6 }, rgbOf(green), 30));
  // Ada's new rectangle is selected for her: Bob sees it outlined in green.
  await expect.poll(outlined, { message: "Ada's selection outlined at Bob's" }).toBeGreaterThan(50);
  await b.screenshot({ path: 'test-results/screens/peer-selection-bob.png' });
  // She deselects: the outline goes; she clicks it again: it is back.
  await a.keyboard.press('Escape');
  await expect.poll(outlined).toBe(0);
  await a.keyboard.press('v');
  await canvas(a).click({ position: { x: 260, y: 240 } });
  await expect.poll(outlined).toBeGreaterThan(50);

  // Ada's tab is hidden (she switched tabs): Bob sees her away; back, she is not.
  const setHidden = (hidden: boolean) => a.evaluate((hidden) => {
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => hidden });
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => (hidden ? 'hidden' : 'visible') });
    document.dispatchEvent(new Event('visibilitychange', { bubbles: true }));
  }, hidden);
  await setHidden(true);
  await expect(ada).toHaveAttribute('data-idle', 'true');
  await expect(ada).toContainText('away');
  await setHidden(false);
  await expect(ada).toHaveAttribute('data-idle', 'false');
  await expect(ada).not.toContainText('away');
});

test('presence: a peer gone silent (frozen tab, socket still open) shows as away', async ({ browser, server }) => {
  // Both pages run on Playwright's fake clocks, which tick in real time until told otherwise.
  const ctxA = await browser.newContext();
  await ctxA.clock.install();
  const a = await newUser(ctxA, server.url, 'Ada');
  const ctxB = await browser.newContext();
  await ctxB.clock.install();
  const b = await newUser(ctxB, a.url(), 'Bob');
  const ada = b.locator('[data-testid=presence-item][data-name="Ada"]');
  await expect(ada).toHaveAttribute('data-idle', 'false');

  // Ada's page stops running timers (as a frozen tab would): no more heartbeats from her,
  // though her socket stays open. 40 s pass for Bob: two heartbeats missed, she is away.
  await ctxA.clock.pauseAt(Date.now() + 1000);
  await ctxB.clock.fastForward('00:40');
  await expect(ada).toHaveAttribute('data-idle', 'true');
  await expect(ada).toContainText('away');
  // She is still in the room, only away.
  await expect(b.getByTestId('presence-item')).toHaveCount(1);

  // Ada's tab wakes up and she moves her pointer: Bob sees her back.
  await ctxA.clock.resume();
  const box = (await board(a).boundingBox())!;
  await a.mouse.move(box.x + 300, box.y + 300);
  await a.mouse.move(box.x + 320, box.y + 310);
  await expect(ada).toHaveAttribute('data-idle', 'false');
  await expect(ada).not.toContainText('away');
});

test('presence: two minutes without input shows a user as away, and her next move brings her back', async ({ browser, server }) => {
  // Ada's page runs on Playwright's fake clock (ticking in real time until told otherwise).
  const ctxA = await browser.newContext();
  await ctxA.clock.install();
  const a = await newUser(ctxA, server.url, 'Ada');
  const b = await newUser(await browser.newContext(), a.url(), 'Bob');
  const ada = b.locator('[data-testid=presence-item][data-name="Ada"]');
  await expect(ada).toHaveAttribute('data-idle', 'false');
  // Two minutes and ten seconds without touching anything (her page's timers run, her
  // heartbeats keep going): away.
  await ctxA.clock.fastForward('02:10');
  await expect(ada).toHaveAttribute('data-idle', 'true');
  await expect(ada).toContainText('away');
  await expect(b.getByTestId('presence-item')).toHaveCount(1);
  // She moves her pointer: back.
  const box = (await board(a).boundingBox())!;
  await a.mouse.move(box.x + 300, box.y + 300);
  await a.mouse.move(box.x + 320, box.y + 310);
  await expect(ada).toHaveAttribute('data-idle', 'false');
  await expect(ada).not.toContainText('away');
});

test('the theme toggle switches light and dark, and the choice outlives a reload', async ({ browser, server }) => {
  const context = await browser.newContext({ colorScheme: 'light' });
  const page = await newUser(context, server.url, 'Ada');
  const body = page.locator('body');
  await expect(body).toHaveClass('theme-light');
  await page.getByTestId('theme-toggle').click();
  await expect(body).toHaveClass('theme-dark');
  // The board's background follows the theme.
  await expect(board(page)).toHaveCSS('background-color', 'rgb(24, 25, 28)');
  expect(await page.evaluate(() => localStorage.getItem('huddle.theme'))).toBe('dark');
  // (The page itself starts light: only the app can make it dark.)
  await page.reload();
  await expect(page.getByTestId('connection-status')).toBeVisible();
  await expect(body).toHaveClass('theme-dark');

  // Chosen light on a system that prefers dark: light it stays, across a reload too.
  await page.emulateMedia({ colorScheme: 'dark' });
  await page.getByTestId('theme-toggle').click();
  await expect(body).toHaveClass('theme-light');
  await page.reload();
  // Once the app runs (its status badge is there) and has had a frame, it is still light.
  await expect(page.getByTestId('connection-status')).toBeVisible();
  await nextFrames(page);
  await expect(body).toHaveClass('theme-light');
  await expect(board(page)).toHaveCSS('background-color', 'rgb(255, 255, 255)');

  // Someone who never chose follows the system.
  const other = await newUser(await browser.newContext({ colorScheme: 'dark' }), page.url(), 'Bob');
  await expect(other.locator('body')).toHaveClass('theme-dark');
  expect(await other.evaluate(() => localStorage.getItem('huddle.theme'))).toBeNull();
});

test('offline: the status says so, the others see you leave, and edits made meanwhile reach everyone', async ({ browser, server }) => {
  // Chromium's offline emulation holds an open WebSocket's traffic without closing it; a real
  // loss of network ends up dropping the socket. So Ada's room socket goes through Playwright,
  // which drops it when she goes offline and refuses new ones until she is back.
  const ctxA = await browser.newContext();
  let offline = false;
  const open: Array<{ page: WebSocketRoute; server: WebSocketRoute }> = [];
  await ctxA.routeWebSocket(/\/ws\//, (ws) => {
    if (offline) return void ws.close({ code: 1001, reason: 'offline' });
    open.push({ page: ws, server: ws.connectToServer() });
  });
  const a = await newUser(ctxA, server.url, 'Ada');
  const b = await newUser(await browser.newContext(), a.url(), 'Bob');
  await expect(a.getByTestId('connection-status')).toHaveAttribute('data-state', 'connected');
  await expect(b.getByTestId('presence-item').filter({ hasText: 'Ada' })).toHaveCount(1);

  offline = true;
  await ctxA.setOffline(true);
  for (const { page, server } of open.splice(0)) {
    await server.close({ code: 1001, reason: 'offline' });
    await page.close({ code: 1001, reason: 'offline' });
  }
  await expect(a.getByTestId('connection-status')).toHaveAttribute('data-state', 'offline');
  await expect(a.getByTestId('connection-status')).toHaveText('Offline');
  await expect(b.getByTestId('presence-item').filter({ hasText: 'Ada' })).toHaveCount(0);
  await a.screenshot({ path: 'test-results/screens/browser-offline.png' });
  // Both draw meanwhile; Ada writes in the chat too.
  await a.keyboard.press('r');
  await dragOnBoard(a, 100, 100, 200, 200);
  await b.keyboard.press('o');
  await dragOnBoard(b, 300, 100, 400, 200);
  await a.getByTestId('chat-input').fill('sent while offline');
  await a.getByTestId('chat-input').press('Enter');
  await expect(board(a)).toHaveAttribute('data-shape-count', '1');
  await expect(board(b)).toHaveAttribute('data-shape-count', '1');
  await expect(a.getByTestId('connection-status')).toHaveAttribute('data-state', 'offline');

  // Back online: Ada reconnects by herself, and everything meets.
  offline = false;
  await ctxA.setOffline(false);
  await expect(a.getByTestId('connection-status')).toHaveAttribute('data-state', 'connected');
  for (const page of [a, b]) {
    await expect(board(page)).toHaveAttribute('data-shape-count', '2');
    await expect.poll(async () => (await shapesOf(page)).map((s) => s.kind).sort()).toEqual(['ellipse', 'rect']);
  }
  await expect(b.getByTestId('chat-message').filter({ hasText: 'sent while offline' })).toHaveAttribute('data-author', 'Ada');
  await expect(b.getByTestId('presence-item').filter({ hasText: 'Ada' })).toHaveCount(1);
});

test('the browser going offline shows in the status even while the socket has not noticed yet', async ({ browser, server }) => {
  const ctxA = await browser.newContext();
  const a = await newUser(ctxA, server.url, 'Ada');
  const b = await newUser(await browser.newContext(), a.url(), 'Bob');
  await ctxA.setOffline(true);
  expect(await a.evaluate(() => navigator.onLine)).toBe(false);
  // Nothing Ada draws reaches Bob now...
  await a.keyboard.press('r');
  await dragOnBoard(a, 100, 100, 200, 200);
  // ...and her status must not claim otherwise.
  await expect(a.getByTestId('connection-status')).toHaveAttribute('data-state', 'offline');
  await expect(board(b)).toHaveAttribute('data-shape-count', '0');
  // Back online, she reconnects by herself and the rectangle arrives.
  await ctxA.setOffline(false);
  await expect(a.getByTestId('connection-status')).toHaveAttribute('data-state', 'connected');
  await expect(board(b)).toHaveAttribute('data-shape-count', '1');
});

test('a socket that silently stops answering is dropped at a heartbeat and the page reconnects', async ({ browser, server }) => {
  // Ada's socket goes through Playwright; at some point it stops passing the server's frames
  // to her page, without closing anything (a network gone quiet, a laptop asleep). Her clock
  // is fake, so heartbeats (every 15 s) can be fast-forwarded.
  const ctxA = await browser.newContext();
  await ctxA.clock.install();
  let silent = false;
  let sockets = 0;
  await ctxA.routeWebSocket(/\/ws\//, (ws) => {
    sockets++;
    const upstream = ws.connectToServer();
    const mine = sockets;
    upstream.onMessage((m) => { if (!(silent && mine === 1)) ws.send(m); });
  });
  const a = await newUser(ctxA, server.url, 'Ada');
  const b = await newUser(await browser.newContext(), a.url(), 'Bob');
  await expect(a.getByTestId('connection-status')).toHaveAttribute('data-state', 'connected');
  expect(sockets).toBe(1);

  silent = true;
  // The first heartbeat with nothing heard since the one before asks; the next finds no
  // answer and drops the socket.
  await ctxA.clock.fastForward('00:16');
  await ctxA.clock.fastForward('00:16');
  await ctxA.clock.fastForward('00:16');
  await expect(a.getByTestId('connection-status')).not.toHaveAttribute('data-state', 'connected');
  // The backoff (at most a few seconds for a first attempt) runs on the fake clock too: moved
  // on a second at a time, with real time between for the new socket to open. (Moved on 31 s
  // at once, the new socket's own first two heartbeats could pass before its first answer
  // was read, and drop it too.)
  await expect
    .poll(async () => {
      await ctxA.clock.fastForward('00:01');
      return a.getByTestId('connection-status').getAttribute('data-state');
    })
    .toBe('connected');
  expect(sockets).toBe(2);
  // The new socket works both ways.
  await b.keyboard.press('r');
  await dragOnBoard(b, 100, 100, 200, 200);
  await expect(board(a)).toHaveAttribute('data-shape-count', '1');
});

test('after a dropped socket comes back, both see each other at once, though neither moved', async ({ browser, server }) => {
  // Both clocks are fake, so no heartbeat re-sends anyone's presence: what each sees after the
  // reconnect comes from the reconnect alone. Ada's socket goes through Playwright, which
  // drops it once.
  const ctxA = await browser.newContext();
  const ctxB = await browser.newContext();
  await ctxA.clock.install();
  await ctxB.clock.install();
  const open: Array<{ page: WebSocketRoute; server: WebSocketRoute }> = [];
  await ctxA.routeWebSocket(/\/ws\//, (ws) => {
    open.push({ page: ws, server: ws.connectToServer() });
  });
  const a = await newUser(ctxA, server.url, 'Ada');
  const b = await newUser(ctxB, a.url(), 'Bob');
  await expect(a.getByTestId('presence-item').filter({ hasText: 'Bob' })).toHaveCount(1);
  await expect(b.getByTestId('presence-item').filter({ hasText: 'Ada' })).toHaveCount(1);

  for (const { page, server } of open.splice(0)) {
    await server.close({ code: 1001, reason: 'network blip' });
    await page.close({ code: 1001, reason: 'network blip' });
  }
  await expect(b.getByTestId('presence-item').filter({ hasText: 'Ada' })).toHaveCount(0);
  // The first reconnect comes within half a second; a heartbeat would take fifteen.
  await ctxA.clock.fastForward('00:02');
  await expect(a.getByTestId('connection-status')).toHaveAttribute('data-state', 'connected');
  expect(open.length).toBe(1);
  await expect(b.getByTestId('presence-item').filter({ hasText: 'Ada' })).toHaveCount(1);
  await expect(a.getByTestId('presence-item').filter({ hasText: 'Bob' })).toHaveCount(1);
});

test('a new, empty room reports data-synced once it is on screen, not later', async ({ browser, server }) => {
  const page = await (await browser.newContext()).newPage();
  await page.goto(server.url);
  await page.getByTestId('name-input').fill('Ada');
  await page.getByTestId('create-room').click();
  // Connected is set together with the sync; the board is drawn synced in the next frame.
  await expect(page.getByTestId('connection-status')).toHaveAttribute('data-state', 'connected');
  await expect(page.getByTestId('loading')).toHaveCount(0);
  await nextFrames(page);
  expect(await board(page).getAttribute('data-synced')).toBe('true');
});

/** Buttons, inputs, text areas, selects and links on the page without an accessible name or a test id. */
async function unlabelledControls(page: Page): Promise<string[]> {
  return page.evaluate(() => {
    const nameOf = (el: HTMLElement): string => {
      const aria = el.getAttribute('aria-label')?.trim();
      if (aria) return aria;
      const by = el.getAttribute('aria-labelledby');
      if (by) {
        const text = by.split(/\s+/).map((id) => document.getElementById(id)?.textContent ?? '').join(' ').trim();
        if (text) return text;
      }
      const labels = (el as HTMLInputElement).labels;
      if (labels && labels.length) {
        const text = [...labels].map((l) => l.textContent ?? '').join(' ').trim();
        if (text) return text;
      }
      if (el.tagName === 'BUTTON' || el.tagName === 'A') {
        const text = (el.textContent ?? '').trim();
        if (text) return text;
      }
      return el.getAttribute('title')?.trim() ?? '';
    };
    const offenders: string[] = [];
    for (const el of document.querySelectorAll<HTMLElement>('button, input, textarea, select, a[href]')) {
      const problems = [];
      if (!nameOf(el)) problems.push('no accessible name');
      if (!el.getAttribute('data-testid')) problems.push('no data-testid');
      if (problems.length) offenders.push(`${el.outerHTML.slice(0, 120)}: ${problems.join(', ')}`);
    }
    return offenders;
  });
}

test('every control has an accessible name and a test id', async ({ browser, server }) => {
  const a = await (await browser.newContext()).newPage();
  await a.goto(server.url);
  await expect(a.getByTestId('create-room')).toBeVisible();
  expect(await unlabelledControls(a), 'landing page').toEqual([]);
  await a.getByTestId('name-input').fill('Ada');
  await a.getByTestId('create-room').click();
  await expect(a.getByTestId('connection-status')).toHaveAttribute('data-state', 'connected');
  const b = await newUser(await browser.newContext(), a.url(), 'Bob');
  await expect(a.getByTestId('presence-item')).toHaveCount(1);
  // With the text editor and the chat's error message open too.
  await a.getByTestId('tool-text').click();
  await canvas(a).click({ position: { x: 200, y: 200 } });
  await expect(a.getByTestId('text-editor')).toBeVisible();
  expect(await unlabelledControls(a), 'room page').toEqual([]);
  await b.getByTestId('chat-input').fill('x'.repeat(4001));
  await expect(b.getByTestId('chat-too-long')).toBeVisible();
  expect(await unlabelledControls(b), 'room page with a too-long message').toEqual([]);
  // The room page on a phone.
  const phone = await newUser(await browser.newContext({ viewport: { width: 390, height: 844 }, hasTouch: true, isMobile: true }), a.url(), 'Pia');
  await phone.getByTestId('chat-toggle').click();
  await expect(phone.getByTestId('chat-input')).toBeVisible();
  expect(await unlabelledControls(phone), 'room page on a phone').toEqual([]);
});
