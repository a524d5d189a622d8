// Reads a room through a stock Yjs client (yjs + y-websocket from npm) and prints its shapes as
// JSON on stdout, noting for each whether it is a plain object or a nested Y.Map, and whether
// `points` is a plain array or a nested Y.Array (the documented schema allows both).
// usage: node yjs-read.mjs ws://HOST:PORT/ws ROOM
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

const [serverUrl, room] = process.argv.slice(2)
const timer = setTimeout(() => { console.error('timeout'); process.exit(1) }, 20000)
const doc = new Y.Doc()
const provider = new WebsocketProvider(serverUrl, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true })
provider.once('sync', () => {
  const out = {}
  doc.getMap('shapes').forEach((shape, id) => {
    const points = shape instanceof Y.Map ? shape.get('points') : shape.points
    out[id] = {
      form: shape instanceof Y.Map ? 'Y.Map' : 'object',
      kind: shape instanceof Y.Map ? shape.get('kind') : shape.kind,
      pointsType: points instanceof Y.Array ? 'Y.Array' : 'array',
      points: points instanceof Y.Array ? points.toArray() : points,
    }
  })
  clearTimeout(timer)
  process.stdout.write(JSON.stringify(out))
  provider.destroy()
  process.exit(0)
})
