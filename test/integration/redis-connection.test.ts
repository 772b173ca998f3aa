// Issue 10: lib/redis/connection.ts, the one way the project reaches Redis: parsing host lists and
// settings into a target (clear errors for bad input), and real connections to a single server, a
// Sentinel-managed primary and a Cluster.
import t from 'tap'
import type { Cluster, Redis } from 'ioredis'
import { createRedis, describeTarget, parseHostPorts, redisTarget, RedisTargetError } from '../../lib/redis/connection.js'
import { startRedis, waitFor } from '../support/helper.js'
import { ask, startCluster, startSentinels } from '../support/redis-topology.js'

t.test('parseHostPorts', async (t) => {
  t.same(parseHostPorts('127.0.0.1:26379'), [{ host: '127.0.0.1', port: 26379 }])
  t.same(parseHostPorts(' a:1 , b.example:2,[::1]:3'), [
    { host: 'a', port: 1 }, { host: 'b.example', port: 2 }, { host: '::1', port: 3 }
  ], 'spaces around entries are ignored; IPv6 in brackets')
  const bad: Array<[string, RegExp]> = [
    ['', /REDIS_SENTINELS is empty/],
    [' , ', /REDIS_SENTINELS is empty/],
    ['a:1,,b:2', /entry 2 is empty/],
    ['a:1,', /entry 2 is empty/],
    ['localhost', /"localhost" is not host:port/],
    ['a:b', /"a:b" is not host:port/],
    ['::1:6379', /"::1:6379" is not host:port \(IPv6 as \[addr\]:port\)/],
    ['a:0', /port 0 in "a:0" is outside 1-65535/],
    ['a:65536', /port 65536 .* outside 1-65535/],
    ['a:123456', /"a:123456" is not host:port/],
    ['redis://a:1', /"redis:\/\/a:1" is not host:port/],
    ['a:1,A:1', /"A:1" is listed twice/]
  ]
  for (const [input, message] of bad) {
    t.throws(() => parseHostPorts(input, 'REDIS_SENTINELS'), { name: 'RedisTargetError', message }, JSON.stringify(input))
  }
})

t.test('redisTarget: settings to a target, or a clear error', async (t) => {
  t.equal(redisTarget({}), undefined, 'nothing set: the in-memory broker')
  t.equal(redisTarget({ url: '', sentinels: '', clusterNodes: '' }), undefined, 'empty means unset')
  t.same(redisTarget({ url: 'redis://h:1/2' }), { url: 'redis://h:1/2' })
  t.same(redisTarget({ sentinels: 'a:1,b:2', sentinelName: 'main' }),
    { sentinels: [{ host: 'a', port: 1 }, { host: 'b', port: 2 }], name: 'main' })
  t.same(redisTarget({ sentinels: 'a:1', sentinelName: 'main', url: 'redis://:pw@ignored/3' }),
    { sentinels: [{ host: 'a', port: 1 }], name: 'main', url: 'redis://:pw@ignored/3' }, 'the URL rides along for credentials')
  t.same(redisTarget({ clusterNodes: 'a:1' }), { clusterNodes: [{ host: 'a', port: 1 }] })
  const bad: Array<[Parameters<typeof redisTarget>[0], RegExp]> = [
    [{ sentinels: 'a:1', clusterNodes: 'b:2' }, /REDIS_SENTINELS and REDIS_CLUSTER_NODES are both set/],
    [{ sentinels: 'a:1' }, /REDIS_SENTINELS needs REDIS_SENTINEL_NAME/],
    [{ sentinelName: 'main' }, /REDIS_SENTINEL_NAME is set without REDIS_SENTINELS/],
    [{ clusterNodes: 'a:1', url: 'redis://h/1' }, /database other than 0/],
    [{ url: 'http://h:1' }, /must start with redis:\/\/ or rediss:\/\/, not http:\/\//],
    [{ url: 'not a url' }, /REDIS_URL is not a URL/],
    [{ url: 'redis://h/x' }, /the path must be a database number, got "x"/],
    [{ sentinels: 'a', sentinelName: 'm' }, /REDIS_SENTINELS: "a" is not host:port/],
    [{ clusterNodes: 'a:1,a:1' }, /REDIS_CLUSTER_NODES: "a:1" is listed twice/]
  ]
  for (const [settings, message] of bad) t.throws(() => redisTarget(settings), { name: 'RedisTargetError', message }, JSON.stringify(settings))
  const err = (() => { try { redisTarget({ url: 'redis://user:s3cret@h/x' }) } catch (e) { return e } })()
  t.ok(err instanceof RedisTargetError && !err.message.includes('s3cret'), 'an error about the URL does not echo its password')
})

t.test('describeTarget never shows credentials', async (t) => {
  t.equal(describeTarget({ url: 'redis://user:s3cret@h:6380/2' }), 'redis://h:6380/2')
  t.equal(describeTarget({ sentinels: [{ host: 'a', port: 1 }, { host: '::1', port: 2 }], name: 'm', url: 'redis://:s3cret@x' }), 'sentinel m via a:1,[::1]:2')
  t.equal(describeTarget({ clusterNodes: [{ host: 'a', port: 1 }], url: 'redis://:s3cret@x' }), 'cluster via a:1')
})

t.test('createRedis puts each option where ioredis reads it', async (t) => {
  const sentinel = createRedis({ sentinels: [{ host: '127.0.0.1', port: 1 }], name: 'm', url: 'rediss://u:p%40ss@ignored/4' },
    'worker', { lazyConnect: true }) as Redis
  t.teardown(() => sentinel.disconnect())
  t.match(sentinel.options, {
    sentinels: [{ host: '127.0.0.1', port: 1 }],
    name: 'm',
    username: 'u',
    password: 'p@ss',
    db: 4,
    tls: {},
    connectionName: 'fanout-worker',
    maxRetriesPerRequest: null
  }, 'sentinel: credentials, database and TLS from the URL, decoded; the role names the connection')

  const cluster = createRedis({ clusterNodes: [{ host: '127.0.0.1', port: 1 }], url: 'redis://:pw@ignored' }, 'subscriber',
    { lazyConnect: true, enableOfflineQueue: false, keyPrefix: 'x:', commandTimeout: 500 }, { shardedSubscribers: true }) as Cluster
  t.teardown(() => cluster.disconnect())
  t.match(cluster.options, {
    lazyConnect: true,
    enableOfflineQueue: false,
    keyPrefix: 'x:',
    shardedSubscribers: true,
    slotsRefreshInterval: 1000,
    redisOptions: { password: 'pw', connectionName: 'fanout-subscriber', commandTimeout: 500, maxRetriesPerRequest: null }
  }, 'cluster: cluster-level options on the Cluster, the rest on every node')
  t.notOk('enableOfflineQueue' in (cluster.options.redisOptions ?? {}), 'no cluster-level option is duplicated per node')
  t.equal(typeof cluster.options.clusterRetryStrategy, 'function', 'the retry strategy becomes the cluster\'s')
})

t.test('createRedis: a single server by URL, with the database from the URL', async (t) => {
  const redis = await startRedis(t)
  const client = createRedis({ url: `${redis.url}/3` }, 'command') as Redis
  t.teardown(() => client.disconnect())
  t.equal(await client.set('k', 'v'), 'OK')
  t.equal(await redis.cli('-n', '3', 'GET', 'k'), 'v', 'written to database 3')
  t.equal(await client.client('GETNAME'), 'fanout-command')
})

t.test('createRedis: Sentinel finds the primary, database from the URL', async (t) => {
  const topo = await startSentinels(t, { replicas: 1, sentinels: 3 })
  const client = createRedis({ sentinels: topo.sentinels, name: topo.name, url: 'redis://ignored/2' }, 'command') as Redis
  t.teardown(() => client.disconnect())
  t.equal(await client.set('k', 'v'), 'OK')
  const primary = await topo.primary()
  t.equal(await ask(primary, ['EVAL', "redis.call('SELECT', 2) return redis.call('GET', 'k')", 0]), 'v', 'written on the primary, database 2')
  t.equal(await client.client('GETNAME'), 'fanout-command')
  const watching = async () => {
    let count = 0
    for (const sentinel of topo.sentinels) count += String(await ask(sentinel, ['CLIENT', 'LIST'])).split('\n').filter((l) => l.includes('name=fanout-command-failover-watch')).length
    return count
  }
  t.equal(await waitFor(async () => (await watching()) === 3 && 3, 5000, 'watchers'), 3, 'one +switch-master watcher on each sentinel')
  client.disconnect()
  await waitFor(async () => (await watching()) === 0, 5000, 'the watchers to close with the client')
  t.pass('the watchers close when the client ends')
})

t.test('createRedis: Cluster discovers every primary from one start node', async (t) => {
  const cluster = await startCluster(t, { primaries: 3, replicasPerPrimary: 1 })
  const [first] = cluster.nodes
  const client = createRedis({ clusterNodes: [{ host: first.host, port: first.port }] }, 'command') as Cluster
  t.teardown(() => client.disconnect())
  const keys = ['{a}x', '{b}x', '{c}x', '{d}x', '{e}x', '{f}x']
  for (const key of keys) t.equal(await client.set(key, key), 'OK')
  const owners = new Set<number>()
  for (const key of keys) {
    const owner = await cluster.ownerOf(key)
    owners.add(owner.port)
    t.equal(await ask(owner, ['GET', key]), key, `${key} is on the primary owning its slot`)
  }
  t.ok(owners.size > 1, 'the keys spread over more than one primary')
  await waitFor(() => client.nodes('master').length === 3, 5000, 'three primaries known')
  const names = await Promise.all(client.nodes('master').map((n) => n.client('GETNAME')))
  t.same(names, ['fanout-command', 'fanout-command', 'fanout-command'], 'every node connection carries the role\'s name')
})
