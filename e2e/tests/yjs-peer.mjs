// A plain Yjs client (stock yjs + y-websocket from npm) that follows the documented schema:
// adds a rectangle and a chat message, waits until the server has them, and exits 0.
// usage: node yjs-peer.mjs ws://HOST:PORT/ws ROOM
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

const [serverUrl, room] = process.argv.slice(2)
const doc = new Y.Doc()
const provider = new WebsocketProvider(serverUrl, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true })
const timer = setTimeout(() => { console.error('timeout'); process.exit(1) }, 20000)
provider.once('sync', () => {
  doc.transact(() => {
    const rect = new Y.Map()
    Object.entries({ id: 'yjs-rect', kind: 'rect', x: 40, y: 40, w: 160, h: 90, points: [],
      stroke: '#1971c2', fill: '#a5d8ff', width: 3, text: '', z: 5, author: 'yjs' })
      .forEach(([k, v]) => rect.set(k, v))
    doc.getMap('shapes').set('yjs-rect', rect)
    const msg = new Y.Map()
    Object.entries({ id: 'yjs-msg', authorId: 'yjs', authorName: 'Script', authorColor: '#2f9e44',
      text: 'hello from a plain Yjs client', ts: Date.now() }).forEach(([k, v]) => msg.set(k, v))
    doc.getArray('chat').push([msg])
  })
  // A second connection proves the server has both before we leave.
  const check = new Y.Doc()
  const probe = new WebsocketProvider(serverUrl, room, check, { WebSocketPolyfill: WebSocket, disableBc: true })
  const done = () => {
    if (check.getMap('shapes').has('yjs-rect') && check.getArray('chat').length > 0) {
      clearTimeout(timer)
      probe.destroy(); provider.destroy(); check.destroy(); doc.destroy()
      process.exitCode = 0
    }
  }
  check.on('update', done)
  probe.on('sync', done)
})
