/** A token bucket: `rate` tokens a second, holding at most `burst`. */
export class TokenBucket {
  #tokens: number
  #last = performance.now()

  constructor (readonly rate: number, readonly burst: number) {
    this.#tokens = burst
  }

  /** Takes `n` tokens if there are enough; false means the caller is over its rate. */
  take (n = 1): boolean {
    const now = performance.now()
    this.#tokens = Math.min(this.burst, this.#tokens + ((now - this.#last) / 1000) * this.rate)
    this.#last = now
    if (this.#tokens < n) return false
    this.#tokens -= n
    return true
  }
}

/** Per-connection inbound limits: messages and bytes a second, each with a one-second burst. */
export class InboundLimiter {
  #messages: TokenBucket
  #bytes: TokenBucket

  constructor (messagesPerSec: number, bytesPerSec: number, maxMessageBytes: number) {
    this.#messages = new TokenBucket(messagesPerSec, messagesPerSec)
    // The burst admits one largest message, so the byte rate never refuses a single legal upload.
    this.#bytes = new TokenBucket(bytesPerSec, Math.max(bytesPerSec, maxMessageBytes))
  }

  admit (bytes: number): boolean {
    return this.#messages.take(1) && this.#bytes.take(bytes)
  }
}
