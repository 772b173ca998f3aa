import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import { build, connect } from './helper.js'

t.test('every client gets every event, in the same order', async (t) => {
  const { app, ws } = await build(t)
  const clients = await Promise.all([1, 2, 3].map(() => connect(t, `${ws}/guest`)))
  const ids = []
  for (let i = 0; i < 20; i++) ids.push(await app.fanout.publish({ type: 'guest', guest: `张${i}`, time: '12:00:00', ts: Date.now() }))
  for (const client of clients) await client.until((c) => c.events().length === 20)
  for (const client of clients) t.same(client.events().map((e) => e.id), ids)
  t.equal(clients[0].events()[3].guest, '张3')
})

t.test('a binary message lands on disk byte for byte, and fanout.v1 clients get the ack', async (t) => {
  const { ws, uploadDir } = await build(t)
  const client = await connect(t, `${ws}/guest`, { protocols: ['fanout.v1'] })
  const png = Buffer.concat([Buffer.from('89504e470d0a1a0a0000000d49484452', 'hex'), Buffer.alloc(64, 7)])
  client.socket.send(png)
  await client.until((c) => c.json('ack').length === 1)
  const [ack] = client.json('ack')
  const files = (await readdir(uploadDir)).filter((f) => !f.startsWith('.'))
  t.same(files, [ack.id])
  t.match(ack.id, /\.png$/)
  t.same(await readFile(join(uploadDir, files[0])), png)
})
