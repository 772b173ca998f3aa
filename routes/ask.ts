import type { FastifyInstance } from 'fastify'
import { makeGuest } from '../lib/guests.js'
import { PROTOCOL } from '../plugins/websocket.js'
import { admitUpgrade } from './admission.js'
import { logText, onInbound } from './guest.js'

export const GREETING = 'The server is listening to you now.'

/** The seed's PHP server: a greeting on open, then one fresh guest event per text message, to that client alone. */
export default async function askRoutes (fastify: FastifyInstance): Promise<void> {
  const { hub, options } = fastify.fanout
  fastify.get(options.askPath, { websocket: true, onRequest: admitUpgrade }, (socket, request) => {
    const client = hub.add(socket, socket.protocol === PROTOCOL, false)
    onInbound(fastify, socket, request, (data, isBinary) => {
      if (isBinary) return // the PHP server answers text; uploads belong to /guest
      logText(fastify, request, data)
      hub.send(client, JSON.stringify(makeGuest()))
    })
    hub.send(client, GREETING)
  })
}
