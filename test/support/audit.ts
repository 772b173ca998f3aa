// What a client was owed and what it was told: the check behind "nothing acknowledged is silently
// missing". A notice covers the ids from where it says the loss began (a gap's `after`, a lost
// resume's `since`) to the next event the client received after it.
import { compareIds } from '../../lib/event.js'

/** What a client received, in order: events (by id) and the notices among them. */
export type Received = Array<{ id: string } | { lostAfter: string | null }>

/** The ids of `expected` the client lacks and was told of by no notice. */
export function untold (received: Received, expected: string[]): string[] {
  const held = new Set(received.flatMap((r) => 'id' in r ? [r.id] : []))
  const covers = received.flatMap((r, i) => {
    if (!('lostAfter' in r)) return []
    const next = received.slice(i + 1).find((e): e is { id: string } => 'id' in e)
    return [{ from: r.lostAfter, to: next?.id ?? null }]
  })
  const told = (id: string): boolean => covers.some(({ from, to }) => (from === null || compareIds(id, from) > 0) && (to === null || compareIds(id, to) < 0))
  return expected.filter((id) => !held.has(id) && !told(id))
}

/** A `fanout.v1` message as `Received` holds it, or nothing if it neither is an event nor tells of a loss. */
export function receivedOf (message: Record<string, unknown>, isEvent: (m: Record<string, unknown>) => boolean, lastId: string | null): Received {
  if (isEvent(message)) return [{ id: String(message.id) }]
  if (message.type === 'gap') return [{ lostAfter: typeof message.after === 'string' ? message.after : null }]
  if ((message.type === 'resume' || message.type === 'subscribed') && message.lost === true) return [{ lostAfter: lastId }]
  return []
}
