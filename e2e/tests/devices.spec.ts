// The board on a phone (touch: pinch zoom), the dark theme, the eraser and the laser pointer.
import { test, expect, newUser, dragOnBoard, boardPixels } from './fixtures';

test('on a phone: two-finger pinch zooms the board', async ({ browser, server }) => {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 }, hasTouch: true, isMobile: true });
  const page = await newUser(context, server.url, 'Pia');
  const box = (await page.getByTestId('board').boundingBox())!;
  const cx = box.x + box.width / 2, cy = box.y + box.height / 2;
  const cdp = await context.newCDPSession(page);
  const touch = async (type: string, spread: number) => cdp.send('Input.dispatchTouchEvent', {
    type,
    touchPoints: type === 'touchEnd' ? [] : [{ x: cx - spread, y: cy, id: 1 }, { x: cx + spread, y: cy, id: 2 }],
  });
  await touch('touchStart', 30);
  for (let s = 40; s <= 120; s += 10) await touch('touchMove', s);
  await touch('touchEnd', 0);
  await expect.poll(async () => Number((await page.getByTestId('board').getAttribute('data-view'))!.split(',')[2]))
    .toBeGreaterThan(2);
  await expect(page.getByTestId('board')).toHaveAttribute('data-shape-count', '0');
  await page.screenshot({ path: 'test-results/screens/phone.png' });
});

test('on a phone the board gets the screen and the chat is a tap away', async ({ browser, server }) => {
  const a = await newUser(await browser.newContext(), server.url, 'Ada');
  await a.getByTestId('chat-input').fill('before you came');
  await a.getByTestId('chat-input').press('Enter');
  const phoneSize = { width: 390, height: 844 };
  const phone = await newUser(await browser.newContext({ viewport: phoneSize, hasTouch: true, isMobile: true }), a.url(), 'Pia');
  await expect(phone.getByTestId('board')).toHaveAttribute('data-synced', 'true');
  // The chat starts collapsed, so the board has most of the screen.
  await expect(phone.getByTestId('chat-toggle')).toHaveAttribute('aria-expanded', 'false');
  await expect(phone.getByTestId('chat-input')).toHaveCount(0);
  expect((await phone.getByTestId('board').boundingBox())!.height).toBeGreaterThan(phoneSize.height * 0.6);
  // A message sent now is news; the one from before Pia came is not.
  await a.getByTestId('chat-input').fill('are you there?');
  await a.getByTestId('chat-input').press('Enter');
  await expect(phone.getByTestId('chat-unread')).toHaveText('1');
  await phone.screenshot({ path: 'test-results/screens/phone-chat-collapsed.png' });
  await phone.getByTestId('chat-toggle').tap();
  await expect(phone.getByTestId('chat-unread')).toHaveCount(0);
  await expect(phone.getByTestId('chat-message').locator('.text')).toHaveText(['before you came', 'are you there?']);
  // Open, the chat still leaves the board more than half of the rest.
  expect((await phone.getByTestId('board').boundingBox())!.height).toBeGreaterThan(phoneSize.height * 0.4);
  await phone.getByTestId('chat-input').fill('yes, on my phone');
  await phone.getByTestId('chat-send').tap();
  await expect(a.getByTestId('chat-message').last().locator('.text')).toHaveText('yes, on my phone');
  await phone.screenshot({ path: 'test-results/screens/phone-chat-open.png' });
});

test('dark theme, eraser and laser pointer', async ({ browser, server }) => {
  const a = await newUser(await browser.newContext({ colorScheme: 'dark' }), server.url, 'Ada', '#2f9e44');
  const b = await newUser(await browser.newContext(), a.url(), 'Bob');
  await expect(a.locator('body')).toHaveClass(/theme-dark/);
  await a.getByTestId('tool-pen').click();
  await dragOnBoard(a, 100, 100, 300, 160);
  await a.getByTestId('tool-rect').click();
  await dragOnBoard(a, 400, 100, 500, 200);
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '2');
  // The laser is ephemeral: Bob sees it through presence while Ada holds it down (a trail in
  // her colour, green, on his board along her path), it is gone when she lets go, and the
  // document never changes.
  const laserGreen: [number, number, number] = [47, 158, 68];
  const onPath = { x: 280, y: 310, w: 40, h: 30 }; // around (300, 325), halfway along her path
  expect(await boardPixels(b, onPath, laserGreen, 30)).toBe(0);
  await a.getByTestId('tool-laser').click();
  const box = (await a.getByTestId('board').boundingBox())!;
  await a.mouse.move(box.x + 150, box.y + 300);
  await a.mouse.down();
  await a.mouse.move(box.x + 300, box.y + 325, { steps: 5 });
  await a.mouse.move(box.x + 450, box.y + 350, { steps: 5 });
  await expect.poll(() => boardPixels(b, onPath, laserGreen, 30), { message: "Ada's laser on Bob's board" }).toBeGreaterThan(20);
  // Off her path, nothing of it; and it is hers, not a red of its own.
  expect(await boardPixels(b, { x: 280, y: 400, w: 40, h: 30 }, laserGreen, 30)).toBe(0);
  expect(await boardPixels(b, onPath, [250, 82, 82], 60)).toBe(0);
  await a.screenshot({ path: 'test-results/screens/dark-theme.png' });
  await b.screenshot({ path: 'test-results/screens/laser-bob.png' });
  await a.mouse.up();
  await expect.poll(() => boardPixels(b, onPath, laserGreen, 30), { message: 'the laser fades when released' }).toBe(0);
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '2');
  // The eraser removes what it crosses (the pen stroke), for everyone.
  await a.getByTestId('tool-eraser').click();
  await dragOnBoard(a, 200, 80, 200, 180);
  await expect(b.getByTestId('board')).toHaveAttribute('data-shape-count', '1');
});
