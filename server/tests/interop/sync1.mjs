import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
const doc = new Y.Doc()
const t = Date.now()
const p = new WebsocketProvider(process.argv[2], process.argv[3], doc, { WebSocketPolyfill: WebSocket, disableBc: true })
p.on('sync', (s) => { if (s) { console.log('synced in', Date.now() - t, 'ms; shapes', doc.getMap('shapes').size); setTimeout(() => process.exit(0), 200) } })
