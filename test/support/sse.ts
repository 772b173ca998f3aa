// An EventSource client by hand, for tests: fetch with Accept: text/event-stream, then the
// records parsed as they arrive (WHATWG HTML §9.2's fields: id, event, data; comments skipped).
type Tap = { teardown (fn: () => unknown): void }
type Json = Record<string, unknown>

export interface SseRecord { id?: string, event?: string, data: string }

export interface SseStream {
  status: number
  records: SseRecord[]
  /** The unnamed records (events), parsed. */
  events: () => Json[]
  /** The named records of one type (`resume`, `subscribed`), parsed. */
  named: (type: string) => Json[]
  close: () => void
}

export async function openSse (t: Tap, url: string, headers: Record<string, string> = {}): Promise<SseStream> {
  const abort = new AbortController()
  t.teardown(() => abort.abort())
  const response = await fetch(url, { headers: { accept: 'text/event-stream', ...headers }, signal: abort.signal })
  const records: SseRecord[] = []
  if (response.status === 200) {
    ;(async () => {
      let buffer = ''
      const decoder = new TextDecoder()
      try {
        for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
          buffer += decoder.decode(chunk, { stream: true })
          let end
          while ((end = buffer.indexOf('\n\n')) !== -1) {
            const block = buffer.slice(0, end)
            buffer = buffer.slice(end + 2)
            const record: SseRecord = { data: '' }
            for (const line of block.split('\n')) {
              if (line.startsWith(':')) continue
              const [field, ...rest] = line.split(': ')
              if (field === 'id') record.id = rest.join(': ')
              else if (field === 'event') record.event = rest.join(': ')
              else if (field === 'data') record.data += rest.join(': ')
            }
            if (record.data !== '') records.push(record)
          }
        }
      } catch {} // aborted
    })()
  } else {
    await response.body?.cancel()
  }
  return {
    status: response.status,
    records,
    events: () => records.filter((r) => r.event === undefined).map((r) => JSON.parse(r.data) as Json),
    named: (type) => records.filter((r) => r.event === type).map((r) => JSON.parse(r.data) as Json),
    close: () => abort.abort()
  }
}
