/**
 * The uids of the last events this replica delivered, over all its channels. An event that comes
 * again under another id (a publish retried after a failover lost the publisher's record, and
 * written again) is recognised by its uid and not delivered twice. Bounded by count, not time: a
 * repeat follows its original by the outbox's retry, and while Redis fails over nothing is
 * delivered, so the count hardly moves however long the failover takes.
 */
export class RecentUids {
  readonly #uids = new Set<string>()

  constructor (private readonly limit: number) {}

  /** Remembers `uid`; false if it was remembered already: a repeat. */
  add (uid: string): boolean {
    if (this.#uids.has(uid)) return false
    this.#uids.add(uid)
    // A Set iterates in insertion order: its first is the oldest.
    if (this.#uids.size > this.limit) this.#uids.delete(this.#uids.values().next().value as string)
    return true
  }
}
