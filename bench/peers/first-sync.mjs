// Time for a fresh stock Yjs client to sync a room: node first-sync.mjs URL_OF_ROOM
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
const url = process.argv[2]
const i = url.lastIndexOf('/')
const t0 = performance.now()
const doc = new Y.Doc()
const p = new WebsocketProvider(url.slice(0, i), url.slice(i + 1), doc, { WebSocketPolyfill: WebSocket, disableBc: true })
p.on('sync', (synced) => {
  if (!synced) return
  console.log(`synced in ${(performance.now() - t0).toFixed(0)} ms, ${doc.getMap('shapes').size} shapes`)
  p.destroy(); process.exit(0)
})
