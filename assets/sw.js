// Huddle's service worker: keeps the app shell (HTML, JS, wasm, CSS, icons) so that a page reload
// works while the server is unreachable; the room itself comes from the IndexedDB cache then.
// Network first, so a new build is picked up as soon as the server answers.
const CACHE = 'huddle-shell-v1';
const SHELL = ['/', '/huddle_web.js', '/huddle_web_bg.wasm', '/assets/style.css', '/assets/favicon.svg'];

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(CACHE).then((c) => c.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil(self.clients.claim());
});

self.addEventListener('fetch', (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== 'GET' || url.origin !== self.location.origin || url.pathname.startsWith('/ws/')) return;
  // Room URLs are the app shell too.
  const key = url.pathname.startsWith('/r/') ? '/' : url.pathname;
  event.respondWith(
    fetch(event.request)
      .then((response) => {
        if (response.ok) {
          const copy = response.clone();
          caches.open(CACHE).then((c) => c.put(key, copy));
        }
        return response;
      })
      .catch(() => caches.match(key).then((hit) => hit || Response.error()))
  );
});
