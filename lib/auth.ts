import { timingSafeEqual } from 'node:crypto'
import type { IncomingHttpHeaders } from 'node:http'
import { TOKEN_PROTOCOL_PREFIX } from './protocol.js'

/**
 * Who a connection belongs to, as `authorize` said: attached to the connection for its lifetime.
 * `id` names it in log lines and upload file names; `upload: false` refuses its uploads
 * (`unauthorized`); `claims` are a verified signed token's (the built-in token `authorize`: `id`
 * is its `sub`, and its `channels` claim grants channels, docs/security.md); any other field is
 * yours, e.g. for per-user limits in your own code.
 */
export interface Identity {
  id?: string
  upload?: boolean
  claims?: Record<string, unknown>
  [field: string]: unknown
}

/** The identity of every connection when there is no `authorize`: one shared object, not one each. */
export const ANONYMOUS: Identity = Object.freeze({})

/** A refused connection: an HTTP status and a reason, answered before the upgrade (503: try again, e.g. Redis unreachable). */
export class Refusal {
  constructor (readonly status: 401 | 403 | 503, readonly reason: string) {}
}

/** What `authorize` returns to refuse a connection: `return refuse(403, 'not a member')`. */
export function refuse (status: 401 | 403, reason: string): Refusal {
  return new Refusal(status, reason)
}

/**
 * The upload token's identity for a handshake's headers: everyone may connect and receive events;
 * a connection may upload only if its handshake carried the token, as `Authorization: Bearer <token>` or, for
 * browsers (which cannot set headers), as the subprotocol `fanout.token.<token>`. Never logged.
 */
export function uploadTokenIdentity (token: string): (headers: IncomingHttpHeaders) => Identity {
  const expected = Buffer.from(token)
  return (headers) => {
    const offered = [
      headers.authorization?.replace(/^Bearer\s+/i, ''),
      ...(headers['sec-websocket-protocol'] ?? '').split(',').map((p) => p.trim())
        .filter((p) => p.startsWith(TOKEN_PROTOCOL_PREFIX)).map((p) => p.slice(TOKEN_PROTOCOL_PREFIX.length))
    ]
    const upload = offered.some((candidate) => {
      if (candidate === undefined) return false
      const given = Buffer.from(candidate)
      return given.length === expected.length && timingSafeEqual(given, expected)
    })
    return { upload }
  }
}
