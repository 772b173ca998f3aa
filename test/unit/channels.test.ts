// Channels (lib/channels.ts): names, namespaces and the rules a namespace sets over the defaults;
// how a channel's keys spread over a Redis Cluster's slots; and the namespace settings as options
// (lib/options.ts) and as the NAMESPACES variable.
import { createRequire } from 'node:module'
import t from 'tap'
import type { Identity } from '../../lib/auth.js'
import { ChannelRules, GUEST_CHANNEL, isChannel, namespaceOf, type ChannelSettings } from '../../lib/channels.js'
import { ConfigError, loadEnv } from '../../lib/config.js'
import { optionsFromEnv, resolveOptions } from '../../lib/options.js'
import { streamKeys } from '../../lib/redis/stream.js'

// As ioredis loads it (a CommonJS module without types): the slot of a key, hash tag included.
const require = createRequire(import.meta.url)
const keySlot = require('cluster-key-slot') as (key: string) => number

t.test('isChannel: letters, digits and _ . : @ -, 1 to 128 of them', async (t) => {
  for (const name of ['guest', 'room:42', 'user.alice', 'a', 'x'.repeat(128), 'ns:sub:deep', 'mail@host', 'A_b-9', '0']) {
    t.ok(isChannel(name), `${JSON.stringify(name.length > 20 ? `${name.slice(0, 10)}…(${name.length})` : name)} is a channel`)
  }
  for (const name of ['', 'x'.repeat(129), 'room 1', 'room/1', 'a{b}', 'é', 'a\n', 'a*', 'a?', 'a,b']) {
    t.notOk(isChannel(name), `${JSON.stringify(name.length > 20 ? `${name.slice(0, 10)}…(${name.length})` : name)} is not`)
  }
  for (const value of [undefined, null, 42, {}, ['room'], Symbol('x')]) t.notOk(isChannel(value), `${String(typeof value)} is not`)
})

t.test('namespaceOf: the part before the first ":"', async (t) => {
  t.equal(namespaceOf('room:42'), 'room')
  t.equal(namespaceOf('room:42:thread:7'), 'room', 'only the first ":" counts')
  t.equal(namespaceOf('guest'), '', 'no ":": the default namespace')
  t.equal(namespaceOf(GUEST_CHANNEL), '')
  t.equal(namespaceOf('user.alice'), '', 'a dot is no separator')
  t.equal(namespaceOf(':x'), '', 'an empty namespace')
  t.equal(namespaceOf('room:'), 'room')
})

const DEFAULTS: ChannelSettings = Object.freeze({ historySize: 1000, historyAgeMs: 86_400_000, clientPublish: false, authorizeChannel: undefined })
const ALICE: Identity = { id: 'alice' }
const BOB: Identity = { id: 'bob' }

t.test('ChannelRules.of: a namespace\'s settings over the defaults', async (t) => {
  const rules = new ChannelRules(DEFAULTS, {
    room: { historySize: 50, clientPublish: true },
    log: { historyAgeMs: 0, historySize: undefined }, // undefined is "unset", not a value
    '': { historySize: 7 }
  })
  t.same(rules.of('room:1'), { historySize: 50, historyAgeMs: 86_400_000, clientPublish: true, authorizeChannel: undefined }, 'room: its own size and publishing, the default age')
  t.same(rules.of('log:x'), { historySize: 1000, historyAgeMs: 0, clientPublish: false, authorizeChannel: undefined }, 'an undefined field keeps the default')
  t.same(rules.of('guest'), { ...DEFAULTS, historySize: 7 }, 'names without ":" are namespace ""')
  t.equal(rules.of('other:1'), rules.of('nothing:2'), 'an unconfigured namespace gets the defaults themselves')
  t.same(rules.of('other:1'), DEFAULTS)
  t.same(rules.of('rooms:1'), DEFAULTS, 'no prefix matching: "rooms" is not "room"')
  t.same(rules.of('room.1'), { ...DEFAULTS, historySize: 7 }, '"room.1" has no ":", so it is in ""')
  t.ok(Object.isFrozen(rules.of('room:1')), 'settings are frozen')
  t.same(new ChannelRules(DEFAULTS).of('room:1'), DEFAULTS, 'no namespaces at all')
})

t.test('ChannelRules.allows: subscribe and publish, with and without hooks', async (t) => {
  const calls: Array<[string | undefined, string, string]> = []
  const onlyAlice = (identity: Identity, channel: string, action: 'subscribe' | 'publish') => {
    calls.push([identity.id, channel, action])
    return identity.id === 'alice'
  }
  const asyncHook = async (_identity: Identity, channel: string, action: 'subscribe' | 'publish') => action === 'subscribe' || channel.endsWith(':open')
  const rules = new ChannelRules({ ...DEFAULTS, authorizeChannel: onlyAlice }, {
    chat: { clientPublish: true }, // the default hook applies
    open: { clientPublish: true, authorizeChannel: asyncHook }, // its own hook, instead of the default
    news: {}, // no client publishing; the default hook for subscribing
    truthy: { clientPublish: true, authorizeChannel: () => 1 as unknown as boolean } // not `true`: refused
  })
  const plain = new ChannelRules(DEFAULTS, { chat: { clientPublish: true } })

  // No hook anywhere: everyone subscribes, publishing as clientPublish says.
  t.equal(await plain.allows(BOB, 'news:1', 'subscribe'), true, 'no hook: anyone subscribes')
  t.equal(await plain.allows(BOB, 'news:1', 'publish'), false, 'no hook, no clientPublish: no client publish')
  t.equal(await plain.allows(BOB, 'chat:1', 'publish'), true, 'no hook, clientPublish: anyone publishes')
  t.equal(await plain.allows(BOB, 'guest', 'publish'), false, 'the guest channel: no client publish by default')

  // The plugin's hook.
  t.equal(await rules.allows(ALICE, 'news:1', 'subscribe'), true, 'default hook admits alice')
  t.equal(await rules.allows(BOB, 'news:1', 'subscribe'), false, 'default hook refuses bob')
  t.equal(await rules.allows(ALICE, 'chat:1', 'publish'), true, 'clientPublish + hook admits: publish')
  t.equal(await rules.allows(BOB, 'chat:1', 'publish'), false, 'clientPublish but the hook refuses')
  calls.length = 0
  t.equal(await rules.allows(ALICE, 'news:1', 'publish'), false, 'no clientPublish: refused even though the hook would admit')
  t.same(calls, [], 'and the hook is not even asked')
  await rules.allows(BOB, 'chat:9', 'publish')
  t.same(calls, [['bob', 'chat:9', 'publish']], 'the hook hears the identity, the channel and the action')

  // A namespace's own hook replaces the default.
  calls.length = 0
  t.equal(await rules.allows(BOB, 'open:x', 'subscribe'), true, 'the namespace hook (async) admits bob, whom the default refuses')
  t.equal(await rules.allows(BOB, 'open:open', 'publish'), true, 'async hook: publish admitted')
  t.equal(await rules.allows(ALICE, 'open:closed', 'publish'), false, 'async hook: publish refused, even for alice')
  t.same(calls, [], 'the default hook was not asked for that namespace')
  t.equal(await rules.allows(ALICE, 'truthy:1', 'subscribe'), false, 'only `true` admits, not a truthy value')

  const throwing = new ChannelRules({ ...DEFAULTS, authorizeChannel: () => { throw new Error('hook broke') } })
  await t.rejects(throwing.allows(ALICE, 'x:1', 'subscribe'), /hook broke/, 'a throwing hook is an error, not a yes')
})

/** Primary index (0, 1, 2) of a slot over the default 3-primary layout of `redis-cli --cluster create`. */
function primaryOf (slot: number): number {
  return slot <= 5460 ? 0 : slot <= 10922 ? 1 : 2
}

t.test('cluster-key-slot computes Redis\'s CRC16 slots', async (t) => {
  // Published values (`CLUSTER KEYSLOT`): the package is what ioredis routes with.
  t.equal(keySlot('foo'), 12182)
  t.equal(keySlot('bar'), 5061)
  t.equal(keySlot('123456789'), 12739, 'CRC16-XMODEM check value 0x31C3 mod 16384')
  t.equal(keySlot('{user1000}.following'), keySlot('user1000'), 'a hash tag hashes only the tag')
})

t.test('every key of a channel is in its hash tag\'s slot', async (t) => {
  for (const channel of ['guest', 'room:42', 'user.alice', '0', 'a:b:c', 'x'.repeat(128)]) {
    const keys = streamKeys('fanout:', channel)
    const slot = keySlot(channel)
    const all = [keys.events, keys.meta, keys.channel, keys.publisher('p-1'), keys.idempotent('k.1'), keys.canary('r-1')]
    t.same(all.map(keySlot), all.map(() => slot), `${channel.slice(0, 20)}: all in slot ${slot}`)
    t.ok(all.every((key) => key.startsWith(`fanout:{${channel}}:`)), `${channel.slice(0, 20)}: every key has the {channel} tag`)
  }
})

t.test('10,000 channels spread evenly over three primaries', async (t) => {
  const families: Array<[string, (n: number) => string]> = [
    ['room:<n>', (n) => `room:${n}`],
    ['user.<n>', (n) => `user.${n}`],
    ['<n>', (n) => String(n)]
  ]
  for (const [family, name] of families) {
    const perPrimary = [0, 0, 0]
    const slots = new Set<number>()
    let untagged = 0
    for (let n = 0; n < 10_000; n++) {
      const channel = name(n)
      const slot = keySlot(streamKeys('fanout:', channel).events)
      if (slot !== keySlot(channel)) untagged++
      slots.add(slot)
      perPrimary[primaryOf(slot)]++
    }
    t.equal(untagged, 0, `${family}: every events key is in its channel name's slot`)
    const [min, max] = [Math.min(...perPrimary), Math.max(...perPrimary)]
    t.ok(max <= 1.2 * min, `${family}: each primary's share within 1.2× of the others (${perPrimary.join(' / ')})`)
    t.ok(slots.size > 4000, `${family}: ${slots.size} distinct slots, not a few hot ones`)
  }
})

t.test('namespaces option: bad names and bad fields are ConfigErrors naming both', async (t) => {
  const cases: Array<[string, unknown, RegExp]> = [
    ['a ":" in the name', { 'a:b': {} }, /namespaces has "a:b", not a namespace/],
    ['an empty name', { '': {} }, /namespaces has "", not a namespace/],
    ['a space in the name', { 'a b': {} }, /namespaces has "a b", not a namespace/],
    ['settings not an object', { room: 5 }, /namespaces\.room must be an object/],
    ['settings null', { room: null }, /namespaces\.room must be an object/],
    ['historySize 0', { room: { historySize: 0 } }, /namespaces\.room\.historySize must be an integer ≥ 1, got 0/],
    ['historySize a string', { room: { historySize: '5' } }, /namespaces\.room\.historySize must be an integer ≥ 1, got "5"/],
    ['historySize fractional', { room: { historySize: 1.5 } }, /namespaces\.room\.historySize must be an integer ≥ 1, got 1\.5/],
    ['historyAgeMs negative', { chat: { historyAgeMs: -1 } }, /namespaces\.chat\.historyAgeMs must be an integer ≥ 0 \(ms\), got -1/],
    ['clientPublish a string', { chat: { clientPublish: 'yes' } }, /namespaces\.chat\.clientPublish must be true or false, got "yes"/],
    ['authorizeChannel not a function', { chat: { authorizeChannel: true } }, /namespaces\.chat\.authorizeChannel must be a function, got true/],
    ['an unknown field', { chat: { historysize: 5 } }, /namespaces\.chat has unknown setting "historysize"/],
    ['not an object at all', 'room', /namespaces must be an object/],
    ['an array', [{}], /namespaces must be an object/]
  ]
  for (const [what, namespaces, message] of cases) {
    t.throws(() => resolveOptions({ namespaces: namespaces as never }), ConfigError, `${what}: a ConfigError`)
    try {
      resolveOptions({ namespaces: namespaces as never })
    } catch (err) {
      t.match((err as Error).message, /^invalid fastify-fanout option: /, `${what}: says which option`)
      t.match((err as Error).message, message, `${what}: names the namespace and the field`)
    }
  }
  const resolved = resolveOptions({ historySize: 200, historyAgeMs: 5000, namespaces: { room: { historySize: 10, clientPublish: true }, 'a.b-c_@': {} } })
  t.same(resolved.channels.of('room:1'), { historySize: 10, historyAgeMs: 5000, clientPublish: true, authorizeChannel: undefined }, 'valid: the namespace over the plugin\'s options')
  t.same(resolved.channels.of('a.b-c_@:x'), { historySize: 200, historyAgeMs: 5000, clientPublish: false, authorizeChannel: undefined })
  t.same(resolved.channels.of('other:1'), { historySize: 200, historyAgeMs: 5000, clientPublish: false, authorizeChannel: undefined })
})

t.test('NAMESPACES: JSON, checked as the option is', async (t) => {
  const options = optionsFromEnv(loadEnv({ NAMESPACES: '{"room":{"historySize":100,"clientPublish":true},"log":{"historyAgeMs":0}}' }))
  t.same(options.namespaces, { room: { historySize: 100, clientPublish: true }, log: { historyAgeMs: 0 } })
  const resolved = resolveOptions(options)
  t.equal(resolved.channels.of('room:1').historySize, 100)
  t.equal(resolved.channels.of('room:1').clientPublish, true)
  t.equal(resolved.channels.of('log:1').historyAgeMs, 0)
  t.equal(optionsFromEnv(loadEnv({})).namespaces, undefined, 'unset: no namespaces')

  for (const [what, value, message] of [
    ['not JSON', '{room:1}', /^invalid configuration: NAMESPACES must be JSON/],
    ['truncated JSON', '{"room":', /^invalid configuration: NAMESPACES must be JSON/],
    ['a JSON string', '"room"', /^invalid configuration: NAMESPACES must be an object/],
    ['a bad namespace', '{"a:b":{}}', /^invalid configuration: NAMESPACES has "a:b", not a namespace/],
    ['a bad field', '{"room":{"historySize":-3}}', /^invalid configuration: NAMESPACES\.room\.historySize must be an integer ≥ 1, got -3/],
    ['a hook in JSON', '{"room":{"authorizeChannel":"x"}}', /^invalid configuration: NAMESPACES\.room\.authorizeChannel must be a function/]
  ] as const) {
    t.throws(() => optionsFromEnv(loadEnv({ NAMESPACES: value })), ConfigError, `${what}: a ConfigError`)
    t.throws(() => optionsFromEnv(loadEnv({ NAMESPACES: value })), { message }, `${what}: names NAMESPACES`)
  }
})
