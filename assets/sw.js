// Huddle's service worker: keeps the app shell (HTML, JS, wasm, CSS, icons) so that a page reload
// works while the server is unreachable; the room itself comes from the IndexedDB cache then.
//
// The HTML goes to the network first (with navigation preload), so a new build is picked up as
// soon as the server answers. It names every other file with its version
// (`/huddle_web_bg.wasm?v=<hash>`, see server/src/web.rs). A versioned file never changes: the
// server marks it immutable, so the browser's HTTP cache answers for it without a request, even
// offline. This worker also keeps a copy of each, which answers for the same path without a
// version (the app's logo) when the server cannot be reached.
const CACHE = 'huddle-shell-v3';

/// The versioned files an HTML page names.
function versionedIn(html) {
  return [...new Set(html.match(/\/[A-Za-z0-9_./-]+\?v=[0-9a-f]+/g) || [])];
}

/// The versioned files of `wanted` missing from `cache`.
async function missing(cache, wanted) {
  const have = new Set((await cache.keys()).map((r) => new URL(r.url).pathname + new URL(r.url).search));
  return wanted.filter((u) => !have.has(u));
}

/// Fetches a versioned file and stores it, only if the server sent that very version (during a
/// deploy it may already serve the next one under this URL; its ETag starts with the version).
async function keepVersioned(cache, u) {
  const response = await fetch(u);
  const v = u.slice(u.indexOf('?v=') + 3);
  if (response.ok && (response.headers.get('etag') || '').startsWith('"' + v)) await cache.put(u, response);
}

/// Stores the current page and the files it names, and drops files of older versions.
async function keepShell(html, response) {
  const cache = await caches.open(CACHE);
  const wanted = versionedIn(html);
  await Promise.all((await missing(cache, wanted)).map((u) => keepVersioned(cache, u)));
  await cache.put('/', response);
  for (const key of await cache.keys()) {
    const u = new URL(key.url);
    if (u.search && !wanted.includes(u.pathname + u.search)) await cache.delete(key);
  }
}

/// Keeps a freshly loaded page unless the cached one is the same version (same ETag) and every
/// file it names is in the cache (an interrupted or interleaved store is repaired this way).
async function keepIfNew(response) {
  const cache = await caches.open(CACHE);
  const cached = await cache.match('/');
  const etag = response.headers.get('etag');
  const html = await response.clone().text();
  if (cached && etag && cached.headers.get('etag') === etag && !(await missing(cache, versionedIn(html))).length) return;
  await keepShell(html, response);
}

self.addEventListener('install', (event) => {
  event.waitUntil((async () => {
    const response = await fetch('/', { cache: 'no-cache' });
    if (response.ok) await keepShell(await response.clone().text(), response);
    await self.skipWaiting();
  })());
});

self.addEventListener('activate', (event) => {
  // Navigation preload: the browser starts a page's request while this worker boots, instead
  // of after, so the worker costs a page load nothing while online.
  const preload = self.registration.navigationPreload ? self.registration.navigationPreload.enable() : Promise.resolve();
  const old = caches.keys().then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k))));
  event.waitUntil(Promise.all([preload, old]).then(() => self.clients.claim()));
});

/// Whether the last page was answered from this worker's copy: the server could not be reached.
let shellFromCache = false;

self.addEventListener('fetch', (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== 'GET' || url.origin !== self.location.origin || url.pathname.startsWith('/ws/')) return;
  if (event.request.mode === 'navigate') {
    event.respondWith((async () => {
      try {
        const response = (await event.preloadResponse) || (await fetch(event.request));
        shellFromCache = false;
        // Keep this page (for every room URL: it is the same app) unless it is the same version.
        if (response.ok) event.waitUntil(keepIfNew(response.clone()));
        return response;
      } catch (e) {
        shellFromCache = true;
        return (await caches.match('/')) || Response.error();
      }
    })());
    return;
  }
  if (!url.search.startsWith('?v=')) {
    // Unversioned files (the app names its logo without a version) go to the network first,
    // and to this worker's copy of the same path when the server cannot be reached.
    event.respondWith(fetch(event.request).catch(async () => (await caches.match(url.pathname, { ignoreSearch: true })) || Response.error()));
  }
  // Versioned files go straight to the HTTP cache, which holds them as immutable and answers
  // at once, even offline, with the wasm's compiled code cached alongside; answering them from
  // this worker's cache cost 30–70 ms per page load. Except while the server cannot be reached
  // (the page itself came from this worker's copy, or the browser knows it is offline): then
  // the HTTP cache may have let a file go (it evicts more readily than this cache), and this
  // worker's copy is all there is.
  else if (shellFromCache || !self.navigator.onLine) {
    event.respondWith(caches.match(event.request).then((kept) => kept || fetch(event.request)));
  }
});
