import websocket from '@fastify/websocket'
import fp from 'fastify-plugin'
import type { ResolvedOptions } from '../lib/options.js'
import { CLOSE_GRACE_MS, CloseCode, PROTOCOL } from '../lib/protocol.js'
import { coreOf } from './fanout.js'

/** @fastify/websocket with the limits the routes rely on. */
export default fp<ResolvedOptions>(async (fastify, options) => {
  if (fastify.hasDecorator('websocketServer')) {
    fastify.log.warn('@fastify/websocket is already registered: fastify-fanout uses its settings, not its own limits')
    return
  }
  await fastify.register(websocket, {
    options: {
      maxPayload: options.maxUploadBytes,
      // The hub writes pre-framed bytes straight to each socket (lib/hub.ts): compression must stay
      // off. It also costs CPU and memory per connection and has a history of DoS bugs.
      perMessageDeflate: false,
      // After a close the server starts (a protocol error, invalid UTF-8, an oversize message, a
      // rate limit, a slow consumer) ws waits this long for the peer's answer, not 30 s: a peer
      // that never answers would hold its connection slot meanwhile (RFC 6455 §7.1.7).
      // ws 8.23 reads it; @types/ws does not declare it.
      ...{ closeTimeout: CLOSE_GRACE_MS },
      // Choose fanout.v1 when offered. A client that offers only other protocols gets none.
      handleProtocols: (protocols) => protocols.has(PROTOCOL) ? PROTOCOL : false
    },
    // ws has already sent the close frame (1002, 1007, 1009) when it reports a protocol error:
    // log it and let the close finish, rather than cutting the socket under the frame.
    errorHandler (error, _socket, request) {
      request.log.info({ err: { message: error.message, code: (error as NodeJS.ErrnoException).code } }, 'websocket closed on error')
    },
    // Closing is the hub's: 1012 spread over the drain window, then the server.
    preClose: async function () {
      // Stop accepting first. New connections are refused, so a load balancer fails over at
      // once (a 503 would go back to the client, and least_conn would keep choosing this
      // emptying replica). A handshake already on its way, with no upgrade listener left, gets
      // Fastify's plain 503 and its socket closed: @fastify/websocket's listener would answer the
      // same 503 but leave the socket open, and server.close() would then wait for it forever.
      fastify.server.close()
      fastify.server.removeAllListeners('upgrade')
      await coreOf(fastify).hub.drain(CloseCode.RESTART, 'service restart', options.drainMs)
      await new Promise((resolve) => fastify.websocketServer.close(resolve))
    }
  })
}, { name: 'fanout-websocket', dependencies: ['fanout-core'] })
