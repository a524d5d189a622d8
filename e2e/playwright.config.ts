// Playwright runs Debian's Chromium (no browser download), headless, one worker: the machine has
// two cores and each test starts its own Huddle server.
import { defineConfig } from '@playwright/test';

export default defineConfig({
  testDir: './tests',
  timeout: 60_000,
  expect: { timeout: 15_000 },
  fullyParallel: false,
  workers: 1,
  retries: 0,
  reporter: [['list']],
  outputDir: './test-results',
  use: {
    viewport: { width: 1280, height: 800 },
    screenshot: 'only-on-failure',
    trace: 'retain-on-failure',
    acceptDownloads: true,
    launchOptions: {
      executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
      args: [
        '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
        // `huddle.test` is this machine too, but not `localhost`: a page there is not a secure
        // context, as on a team's server reached over plain HTTP on its LAN address.
        '--host-resolver-rules=MAP huddle.test 127.0.0.1',
      ],
    },
  },
});
