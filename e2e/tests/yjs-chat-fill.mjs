// Posts N chat messages through a stock Yjs client (yjs + y-websocket from npm), in the documented
// schema (each message one plain object, as Huddle writes them; authors alternate), waits until
// the server has them all, and exits 0. Message i says "message i".
// With a fourth argument `noid`, the messages have no `id` (the schema asks for one; a client
// may still leave it out).
// usage: node yjs-chat-fill.mjs ws://HOST:PORT/ws ROOM N [noid]
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

const [serverUrl, room, count, idless] = process.argv.slice(2)
const n = Number(count)
const timer = setTimeout(() => { console.error('timeout'); process.exit(1) }, 60000)
const doc = new Y.Doc()
const authors = [['u-kim', 'Kim', '#e8590c'], ['u-lee', 'Lee', '#2f9e44']]
const start = Date.now() - n * 1000
doc.transact(() => {
  const messages = []
  for (let i = 0; i < n; i++) {
    const [authorId, authorName, authorColor] = authors[i % 2]
    const message = { id: `fill-m${i}`, authorId, authorName, authorColor, text: `message ${i}`, ts: start + i * 1000 }
    if (idless === 'noid') delete message.id
    messages.push(message)
  }
  doc.getArray('chat').push(messages)
})
const provider = new WebsocketProvider(serverUrl, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true })
provider.once('sync', () => {
  // A second connection proves the server has every message before we leave.
  const check = new Y.Doc()
  const probe = new WebsocketProvider(serverUrl, room, check, { WebSocketPolyfill: WebSocket, disableBc: true })
  const done = () => {
    if (check.getArray('chat').length >= n) {
      clearTimeout(timer)
      probe.destroy(); provider.destroy()
      process.exit(0)
    }
  }
  check.on('update', done)
  probe.on('sync', done)
})
