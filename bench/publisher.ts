// The publisher process: publishes events into Redis the way each system's own publisher does,
// at a fixed rate or as fast as it can, stamping `ts` at the moment of publishing.
import { Agent, request } from 'node:http'
import { Emitter } from '@socket.io/redis-emitter'
import { Redis } from 'ioredis'
import { fanoutPublisher, nowMs, serve, sleep } from './common.js'
import { channelOf, eventBody, FANOUT_PREFIX, isFanout, type SystemName } from './systems.js'

const system = process.env.BENCH_SYSTEM as SystemName
const redisUrl = process.env.REDIS_URL as string

/** fastify-fanout's own publish path (one Lua call per event, pipelined), loaded from the build. */
type Body = ReturnType<typeof eventBody> & { n?: number }

type Publish = (body: Body) => Promise<unknown>

async function publisherFor (name: SystemName): Promise<Publish> {
  if (isFanout(name)) {
    const publish = await fanoutPublisher(redisUrl, FANOUT_PREFIX)
    return (body) => publish('guest', body)
  }
  if (name === 'nchan') {
    // One HTTP POST per event, as Nchan's publishers do; kept-alive connections, several in flight.
    const url = new URL(process.env.BENCH_PUBLISH_URL as string)
    const agent = new Agent({ keepAlive: true, maxSockets: 16 })
    return (body) => new Promise((resolve, reject) => {
      const req = request(url, { method: 'POST', agent, headers: { 'content-type': 'application/json' } }, (res) => {
        res.resume()
        res.once('end', () => (res.statusCode ?? 0) < 300 ? resolve(undefined) : reject(new Error(`Nchan publish: HTTP ${res.statusCode}`)))
      })
      req.once('error', reject)
      req.end(JSON.stringify(body))
    })
  }
  const redis = new Redis(redisUrl)
  if (name === 'socketio') {
    const emitter = new Emitter(redis)
    return async (body) => emitter.emit('guest', body)
  }
  const channel = channelOf(name as 'floor' | 'naive')
  return (body) => redis.publish(channel, JSON.stringify(body))
}

const publish = await publisherFor(system)

/** Events published so far: the reconnect storm numbers its events (`n`) to see gaps and duplicates. */
let published = 0
const control = { stopped: false }

/**
 * `count` events, `rate` per second (0: all at once), until `stop`; resolves once Redis has
 * taken them all.
 */
async function run (count: number, rate: number, numbered: boolean): Promise<{ startedAt: number, endedAt: number, published: number }> {
  const startedAt = nowMs()
  const pending: Array<Promise<unknown>> = []
  control.stopped = false
  for (let i = 0; i < count && !control.stopped; i++) {
    if (rate > 0) {
      const due = startedAt + (i * 1000) / rate
      const wait = due - nowMs()
      if (wait > 0) await sleep(wait)
    }
    const body = eventBody(nowMs())
    pending.push(publish(numbered ? { ...body, n: published } : body))
    published++
  }
  await Promise.all(pending)
  return { startedAt, endedAt: nowMs(), published: pending.length }
}

serve(async (request) => {
  if (request.op === 'stop') {
    control.stopped = true
    return {}
  }
  if (request.op !== 'publish') throw new Error(`unknown op ${request.op}`)
  return run(request.count as number, request.rate as number, request.numbered === true)
})
process.send?.({ id: 0, ready: true })
