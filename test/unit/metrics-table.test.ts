// Issue 11: the counters are declared once, and both the pino line and /metrics come from that
// table; whatever a broker's stats() reports appears in both without another edit.
import t from 'tap'
import { MemoryBroker } from '../../app.js'
import { COUNTERS, prometheusName } from '../../lib/stats.js'
import { build, metricValue, waitFor } from '../support/helper.js'
import { coreOf } from '../../plugins/fanout.js'

/** A broker reporting numbers the plugin has never heard of, as the Redis rewrite will. */
class NewNumbersBroker extends MemoryBroker {
  override stats (): Record<string, number> {
    return { ...super.stats(), commandErrors: 3, epochChanges: 1, gapsReported: 7 }
  }
}

t.test('every counter and every broker number, in the pino line and in /metrics', async (t) => {
  const broker = new NewNumbersBroker(() => ({ historySize: 100, historyAgeMs: 0 }))
  t.teardown(() => broker.close())
  const { app, url, logs } = await build(t, { broker, metricsIntervalMs: 50 })
  coreOf(app).stats.uploadErrors = 4
  const line = await waitFor(() => logs.find('metrics').at(-1), 5000, 'a metrics line') as Record<string, unknown>
  for (const name of Object.keys(COUNTERS)) t.type(line[name], 'number', `${name} in the line`)
  t.equal(line.uploadErrors, 4)
  t.match(line, { commandErrors: 3, epochChanges: 1, gapsReported: 7, broker: 'ready', connections: 0 })
  t.notOk('brokerStats' in line, 'broker numbers are flat in the line')

  const text = await (await fetch(`${url}/metrics`)).text()
  for (const name of Object.keys(COUNTERS) as Array<keyof typeof COUNTERS>) {
    t.match(text, new RegExp(`^# HELP ${prometheusName(name)} ${COUNTERS[name]}$`, 'm'), `${prometheusName(name)} with its help`)
  }
  t.equal(await metricValue(url, 'fanout_upload_errors_total'), 4)
  t.equal(await metricValue(url, 'fanout_broker_stat{name="commandErrors"}'), 3)
  t.equal(await metricValue(url, 'fanout_broker_stat{name="gapsReported"}'), 7)

  const snapshot = app.fanout.snapshot()
  t.same(snapshot.brokerStats, broker.stats(), 'snapshot() keeps them apart, typed')
  t.equal(snapshot.uploadErrors, 4)
})
