/**
 * Whether a WebSocket handshake's Origin may connect. Browsers always send Origin; other clients
 * usually do not, and are not the cross-site threat the check exists for (OWASP WebSocket cheat
 * sheet: "validate the Origin header"). Same origin means the Origin's host:port is the Host the
 * request was sent to.
 */
export function originAllowed (origin: string | undefined, host: string | undefined, allowed: readonly string[]): boolean {
  if (origin === undefined) return true
  if (allowed.includes('*') || allowed.includes(origin)) return true
  if (origin === 'null') return false // file:// and sandboxed pages; admitted only when listed
  try {
    return host !== undefined && new URL(origin).host === host.toLowerCase()
  } catch {
    return false
  }
}
