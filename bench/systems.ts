// The systems under test, as the harness, the load clients and the publisher see them.

export const SYSTEMS = ['fanout', 'fanout-cluster', 'floor', 'nchan', 'socketio', 'naive'] as const
export type SystemName = typeof SYSTEMS[number]

export const LABELS: Record<SystemName, string> = {
  fanout: 'fastify-fanout',
  'fanout-cluster': 'fastify-fanout on a 3-primary Redis Cluster',
  floor: 'floor (ws, frame once, one write per turn)',
  nchan: 'Nchan (nginx module, C)',
  socketio: 'Socket.IO 4 + redis-adapter',
  naive: 'naive ws (send per client)'
}

/** Nchan's WebSocket subscriber and HTTP publisher locations (bench/nchan.ts writes them). */
export const NCHAN_PUBLISH_PATH = '/publish'

/** fastify-fanout itself, on one Redis or on a Cluster: it says when it is ready and resumes. */
export function isFanout (system: SystemName): system is 'fanout' | 'fanout-cluster' {
  return system === 'fanout' || system === 'fanout-cluster'
}

/** fastify-fanout's key prefix in the bench's private Redis; its channel is `<prefix>events`. */
export const FANOUT_PREFIX = 'bench-fanout:'
/** The channel the two plain-ws servers subscribe to. */
export function channelOf (system: 'floor' | 'naive'): string {
  return `bench:${system}`
}

/** Where a load client connects, per replica port. */
export function clientUrl (system: SystemName, port: number): string {
  switch (system) {
    case 'fanout':
    case 'fanout-cluster':
    case 'nchan': return `ws://127.0.0.1:${port}/guest`
    // The engine.io v4 protocol over a WebSocket from the first request, as socket.io-client does
    // with `transports: ['websocket']`.
    case 'socketio': return `ws://127.0.0.1:${port}/socket.io/?EIO=4&transport=websocket`
    default: return `ws://127.0.0.1:${port}/`
  }
}

/** The event every system carries; `ts` is stamped at publish (bench/common.ts nowMs). */
export function eventBody (ts: number): { type: 'guest', guest: string, time: string, ts: number } {
  return { type: 'guest', guest: '张伟', time: '15:26:01', ts }
}
