// Fills a room with N mixed shapes through a stock Yjs client (yjs + y-websocket from npm), in
// the documented schema, waits until the server has them all, and exits 0.
// usage: node yjs-fill.mjs ws://HOST:PORT/ws ROOM N [FIRST]
// (FIRST: the shapes are s<FIRST> … s<FIRST+N-1>, added to a room that holds FIRST shapes.)
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

const [serverUrl, room, count, from] = process.argv.slice(2)
const n = Number(count)
const first = Number(from ?? 0)
const timer = setTimeout(() => { console.error('timeout'); process.exit(1) }, 60000)
const doc = new Y.Doc()
const kinds = ['rect', 'ellipse', 'pen', 'text', 'arrow']
doc.transact(() => {
  for (let i = first; i < first + n; i++) {
    const kind = kinds[i % kinds.length]
    const points = kind === 'pen' ? [0, 0, 10, 12, 20, 8, 30, 20, 40, 14] : kind === 'arrow' ? [0, 0, 40, 30] : []
    // Each shape one plain object, as Huddle itself stores them.
    doc.getMap('shapes').set(`s${i}`, { id: `s${i}`, kind, x: (i % 60) * 60, y: Math.floor(i / 60) * 60, w: 44, h: 36,
      points, stroke: '#1e1e1e', fill: i % 3 ? 'transparent' : '#a5d8ff', width: 2,
      text: kind === 'text' ? `note ${i}` : '', z: i, author: 'fill' })
  }
})
const provider = new WebsocketProvider(serverUrl, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true })
provider.once('sync', () => {
  // A second connection proves the server has every shape before we leave.
  const check = new Y.Doc()
  const probe = new WebsocketProvider(serverUrl, room, check, { WebSocketPolyfill: WebSocket, disableBc: true })
  const done = () => {
    if (check.getMap('shapes').size === first + n) {
      clearTimeout(timer)
      probe.destroy(); provider.destroy()
      process.exit(0)
    }
  }
  check.on('update', done)
  probe.on('sync', done)
})
