// The Redis layout of one channel, and the two scripts that write and read it. Everything a channel
// owns shares the hash tag `{<channel>}`, so on a Redis Cluster it all lives in one slot and each
// script runs on one shard; every channel is its own tag, so many channels spread over every
// shard (docs/channels.md, "Redis layout"). The guest channel's keys are the single stream's.
import { IDEMPOTENCY_MS } from '../broker.js'
import { CHANNEL_IDLE_GRACE_MS } from '../channels.js'
import { withId, type BrokerEvent } from '../event.js'
import { LUA_HELD_BY } from './lease.js'

export interface StreamKeys {
  /** The channel's name, as events carry it. */
  name: string
  /** The capped history: entries `seq`, `epoch`, `body`, `uid`, with the event's id as the entry id. */
  events: string
  /** One hash for the history's identity: `epoch`, `start` (its first id), `seq`, `last` (id). */
  meta: string
  /** The worker lease (issue 10): a token, set only if absent, with an expiry. The guest channel's only. */
  lease: string
  /** Where each event is published live: `<seq> <event JSON>`. */
  channel: string
  /** Per-publisher record of what it already published, so a retry never makes a second event. */
  publisher (publisherId: string): string
  /** A replica's own canary channel, in the stream's slot so it proves the same path. */
  canary (replicaId: string): string
  /** What an idempotency key's publish was given: its id, for IDEMPOTENCY_MS. */
  idempotent (key: string): string
}

export function streamKeys (prefix: string, channel: string): StreamKeys {
  const base = `${prefix}{${channel}}:`
  return {
    name: channel,
    events: `${base}events`,
    meta: `${base}meta`,
    lease: `${base}lease`,
    channel: `${base}live`,
    publisher: (publisherId) => `${base}publisher:${publisherId}`,
    canary: (replicaId) => `${base}canary:${replicaId}`,
    idempotent: (key) => `${base}once:${key}`
  }
}

/** How many of its latest publishes a publisher can retry and still be told their ids. */
export const DEDUPE_WINDOW = 1024

/** How long a publisher's record outlives its last publish on a channel kept by count alone. */
const PUBLISHER_RECORD_MS = 86_400_000

/**
 * Appends one event and publishes it, atomically, exactly once per (publisher, counter).
 *
 * - Idempotent: a counter the publisher already used returns the id it got then, so a retry after
 *   a lost reply or a partly executed pipeline never makes a second event. A counter that skips
 *   ahead is refused (`ORDER`) while an earlier one is still pending: it was refused, and
 *   publishing past it would reorder. So is one that finds no record (evicted under
 *   `allkeys-lru`) unless it is the oldest pending: the record cannot say what came before.
 * - Ids never go backwards and never repeat: each id is above the history's last id and above the
 *   newest id this publisher was given (`floor`), whatever became of the keys in between.
 * - A history that lost what this publisher knows it wrote (deleted, evicted, flushed, a restart
 *   without persistence, a failover to a replica that lagged) starts a new epoch, with seq from 1,
 *   so replicas and resuming clients can tell.
 * - Fenced: with a lease token, only the lease's holder publishes (a lease that vanished with the
 *   data is taken back, as a renewal would).
 * - Kept by age too, when the channel has one: entries older than it are trimmed (`MINID`), and
 *   every key of the channel expires once it has been idle that long plus CHANNEL_IDLE_GRACE_MS.
 * - `#!lua` makes Redis refuse the whole script up front at maxmemory (noeviction), before any write.
 *
 * - Identified: the event carries `uid`, its publisher's name for it, in the history and live, so a
 *   replica or a client recognises it when a failover lost the record above and a retry wrote it
 *   again under another id.
 * - Once per idempotency key, when given: a key seen before answers the id it got, and makes
 *   no event (its counter is still taken, so the publisher's next one follows it).
 *
 * KEYS: events, meta, publisher record, lease, idempotency record ('' key when none).
 * ARGV: body, maxlen, pub/sub channel, publish command (PUBLISH | SPUBLISH), counter, floor id,
 *       new-epoch name, lease token ('' = not fenced), lease ms, the publisher's oldest counter
 *       still pending (counters below it that never arrived were dropped, not refused),
 *       channel name, history age in ms (0: none), whether KEYS[5] is in use ('1' | ''),
 *       the event's uid (`<publisher>.<n>.<counter>`: the same on every retry, whatever id it gets).
 */
export const PUBLISH_SCRIPT = `#!lua
${LUA_HELD_BY}if ARGV[8] ~= '' then
  local holder = redis.call('GET', KEYS[4])
  if not holder then
    redis.call('SET', KEYS[4], ARGV[8] .. ':0', 'PX', ARGV[9]) -- lost with the data (FLUSHALL, a restart): take it back
  elseif not heldBy(holder, ARGV[8]) then
    return redis.error_reply('FENCED this publisher does not hold the lease')
  end
end
local counter = tonumber(ARGV[5])
local applied = tonumber(redis.call('HGET', KEYS[3], 'counter') or '0')
if counter <= applied then
  local id = redis.call('HGET', KEYS[3], 'c' .. counter)
  if id then return id end
  return redis.error_reply('STALE publish ' .. counter .. ' is older than the dedupe window')
end
-- Without a record (never written, expired, evicted) only the publisher's oldest pending counter
-- may start one: a later one would overtake an earlier that Redis refused (at maxmemory, say).
if counter ~= applied + 1 and tonumber(ARGV[10]) < counter then
  return redis.error_reply('ORDER publish ' .. counter .. ' follows ' .. applied)
end
if ARGV[13] == '1' then
  local known = redis.call('GET', KEYS[5])
  if known then
    redis.call('HSET', KEYS[3], 'counter', counter, 'c' .. counter, known)
    return known
  end
end
local function parse (id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end
local meta = redis.call('HMGET', KEYS[2], 'epoch', 'seq', 'last')
local epoch, seq = meta[1], tonumber(meta[2] or '0')
local lastMs, lastSeq = parse(meta[3] or '0-0')
local floorMs, floorSeq = parse(ARGV[6])
local fresh = not epoch or floorMs > lastMs or (floorMs == lastMs and floorSeq > lastSeq)
if fresh then
  epoch, seq = ARGV[7], 0
  if floorMs > lastMs or (floorMs == lastMs and floorSeq > lastSeq) then lastMs, lastSeq = floorMs, floorSeq end
end
seq = seq + 1
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
-- The id's sequence part is the microsecond within the millisecond (or one more than the last):
-- every script takes longer than a microsecond, so even when every key vanished between two calls
-- of one pipelined batch (eviction), the second id is above the first.
local micros = tonumber(time[2]) % 1000
local id
if now > lastMs then id = string.format('%d-%d', now, micros) else id = string.format('%d-%d', lastMs, math.max(lastSeq + 1, micros)) end
local uid = ARGV[14] or ''
local ok, added = pcall(redis.call, 'XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], id, 'seq', seq, 'epoch', epoch, 'body', ARGV[1], 'uid', uid)
if not ok then
  -- The stream outlived its meta and already holds a higher id: let Redis pick the next one.
  added = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'seq', seq, 'epoch', epoch, 'body', ARGV[1], 'uid', uid)
end
if fresh then
  redis.call('HSET', KEYS[2], 'start', added)
  redis.call('HDEL', KEYS[2], 'lost') -- a declared loss speaks for the epoch it started only
end
redis.call('HSET', KEYS[2], 'epoch', epoch, 'seq', seq, 'last', added)
redis.call('HSET', KEYS[3], 'counter', counter, 'c' .. counter, added)
redis.call('HDEL', KEYS[3], 'c' .. (counter - ${DEDUPE_WINDOW}))
local age = tonumber(ARGV[12])
if age > 0 then
  redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%d-0', now - age))
  local idle = age + ${CHANNEL_IDLE_GRACE_MS}
  redis.call('PEXPIRE', KEYS[1], idle)
  redis.call('PEXPIRE', KEYS[2], idle)
  redis.call('PEXPIRE', KEYS[3], idle)
else
  redis.call('PEXPIRE', KEYS[3], ${PUBLISHER_RECORD_MS})
end
if ARGV[13] == '1' then redis.call('SET', KEYS[5], added, 'PX', ${IDEMPOTENCY_MS}) end
redis.call(ARGV[4], ARGV[3], seq .. ' {"id":"' .. added .. '","epoch":"' .. epoch .. '","channel":"' .. ARGV[11] .. (uid == '' and '' or ('","uid":"' .. uid)) .. '",' .. string.sub(ARGV[1], 2))
return added
`

/**
 * Declares a channel's history lost: an event this process knows Redis took (it delivered it, or
 * was given its id) is no longer in the stream, though it is not older than the stream's first
 * entry, so no trim took it: a failover to a replica that had not received it. Whoever notices
 * first (a replica that delivered it, the publisher that was given its id) declares it, once:
 *
 * - The history starts a new epoch above everything it holds, everything lost and every id handed
 *   out before now (`start`), so a resume from any place before is answered `lost: true`, later ids
 *   are above every lost one, and a second report of the same failover finds its id below the start.
 * - `lost <epoch> <after>` on the live channel tells every replica's subscribers, in order with the
 *   events: the events after `after` (the last one the history kept before the missing one) may be
 *   gone. `lost` in the meta keeps it for a replica whose subscription was down meanwhile.
 *
 * An id older than the epoch's `start` was covered when that epoch began; one still in the stream
 * was not lost: both answer 0, so many processes may report the same loss.
 *
 * KEYS: events, meta. ARGV: the missing id, the new epoch's name, pub/sub channel, publish command.
 * Returns 1 if this call declared the loss, else 0.
 */
export const LOSS_SCRIPT = `#!lua
local function parse (id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end
local function below (a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
local missing = ARGV[1]
local meta = redis.call('HMGET', KEYS[2], 'epoch', 'start', 'last')
if not meta[1] or below(missing, meta[2] or '0-0') then return 0 end
if #redis.call('XRANGE', KEYS[1], missing, missing) > 0 then return 0 end
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #first > 0 and below(missing, first[1][1]) then return 0 end
local kept = redis.call('XREVRANGE', KEYS[1], '(' .. missing, '-', 'COUNT', 1)
local after = kept[1] and kept[1][1] or '0-0'
local last = meta[3] or '0-0'
if below(last, missing) then last = missing end
-- The new epoch starts above every id handed out before now, lost or kept, so a publisher that
-- reports another of them later finds it below the start: one failover, one declaration.
local time = redis.call('TIME')
local now = string.format('%d-0', tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000))
local top = below(last, now) and now or last
local ms, seq = parse(top)
redis.call('HSET', KEYS[2], 'epoch', ARGV[2], 'seq', 0, 'last', last, 'start', ms .. '-' .. (seq + 1), 'lost', after)
redis.call(ARGV[4], ARGV[3], 'lost ' .. ARGV[2] .. ' ' .. after)
return 1
`

/**
 * The start of a replay, read in one atomic step: the history's identity, the entry at or before
 * `since`, and the first page after it. A read-only script, so it still runs at maxmemory, where
 * Redis refuses MULTI.
 *
 * KEYS: events, meta. ARGV: since, page size.
 */
export const REPLAY_START_SCRIPT = `#!lua flags=no-writes
local meta = redis.call('HMGET', KEYS[2], 'epoch', 'start', 'last')
local before = redis.call('XREVRANGE', KEYS[1], ARGV[1], '-', 'COUNT', 1)
local page = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
return { meta, before, page }
`

/** A stream entry as Redis returns it: `[id, [field, value, …]]`. */
export type RawEntry = [string, string[]]

export interface Entry {
  id: string
  seq: number
  epoch: string
  event: BrokerEvent
}

export function parseEntry ([id, fields]: RawEntry, channel: string): Entry {
  const seq = Number(field(fields, 'seq'))
  const epoch = field(fields, 'epoch')
  return { id, seq, epoch, event: { id, seq, epoch, data: withId(id, epoch, channel, field(fields, 'body'), field(fields, 'uid')) } }
}

function field (fields: string[], name: string): string {
  for (let i = 0; i < fields.length; i += 2) if (fields[i] === name) return fields[i + 1]
  return ''
}

/**
 * Whether events were lost between two neighbours in a history: the same epoch with a jump in
 * seq, or a new epoch that does not start at 1 (its beginning was trimmed).
 */
export function missingBetween (before: { seq: number, epoch: string } | undefined, next: { seq: number, epoch: string }): number {
  if (before && before.epoch === next.epoch) return Math.max(0, next.seq - before.seq - 1)
  return next.seq - 1
}
