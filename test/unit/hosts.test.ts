// lib/origins.ts (issue 22): the Origin compared with the request's scheme, and allowedHosts.
import t from 'tap'
import { hostAllowed, originAllowed } from '../../lib/origins.js'

t.test('originAllowed with the request\'s protocol: scheme, host and port', async (t) => {
  const host = '127.0.0.1:8080'
  t.ok(originAllowed('http://127.0.0.1:8080', host, [], 'http'))
  t.notOk(originAllowed('https://127.0.0.1:8080', host, [], 'http'), 'https page, plain-http request: another origin')
  t.ok(originAllowed('https://127.0.0.1:8080', host, [], 'https'), 'https page, https request (TLS, or X-Forwarded-Proto with trustProxy)')
  t.notOk(originAllowed('http://127.0.0.1:8080', host, [], 'https'), 'http page, https request')
  t.ok(originAllowed('https://app.example', host, ['https://app.example'], 'http'), 'a listed origin whatever the scheme')
  t.ok(originAllowed(undefined, host, [], 'http'), 'no Origin: not a browser')
})

t.test('hostAllowed', async (t) => {
  t.ok(hostAllowed('evil.example', []), 'no list: any Host')
  t.ok(hostAllowed(undefined, []))
  const list = ['fanout.example', 'api.example:8443', '[::1]', '127.0.0.1']
  t.ok(hostAllowed('fanout.example', list))
  t.ok(hostAllowed('FANOUT.example:8080', list), 'a name without a port: any port, any case')
  t.ok(hostAllowed('fanout.example.', list), 'the trailing-dot spelling of the same name')
  t.ok(hostAllowed('api.example:8443', list))
  t.notOk(hostAllowed('api.example:443', list), 'listed with a port: that port only')
  t.notOk(hostAllowed('api.example', list))
  t.ok(hostAllowed('[::1]:8080', list), 'IPv6')
  t.ok(hostAllowed('127.0.0.1:9000', list))
  t.notOk(hostAllowed('evil.example', list), 'the rebinding shape')
  t.notOk(hostAllowed('fanout.example.evil.example', list), 'a name that starts with a listed one')
  t.notOk(hostAllowed(undefined, list), 'no Host while a list is set')
  t.notOk(hostAllowed('', list))
  t.notOk(hostAllowed('user@fanout.example', list), 'not a plain host[:port]')
  t.notOk(hostAllowed('fanout.example/x', list))
})

t.test('the edge settings from the environment', async (t) => {
  const { loadEnv } = await import('../../lib/config.js')
  const { optionsFromEnv } = await import('../../lib/options.js')
  const options = optionsFromEnv(loadEnv({
    ALLOWED_HOSTS: ' fanout.example , api.example:8443,,',
    MAX_CONNECTIONS_PER_IDENTITY: '10',
    MAX_CONNECTIONS_PER_ADDRESS: '50',
    METRICS_TOKEN: 'metrics-token-0123456789'
  }))
  t.same(options.allowedHosts, ['fanout.example', 'api.example:8443'])
  t.equal(options.maxConnectionsPerIdentity, 10)
  t.equal(options.maxConnectionsPerAddress, 50)
  t.equal(options.metricsToken, 'metrics-token-0123456789')
  const unset = optionsFromEnv(loadEnv({}))
  t.same([unset.allowedHosts, unset.maxConnectionsPerIdentity, unset.maxConnectionsPerAddress, unset.metricsToken], [undefined, undefined, undefined, undefined], 'all unset by default')
  t.throws(() => loadEnv({ ALLOWED_HOSTS: 'http://fanout.example' }), /ALLOWED_HOSTS must be a list of host names, each a name or name:port/)
  t.throws(() => loadEnv({ MAX_CONNECTIONS_PER_IDENTITY: '0' }), /MAX_CONNECTIONS_PER_IDENTITY must be >= 1/)
  const short = 'short-secret'
  t.throws(() => loadEnv({ METRICS_TOKEN: short }), { message: /METRICS_TOKEN must be at least 16 characters.*\(value hidden\)/ })
})
