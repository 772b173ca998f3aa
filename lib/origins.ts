/**
 * Whether a WebSocket handshake's Origin may connect. Browsers always send Origin; other clients
 * usually do not, and are not the cross-site threat the check exists for (OWASP WebSocket cheat
 * sheet: "validate the Origin header"). Same origin means scheme, host and port all match: the
 * Origin's host:port is the Host the request was sent to, and its scheme is the request's
 * `protocol` (Fastify's `request.protocol`: `https` on a TLS socket, or the first
 * X-Forwarded-Proto when `trustProxy` is on; `http` otherwise). So `Origin: https://host` on a
 * plain-http request is another origin (RFC 6454: an origin is scheme, host and port).
 *
 * Without `protocol` only the host:port is compared: for a caller that has already admitted the
 * request through a check that had it (routes/connection.ts `admitConnection`).
 */
export function originAllowed (origin: string | undefined, host: string | undefined, allowed: readonly string[], protocol?: string): boolean {
  if (origin === undefined) return true
  if (allowed.includes('*') || allowed.includes(origin)) return true
  if (origin === 'null') return false // file:// and sandboxed pages; admitted only when listed
  try {
    const url = new URL(origin)
    if (protocol !== undefined && url.protocol !== `${protocol.toLowerCase()}:`) return false
    return host !== undefined && url.host === host.toLowerCase()
  } catch {
    return false
  }
}

// host[:port], the name a DNS name, an IPv4 address or a bracketed IPv6 one; nothing else.
const HOST = /^(\[[0-9a-f:.]+\]|[a-z0-9._-]+)(?::(\d{1,5}))?$/i

/**
 * Whether a request's Host is one the server answers to (`allowedHosts`; empty: any). Against DNS
 * rebinding: a page on `evil.example` whose name an attacker re-points at this server sends
 * requests that are same-origin for the browser (Origin and Host both `evil.example`), so the
 * origin check alone admits them; the Host check does not. An entry without a port admits that
 * name on any port (`example.com` admits `example.com:8080`); one with a port, that port only.
 * Names compare case-insensitively; a request without a Host is refused when a list is set.
 */
export function hostAllowed (host: string | undefined, allowed: readonly string[]): boolean {
  if (allowed.length === 0) return true
  const got = host === undefined ? undefined : splitHost(host)
  if (got === undefined) return false
  return allowed.some((entry) => {
    const wanted = splitHost(entry.trim())
    return wanted !== undefined && wanted.name === got.name && (wanted.port === undefined || wanted.port === got.port)
  })
}

function splitHost (host: string): { name: string, port: string | undefined } | undefined {
  const match = HOST.exec(host)
  if (match === null) return undefined
  // A trailing dot names the same host (`example.com.`): compared without it.
  return { name: match[1].toLowerCase().replace(/\.$/, ''), port: match[2] }
}
