// The hub's own memory per idle (client, channel) subscription, measured apart from sockets,
// Redis subscriptions and garbage: 20,000 clients × 5 subscriptions to 10,000 channels that
// already have a subscriber, heap after forced collections, before and after. Run with
// `node --expose-gc dist/bench/subscription-memory.js`; prints one JSON line.
const { Hub, Client } = await import(new URL('../lib/hub.js', import.meta.url).href) as typeof import('../lib/hub.js')
const { Stats } = await import(new URL('../lib/stats.js', import.meta.url).href) as typeof import('../lib/stats.js')

const collect = (globalThis as { gc?: () => void }).gc
if (collect === undefined) throw new Error('run with node --expose-gc')
const stats = new Stats()
const hub = new Hub({ maxBufferedBytes: 1 << 20, heartbeatMs: 0, maxConcurrentReplays: 32, stats })
// A transport that writes nothing: only the hub's bookkeeping is measured.
const idle = () => ({ raw: {}, open: true, answersPings: true, joinsTurns: true, sharesFrames: true, frame: () => Buffer.alloc(0), message: () => Buffer.alloc(0), ping () {}, onPong () {}, close () {}, terminate () {}, onClose () {} })
const clients = Array.from({ length: 20_000 }, () => hub.addClient(new Client(idle() as never, true)))
const channels = Array.from({ length: 10_000 }, (_, i) => `room:${i}`)
for (let i = 0; i < channels.length; i++) hub.subscribe(clients[i], channels[i])
collect()
collect()
const before = process.memoryUsage().heapUsed
let subscriptions = 0
for (let c = 0; c < clients.length; c++) {
  for (let k = 1; k <= 5; k++) {
    const channel = channels[(c * 7 + k * 1999) % channels.length]
    if (!clients[c].channels.has(channel)) {
      hub.subscribe(clients[c], channel)
      subscriptions++
    }
  }
}
collect()
collect()
const after = process.memoryUsage().heapUsed
console.log(JSON.stringify({ subscriptions, bytesPerSubscription: Math.round((after - before) / subscriptions) }))
hub.close()
stats.close()
