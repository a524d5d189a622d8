// A plain Yjs client (the real `yjs` + `y-websocket` npm packages) joining a crowded room. Stock
// y-websocket sends every awareness change it receives straight back, so the room's whole presence
// comes back at the server as soon as it is received. Waits until it sees at least N others,
// marks the document (shape `crowd-marker`), waits for the test's answer (shape `crowd-ack`),
// then prints one JSON line: how many others it saw and how many times its socket was closed,
// and exits 0 (1 on timeout).
//
// usage: node crowd.mjs ws://HOST:PORT/ws ROOM N
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

const [serverUrl, room, count] = process.argv.slice(2)
const doc = new Y.Doc()
const provider = new WebsocketProvider(serverUrl, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true })
provider.awareness.setLocalStateField('user', { id: 'node', name: 'node', color: '#2f9e44' })
let closes = 0
provider.on('connection-close', () => { closes += 1 })
const shapes = doc.getMap('shapes')
const others = () => [...provider.awareness.getStates().keys()].filter((id) => id !== doc.clientID).length
const timer = setTimeout(() => {
  console.log(JSON.stringify({ timeout: true, others: others(), closes }))
  process.exit(1)
}, 20000)

let marked = false
const check = () => {
  if (!marked && provider.synced && others() >= Number(count)) {
    marked = true
    shapes.set('crowd-marker', { kind: 'rect', x: 0, y: 0, w: 1, h: 1 })
  }
  if (marked && shapes.has('crowd-ack')) {
    clearTimeout(timer)
    console.log(JSON.stringify({ others: others(), closes }))
    provider.destroy()
    process.exit(0)
  }
}
provider.awareness.on('change', check)
provider.on('sync', check)
shapes.observe(check)
