// Huddle's service worker: keeps the app shell (HTML, JS, wasm, CSS, icons) so that a page reload
// works while the server is unreachable; the room itself comes from the IndexedDB cache then.
// Network first, so a new build is picked up as soon as the server answers.
const CACHE = 'huddle-shell-v1';
const SHELL = ['/', '/huddle_web.js', '/huddle_web_bg.wasm', '/assets/style.css', '/assets/favicon.svg'];

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(CACHE).then((c) => c.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  // Navigation preload: the browser starts a page's request while this worker boots, instead
  // of after, so the worker costs a page load nothing while online.
  const preload = self.registration.navigationPreload ? self.registration.navigationPreload.enable() : Promise.resolve();
  event.waitUntil(preload.then(() => self.clients.claim()));
});

// Keeps a copy of a good response, unless the cached copy is the same version (same ETag): the
// wasm is most of a megabyte, and rewriting it on every page load costs a core for nothing.
async function keep(key, response) {
  if (!response.ok) return;
  const cache = await caches.open(CACHE);
  const etag = response.headers.get('etag');
  const cached = etag ? await cache.match(key) : undefined;
  if (cached && cached.headers.get('etag') === etag) return;
  await cache.put(key, response);
}

self.addEventListener('fetch', (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== 'GET' || url.origin !== self.location.origin || url.pathname.startsWith('/ws/')) return;
  // Room URLs are the app shell too.
  const key = url.pathname.startsWith('/r/') ? '/' : url.pathname;
  event.respondWith((async () => {
    try {
      const response = (event.request.mode === 'navigate' && (await event.preloadResponse)) || (await fetch(event.request));
      event.waitUntil(keep(key, response.clone()));
      return response;
    } catch (e) {
      return (await caches.match(key)) || Response.error();
    }
  })());
});
