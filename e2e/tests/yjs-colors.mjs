// A stock Yjs client (yjs + y-websocket from npm) whose "colours" are addresses: its presence
// colour, a rectangle's stroke and fill, and its chat message's author colour are all
// `url(<http base>/leak-…)`. It prints "ready" once the server has its shape and message, then
// stays in the room (presence and cursor shown) until its stdin closes.
// usage: node yjs-colors.mjs ws://HOST:PORT/ws ROOM http://HOST:PORT
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

const [serverUrl, room, httpBase] = process.argv.slice(2)
const leak = (what) => `url(${httpBase}/leak-${what})`
const doc = new Y.Doc()
const provider = new WebsocketProvider(serverUrl, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true })
provider.awareness.setLocalStateField('user', { id: 'eve', name: 'Eve', color: leak('presence') })
provider.awareness.setLocalStateField('cursor', { x: 300, y: 200 })
const timer = setTimeout(() => { console.error('timeout'); process.exit(1) }, 60000)
provider.once('sync', () => {
  doc.transact(() => {
    const rect = new Y.Map()
    Object.entries({ id: 'eve-rect', kind: 'rect', x: 40, y: 40, w: 160, h: 90, points: [],
      stroke: leak('stroke'), fill: leak('fill'), width: 3, text: '', z: 5, author: 'eve' })
      .forEach(([k, v]) => rect.set(k, v))
    doc.getMap('shapes').set('eve-rect', rect)
    const msg = new Y.Map()
    Object.entries({ id: 'eve-msg', authorId: 'eve', authorName: 'Eve', authorColor: leak('chat'),
      text: 'look at my colours', ts: Date.now() }).forEach(([k, v]) => msg.set(k, v))
    doc.getArray('chat').push([msg])
  })
  const check = new Y.Doc()
  const probe = new WebsocketProvider(serverUrl, room, check, { WebSocketPolyfill: WebSocket, disableBc: true })
  let said = false
  const done = () => {
    if (!said && check.getMap('shapes').has('eve-rect') && check.getArray('chat').length > 0) {
      said = true
      probe.destroy(); check.destroy()
      console.log('ready')
    }
  }
  check.on('update', done)
  probe.on('sync', done)
})
process.stdin.on('end', () => { clearTimeout(timer); provider.destroy(); doc.destroy(); process.exit(0) })
process.stdin.resume()
