// A plain Yjs client: the real `yjs` + `y-websocket` npm packages, nothing from Huddle.
// It follows the schema in shared/README.md: adds a rectangle and a chat message, publishes a
// presence, then waits for the Rust client's ellipse and presence. Prints one JSON line with what
// it saw and exits 0; exits 1 on timeout.
//
// usage: node peer.mjs ws://HOST:PORT/ws ROOM
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

const [serverUrl, room] = process.argv.slice(2)
const doc = new Y.Doc()
const provider = new WebsocketProvider(serverUrl, room, doc, {
  WebSocketPolyfill: WebSocket,
  disableBc: true
})
provider.awareness.setLocalStateField('user', { id: 'node', name: 'node', color: '#2f9e44' })
provider.awareness.setLocalStateField('cursor', { x: 5, y: 6 })

const shapes = doc.getMap('shapes')
const chat = doc.getArray('chat')

const peerNames = () =>
  [...provider.awareness.getStates().entries()]
    .filter(([id]) => id !== doc.clientID)
    .map(([, state]) => state?.user?.name)
    .filter(Boolean)
    .sort()

const report = () => ({
  shapes: [...shapes.keys()].sort(),
  // Huddle writes a shape as one plain object; a Y.Map is read too.
  rustKind: ((s) => (s instanceof Y.Map ? s.get('kind') : s?.kind))(shapes.get('rust-ellipse')),
  chat: chat.toArray().map((m) => (m instanceof Y.Map ? m.get('text') : m.text)),
  peers: peerNames()
})

const timer = setTimeout(() => {
  console.log(JSON.stringify({ timeout: true, ...report() }))
  process.exit(1)
}, 20000)

let added = false
provider.on('sync', (synced) => {
  if (!synced || added) return
  added = true
  doc.transact(() => {
    const rect = new Y.Map()
    const fields = {
      id: 'node-rect', kind: 'rect', x: 10, y: 20, w: 120, h: 60, points: [],
      stroke: '#e03131', fill: 'transparent', width: 2, text: '', z: 1, author: 'node'
    }
    for (const [k, v] of Object.entries(fields)) rect.set(k, v)
    shapes.set('node-rect', rect)
    const msg = new Y.Map()
    const m = { id: 'node-msg', authorId: 'node', authorName: 'node', authorColor: '#2f9e44', text: 'hello from yjs', ts: Date.now() }
    for (const [k, v] of Object.entries(m)) msg.set(k, v)
    chat.push([msg])
  })
  check()
})

let done = false
function check () {
  if (done || !added) return
  const r = report()
  if (r.rustKind === 'ellipse' && r.peers.includes('rust') && r.chat.includes('hello from rust')) {
    done = true
    clearTimeout(timer)
    console.log(JSON.stringify(r))
    // Leave cleanly: y-websocket announces our departure, then closes the socket.
    provider.destroy()
    doc.destroy() // stops the awareness timer, so node can exit
    process.exitCode = 0 // node exits once the socket has closed
  }
}
doc.on('update', check)
provider.awareness.on('change', check)
