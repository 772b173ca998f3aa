/** The Redis broker's numbers, for the metrics line and /metrics (`fanout_broker_stat`). */
export function newCounters () {
  return {
    /** Round trip of the last canary; -1 before the first. */
    canaryRttMs: -1,
    resubscribes: 0,
    published: 0,
    outboxDropped: 0,
    /** Events a worker dropped on finding that another one holds the lease. */
    fencedDropped: 0,
    /** WAITs that counted fewer than REDIS_WAIT_REPLICAS replicas: their events are live, and wait for a later WAIT (`unreplicated` in stats). */
    waitShortfalls: 0,
    /** Error replies and failed calls to Redis, of any command. */
    commandErrors: 0,
    repairs: 0,
    repairedEvents: 0,
    /** Events trimmed from the history before this replica could read them back. */
    repairLost: 0,
    /** New histories followed: the stream and its meta were reset. */
    epochChanges: 0,
    /** The same epoch going back in seq: the history lost its newest events. */
    historyRewinds: 0,
    /** Histories this replica found to have lost events Redis had taken, and declared lost (a new epoch, clients told). */
    lossesDeclared: 0,
    /** Events that came again under a new id (same uid: a retry written again after a failover), not delivered twice. */
    repeatsDropped: 0,
    /** Gaps told to clients (`{"type":"gap"}`). */
    gapsReported: 0,
    /** Warnings not logged because their kind was over its rate. */
    logsSuppressed: 0
  }
}

export type RedisCounters = ReturnType<typeof newCounters>
