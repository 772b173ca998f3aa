// lib/origins.ts: which browser pages may connect.
import t from 'tap'
import { originAllowed } from '../../lib/origins.js'

t.test('originAllowed', async (t) => {
  const host = '127.0.0.1:8080'
  t.ok(originAllowed(undefined, host, []), 'no Origin: not a browser, admitted')
  t.ok(originAllowed('http://127.0.0.1:8080', host, []), 'same origin')
  t.ok(originAllowed('https://127.0.0.1:8080', host, []), 'same host and port behind TLS')
  t.ok(originAllowed('http://Example.COM', 'example.com', []), 'host compared case-insensitively')
  t.ok(originAllowed('http://example.com', 'EXAMPLE.com', []))
  t.notOk(originAllowed('http://127.0.0.1:9090', host, []), 'another port is another origin')
  t.notOk(originAllowed('http://evil.example', host, []), 'foreign origin')
  t.notOk(originAllowed('http://evil.example', undefined, []))
  t.notOk(originAllowed('null', host, []), 'file:// pages only when listed')
  t.notOk(originAllowed('not a url', host, []))
  t.ok(originAllowed('null', host, ['null']))
  t.ok(originAllowed('http://evil.example', host, ['http://evil.example']), 'listed exactly')
  t.notOk(originAllowed('http://evil.example:81', host, ['http://evil.example']), 'exact match, not a prefix')
  t.ok(originAllowed('http://anything.example', host, ['*']))
  t.ok(originAllowed('null', host, ['*']))
})
