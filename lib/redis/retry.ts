/** Capped exponential backoff with full jitter; never gives up. */
export function retryDelay (attempt: number, capMs = 5000): number {
  return Math.round(Math.random() * Math.min(capMs, 100 * 2 ** Math.min(attempt, 10)))
}

export function delay (ms: number): Promise<void> {
  // Unref'd: the connections keep a running broker alive; a closed one should not wait on this.
  return new Promise((resolve) => setTimeout(resolve, ms).unref())
}
