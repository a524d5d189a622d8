// The fanout scenario again, with nothing of Huddle's: stock `yjs` + `y-websocket` clients
// (WebsocketProvider over `ws`, awareness and all), as an outside harness would measure it. It
// checks that `huddle-bench fanout` (our own protocol client) reports what stock clients see:
// deliveries, latency and the server's CPU per delivered update.
//
// R rooms × N clients; each client makes its own shape (a Y.Map in the room's `shapes` map),
// waits until it has every other client's, then sets its shape's `x` F times a second for S
// seconds. A delivery is a client observing another client's `x` change; its latency is from
// the sender's `set` (same process, same clock). Server CPU is utime + stime of `--pid` from
// /proc over the sending window and the drain after it.
//
// usage: node stock-fanout.mjs --url 'ws://127.0.0.1:PORT/ws/{room}' --pid PID
//          [--rooms 10] [--clients 10] [--hz 20] [--secs 10] [--phases grouped|spread]
// `--phases` as in `huddle-bench fanout`: `grouped` (the default) spreads a room's clients one
// after the other over the period, `spread` interleaves the rooms, so that the moves Node's
// 1 ms timers send together are of different rooms.
// For y-sweet, `--create-url http://127.0.0.1:PORT` creates each room first.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import { readFileSync } from 'node:fs'
import { performance } from 'node:perf_hooks'

const args = Object.fromEntries(process.argv.slice(2).reduce((pairs, a, i, all) =>
  a.startsWith('--') ? [...pairs, [a.slice(2), all[i + 1]]] : pairs, []))
const url = args.url
const pid = Number(args.pid)
if (!url || !url.includes('{room}') || !pid) {
  console.error("usage: node stock-fanout.mjs --url 'ws://HOST:PORT/ws/{room}' --pid PID [--rooms R] [--clients N] [--hz F] [--secs S] [--phases grouped|spread]")
  process.exit(2)
}
const rooms = Number(args.rooms ?? 10)
const clients = Number(args.clients ?? 10)
const hz = Number(args.hz ?? 20)
const secs = Number(args.secs ?? 10)
const phases = args.phases ?? 'grouped'
if (phases !== 'grouped' && phases !== 'spread') {
  console.error(`--phases must be grouped or spread, not ${phases}`)
  process.exit(2)
}
const deadline = (ms, what) => new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out: ${what}`)), ms))

/** utime + stime of `pid` in seconds. */
function serverCpu () {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(fields[11]) + Number(fields[12])) / 100 // clock ticks; USER_HZ is 100 on Linux
}

/** The provider's (serverUrl, roomname) for a URL template: it connects to `${serverUrl}/${roomname}`. */
function endpoint (room) {
  const full = url.replaceAll('{room}', room)
  const at = full.lastIndexOf('/')
  return [full.slice(0, at), full.slice(at + 1)]
}

// Each provider listens for the process' exit; a hundred of them are expected here.
process.setMaxListeners(0)
const sentAt = new Map() // `${shape}:${x}` → performance.now() of the set
const latencies = []
let delivered = 0
let sent = 0
const all = []

async function joinRoom (r) {
  const room = `stock-fanout-${process.pid}-${r}`
  if (args['create-url']) {
    const res = await fetch(`${args['create-url']}/doc/new`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ docId: room }) })
    if (!res.ok) throw new Error(`creating ${room}: ${res.status}`)
  }
  const members = []
  for (let c = 0; c < clients; c++) {
    const doc = new Y.Doc()
    const [serverUrl, roomname] = endpoint(room)
    const provider = new WebsocketProvider(serverUrl, roomname, doc, { WebSocketPolyfill: WebSocket, disableBc: true })
    provider.awareness.setLocalStateField('user', { id: `stock-${r}-${c}`, name: `stock ${c}`, color: '#1971c2' })
    const shapes = doc.getMap('shapes')
    const id = `r${r}c${c}`
    shapes.observeDeep((events) => {
      const now = performance.now()
      for (const e of events) {
        if (!(e.target instanceof Y.Map) || e.target === shapes || !e.keysChanged.has('x')) continue
        const shape = e.target.get('id')
        if (shape === id || !measuring) continue
        delivered++
        const at = sentAt.get(`${shape}:${e.target.get('x')}`)
        if (at !== undefined) latencies.push(now - at)
      }
    })
    members.push({ doc, provider, shapes, id })
  }
  await Promise.race([
    Promise.all(members.map((m) => new Promise((resolve) => m.provider.once('synced', resolve)))),
    deadline(30000, `room ${r} syncing`)
  ])
  for (const m of members) {
    const shape = new Y.Map()
    m.doc.transact(() => {
      m.shapes.set(m.id, shape)
      for (const [k, v] of Object.entries({ id: m.id, kind: 'rect', x: 0, y: 0, w: 40, h: 30, stroke: '#1e1e1e', z: 1, author: m.id })) shape.set(k, v)
    })
    m.shape = shape
  }
  return members
}

let measuring = false
for (let r = 0; r < rooms; r++) all.push(await joinRoom(r))
const everyone = all.flat()
// Everyone has everyone else's shape before the clock starts.
await Promise.race([
  (async () => {
    while (!all.every((members) => members.every((m) => m.shapes.size === clients))) await new Promise((resolve) => setTimeout(resolve, 20))
  })(),
  deadline(30000, 'every client seeing every shape')
])

const cpu0 = serverCpu()
const tool0 = process.cpuUsage()
const t0 = performance.now()
measuring = true
const period = 1000 / hz
// everyone is room-major: index i is client i % clients of room floor(i / clients).
const slot = (i) => phases === 'grouped' ? i : (i % clients) * rooms + Math.floor(i / clients)
const timers = everyone.map((m, i) => {
  let x = 0
  let tick
  const start = setTimeout(() => {
    tick = setInterval(() => {
      x++
      sentAt.set(`${m.id}:${x}`, performance.now())
      m.shape.set('x', x)
      sent++
    }, period)
  }, (period * slot(i)) / everyone.length)
  return () => { clearTimeout(start); clearInterval(tick) }
})
await new Promise((resolve) => setTimeout(resolve, secs * 1000))
timers.forEach((stop) => stop())
const expected = sent * (clients - 1)
// Drain: until everything sent has arrived, or 15 s.
const drainUntil = performance.now() + 15000
while (delivered < expected && performance.now() < drainUntil) await new Promise((resolve) => setTimeout(resolve, 10))
const elapsed = (performance.now() - t0) / 1000
const cpu = serverCpu() - cpu0
const tool = process.cpuUsage(tool0)
const toolShare = (tool.user + tool.system) / 1e6 / elapsed

// Keys sorted: a Y.Map lists its keys in the order they arrived, which differs per client.
const canonical = (v) => v && typeof v === 'object' && !Array.isArray(v)
  ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, canonical(v[k])]))
  : v
const state = (m) => JSON.stringify(canonical(m.shapes.toJSON()))
const converged = all.filter((members) => members.every((m) => state(m) === state(members[0]))).length
latencies.sort((a, b) => a - b)
const pct = (p) => latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * p))].toFixed(2) : '-'
console.log(`stock yjs fanout ${rooms}×${clients} @ ${hz} Hz for ${secs} s against ${url}`)
console.log(`  deliveries expected            ${expected}`)
console.log(`  deliveries received            ${delivered}`)
console.log(`  rooms converged                ${converged} of ${rooms}`)
console.log(`  latency p50 / p99 / max        ${pct(0.5)} / ${pct(0.99)} / ${latencies.length ? latencies[latencies.length - 1].toFixed(2) : '-'} ms`)
console.log(`  server CPU                     ${cpu.toFixed(2)} s (${(100 * cpu / elapsed).toFixed(1)}% of one core)`)
console.log(`  server CPU per delivered update ${(1e6 * cpu / Math.max(1, delivered)).toFixed(2)} µs`)
console.log(`  tool CPU                       ${(100 * toolShare).toFixed(0)}% of one core`)
if (toolShare > 0.8) console.log('  warning: this tool used most of a core; latencies are partly its own')
for (const m of everyone) m.provider.destroy()
process.exit(0)
