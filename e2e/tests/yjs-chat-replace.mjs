// Through a stock Yjs client (yjs + y-websocket from npm): joins ROOM, and in one transaction
// deletes the last chat message and appends one saying TEXT (so the number of messages stays the
// same), waits until a second connection sees it on the server, and exits 0.
// usage: node yjs-chat-replace.mjs ws://HOST:PORT/ws ROOM TEXT
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

const [serverUrl, room, text] = process.argv.slice(2)
const timer = setTimeout(() => { console.error('timeout'); process.exit(1) }, 60000)
const doc = new Y.Doc()
const provider = new WebsocketProvider(serverUrl, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true })
provider.once('sync', () => {
  const chat = doc.getArray('chat')
  if (chat.length === 0) { console.error('no chat message to replace'); process.exit(1) }
  doc.transact(() => {
    chat.delete(chat.length - 1, 1)
    chat.push([{ id: 'replacement', authorId: 'u-kim', authorName: 'Kim', authorColor: '#e8590c', text, ts: Date.now() }])
  })
  const check = new Y.Doc()
  const probe = new WebsocketProvider(serverUrl, room, check, { WebSocketPolyfill: WebSocket, disableBc: true })
  const done = () => {
    if (check.getArray('chat').toArray().some((m) => m.text === text)) {
      clearTimeout(timer)
      probe.destroy(); provider.destroy()
      process.exit(0)
    }
  }
  check.on('update', done)
  probe.on('sync', done)
})
