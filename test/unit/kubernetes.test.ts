// deploy/kubernetes/ checked offline (no cluster runs here): the probes name routes the server
// really serves with the ConfigMap's environment, the ports agree from the image to the Service,
// every variable is one the configuration table knows and validates, the grace period covers
// preStop + the drain + the server's own hard stop, the rollout never goes below `replicas`, and
// the disruption budget and the Service select the app's pods. deploy/stack.yml (Swarm) too: only
// keys Swarm honours, dnsrr everywhere, a stop grace above the drain.
import { readFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import Fastify from 'fastify'
import t from 'tap'
import { parse, parseAllDocuments } from 'yaml'
import fanout from '../../app.js'
import { EnvSchema, loadEnv } from '../../lib/config.js'
import { optionsFromEnv } from '../../lib/options.js'
import { ROOT, tempDir } from '../support/helper.js'

/** The server's own hard stop after SIGTERM: DRAIN_MS + this (server.ts, closeWithGrace's delay). */
const HARD_STOP_MARGIN_S = 5

type Doc = Record<string, any>
const DIR = join(ROOT, 'deploy/kubernetes')
const docs: Doc[] = readdirSync(DIR).filter((f) => f.endsWith('.yaml') && f !== 'kustomization.yaml').sort().flatMap((file) =>
  parseAllDocuments(readFileSync(join(DIR, file), 'utf8')).map((d) => {
    if (d.errors.length > 0) throw new Error(`${file}: ${d.errors.map((e) => e.message).join('; ')}`)
    return d.toJS() as Doc
  }))
const find = (kind: string, name: string): Doc => {
  const doc = docs.find((d) => d.kind === kind && d.metadata?.name === name)
  if (!doc) throw new Error(`no ${kind} ${name} in deploy/kubernetes/`)
  return doc
}
const app = find('Deployment', 'fanout-app')
const worker = find('Deployment', 'fanout-worker')
const appContainer = app.spec.template.spec.containers[0]
const workerContainer = worker.spec.template.spec.containers[0]

/** A container's environment as the pod sees it: the ConfigMaps it takes whole, then its own env. */
function envOf (container: Doc): Record<string, string> {
  const env: Record<string, string> = {}
  for (const from of container.envFrom ?? []) Object.assign(env, find('ConfigMap', from.configMapRef.name).data)
  for (const { name, value } of container.env ?? []) env[name] = String(value)
  return env
}
const selects = (selector: Record<string, string>, labels: Record<string, string>): boolean =>
  Object.entries(selector).every(([k, v]) => labels[k] === v)
const seconds = (duration: string): number => {
  const m = /^(\d+)(ms|s|m)$/.exec(duration)
  if (!m) throw new Error(`not a duration: ${duration}`)
  return Number(m[1]) * ({ ms: 0.001, s: 1, m: 60 } as Record<string, number>)[m[2]]
}

t.test('every manifest parses; the kustomization lists every file', async (t) => {
  const listed = (parse(readFileSync(join(DIR, 'kustomization.yaml'), 'utf8')) as Doc).resources as string[]
  const files = readdirSync(DIR).filter((f) => f.endsWith('.yaml') && f !== 'kustomization.yaml').sort()
  t.same([...listed].sort(), files, 'kustomization.yaml lists every manifest')
  t.same(docs.map((d) => `${d.kind}/${d.metadata.name}`).sort(), [
    'ConfigMap/fanout-config', 'Deployment/fanout-app', 'Deployment/fanout-worker', 'PodDisruptionBudget/fanout-app',
    'PodDisruptionBudget/fanout-worker', 'Service/fanout', 'Service/redis', 'StatefulSet/redis'
  ], 'the app, its budget and Service, the worker, Redis, the ConfigMap')
})

t.test('every variable is one the server validates, and the ConfigMap\'s values pass validation', async (t) => {
  const known = new Set(Object.keys(EnvSchema.properties))
  for (const [who, container] of [['app', appContainer], ['worker', workerContainer]] as const) {
    const env = envOf(container)
    t.same(Object.keys(env).filter((name) => !known.has(name)), [], `${who}: every variable is in the configuration table (${Object.keys(env).join(', ')})`)
    t.doesNotThrow(() => loadEnv(env), `${who}: the environment passes the server's validation`)
  }
})

t.test('the probes are routes the server serves with this environment, on the container\'s port', async (t) => {
  const env = loadEnv({ ...envOf(appContainer), REDIS_URL: '', UPLOAD_DIR: tempDir(t) }) // in-memory broker: no Redis here
  const server = Fastify({ logger: false })
  t.teardown(() => server.close())
  await server.register(fanout, optionsFromEnv(env))
  await server.ready()
  const ports = Object.fromEntries((appContainer.ports as Doc[]).map((p) => [p.name, p.containerPort]))
  for (const probe of ['readinessProbe', 'livenessProbe']) {
    const { path, port } = appContainer[probe].httpGet
    t.equal((await server.inject({ method: 'GET', url: path })).statusCode, 200, `${probe} ${path}: 200 from the server`)
    t.equal(ports[port], env.PORT, `${probe} on the port the server listens on (${port} = PORT ${env.PORT})`)
  }
  t.equal(appContainer.readinessProbe.httpGet.path, '/readyz', 'readiness is /readyz (unready while Redis is unreachable)')
  t.equal(appContainer.livenessProbe.httpGet.path, '/healthz', 'liveness is /healthz (a Redis outage restarts nothing)')
  const exposed = /^EXPOSE\s+(\d+)/m.exec(readFileSync(join(ROOT, 'Dockerfile'), 'utf8'))?.[1]
  t.equal(Number(exposed), env.PORT, 'the image exposes the port the ConfigMap sets')
  const service = find('Service', 'fanout')
  t.ok(selects(service.spec.selector, app.spec.template.metadata.labels), 'the Service selects the app\'s pods')
  t.ok(service.spec.ports.every((p: Doc) => p.targetPort in ports), 'the Service targets a named port of the container')
})

t.test('the grace period covers preStop, the drain and the server\'s own hard stop', async (t) => {
  const spec = app.spec.template.spec
  const preStop = appContainer.lifecycle.preStop.exec.command as string[]
  t.equal(preStop[0], 'sleep', 'preStop waits for the endpoint removal to spread')
  const drainS = Number(envOf(appContainer).DRAIN_MS) / 1000
  const needed = Number(preStop[1]) + drainS + HARD_STOP_MARGIN_S
  t.ok(spec.terminationGracePeriodSeconds > needed,
    `terminationGracePeriodSeconds ${spec.terminationGracePeriodSeconds} > preStop ${preStop[1]} s + DRAIN_MS ${drainS} s + ${HARD_STOP_MARGIN_S} s`)
})

t.test('the rollout never goes below `replicas`; a budget and a spread over nodes', async (t) => {
  t.same(app.spec.strategy.rollingUpdate, { maxSurge: 1, maxUnavailable: 0 }, 'app: maxSurge 1, maxUnavailable 0')
  t.same(worker.spec.strategy.rollingUpdate, { maxSurge: 1, maxUnavailable: 0 }, 'worker: the new one starts before the old hands over')
  t.equal(worker.spec.replicas, 2, 'two workers: a leader and a standby')
  for (const [name, deployment] of [['fanout-app', app], ['fanout-worker', worker]] as const) {
    const pdb = find('PodDisruptionBudget', name)
    t.ok(selects(pdb.spec.selector.matchLabels, deployment.spec.template.metadata.labels), `${name}: the budget selects its pods`)
    t.ok(pdb.spec.maxUnavailable < deployment.spec.replicas, `${name}: the budget leaves a pod up (maxUnavailable ${pdb.spec.maxUnavailable} of ${deployment.spec.replicas})`)
    const spread = deployment.spec.template.spec.topologySpreadConstraints as Doc[]
    t.ok(spread.some((c) => c.topologyKey === 'kubernetes.io/hostname' && selects(c.labelSelector.matchLabels, deployment.spec.template.metadata.labels)),
      `${name}: spread over nodes by its own labels`)
  }
})

t.test('deploy/stack.yml: only keys Swarm honours, dnsrr everywhere, a stop grace above the drain', async (t) => {
  const stack = parse(readFileSync(join(ROOT, 'deploy/stack.yml'), 'utf8'), { merge: true }) as Doc
  for (const [name, service] of Object.entries(stack.services as Record<string, Doc>)) {
    t.same(['build', 'depends_on', 'restart', 'container_name', 'links'].filter((k) => k in service), [], `${name}: no key Swarm ignores or refuses`)
    t.equal(service.deploy?.endpoint_mode, 'dnsrr', `${name}: endpoint_mode dnsrr (no virtual IP, no IPVS needed)`)
    t.ok(service.deploy?.restart_policy, `${name}: a restart policy`)
  }
  const appService = stack.services.app as Doc
  t.match(appService.deploy.update_config, { order: 'start-first', parallelism: 1, failure_action: 'rollback' }, 'app: start-first, one at a time, rolled back on failure')
  t.match(appService.healthcheck.test.join(' '), /\/readyz/, 'app: the healthcheck asks /readyz')
  const drainS = Number(appService.environment.DRAIN_MS) / 1000
  t.ok(seconds(appService.stop_grace_period) > drainS + HARD_STOP_MARGIN_S,
    `app: stop_grace_period ${appService.stop_grace_period} > DRAIN_MS ${drainS} s + ${HARD_STOP_MARGIN_S} s`)
  t.equal(stack.services.worker.deploy.replicas, 2, 'worker: a leader and a standby')
  t.same(stack.services.lb.ports.map((p: Doc) => p.mode), ['host'], 'lb: its port published in host mode (no routing mesh)')
  t.match(stack.services.lb.healthcheck.test.join(' '), /127\.0\.0\.1:8081\/nginx-health/,
    'lb: its healthcheck asks nginx itself, not the app (Swarm would replace the load balancer when a replica is slow)')
  t.match(readFileSync(join(ROOT, 'deploy', stack.configs.nginx_conf.file), 'utf8'), /resolver 127\.0\.0\.11 valid=\d+s/,
    'nginx re-resolves the app\'s tasks through Docker\'s DNS')
})
