// usage: node [--liftoff-only] run.mjs FRAME [calls]
// Prints each call's receive/read times: the first is the one a page pays (cold code).
import { readFileSync } from 'node:fs'
const { open } = await import('./pkg/huddle_wasm_apply.js')
const frame = readFileSync(process.argv[2])
const calls = Number(process.argv[3] ?? 4)
const times = []
for (let i = 0; i < calls; i++) times.push(Array.from(open(frame)).map((t) => t.toFixed(0)).join('/'))
console.log(`receive/read ms per call: ${times.join(', ')}`)
