// The demo page: live guests, reconnect with jittered exponential backoff that resumes with
// ?since=, text to the server, uploads with their ack. Where WebSockets do not get through (or
// with ?transport=sse in the page's URL) it falls back to EventSource, which receives only.
// Plain browser JS, no build step.
'use strict'

const PROTOCOL = 'fanout.v1'
const MAX_GUESTS = 50
// The server writes the stream's path, prefix included, into the page.
const STREAM = document.querySelector('meta[name="fanout-stream"]').content
// WebSocket connections that closed without ever opening, in a row: after this many, EventSource.
const FALLBACK_AFTER = 2
const stateEl = document.getElementById('state')
const guestsEl = document.getElementById('guests')
const emptyEl = document.getElementById('empty')
const recoveredEl = document.getElementById('recovered')
const uploadsEl = document.getElementById('uploads')
const countEl = document.getElementById('count')

let socket
let lastId
let lastEpoch
let attempt = 0
let arrivals = 0
let failedOpens = 0
const pendingUploads = []

function setState (name, text) {
  stateEl.className = `state ${name}`
  stateEl.textContent = text
}

function connect () {
  if (failedOpens >= FALLBACK_AFTER || new URLSearchParams(location.search).get('transport') === 'sse') return listen()
  const url = new URL(STREAM, location.href)
  url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:'
  resumeFrom(url)
  socket = new WebSocket(url, [PROTOCOL])
  socket.binaryType = 'arraybuffer'
  let opened = false
  socket.onopen = () => {
    opened = true
    failedOpens = 0
    setState('open', 'connected')
  }
  socket.onmessage = (message) => {
    attempt = 0 // only a connection that delivers resets the backoff, not one that is cut at once
    const data = JSON.parse(message.data)
    if (data.type === 'guest') showGuest(data)
    else if (data.type === 'resume') showResume(data)
    else if (data.type === 'gap') showGap(data)
    else if (data.type === 'ack') settleUpload(data, true)
    else if (data.type === 'error') settleUpload(data, false)
  }
  socket.onclose = (event) => {
    if (!opened) failedOpens++
    // Full jitter: a replica's clients, cut at once, do not all come back at once.
    const delay = Math.random() * Math.min(30000, 500 * 2 ** attempt++)
    setState('reconnecting', `disconnected (${event.code}), retrying in ${(delay / 1000).toFixed(1)} s`)
    for (const item of pendingUploads.splice(0)) item.el.textContent = `${item.name}: connection lost before the ack`
    setTimeout(connect, delay)
  }
}

/** EventSource: events only. It reconnects by itself, resuming with Last-Event-ID. */
function listen () {
  const url = new URL(STREAM, location.href)
  resumeFrom(url)
  const source = new EventSource(url)
  socket = undefined
  document.body.classList.add('receive-only')
  source.onopen = () => setState('open', 'connected (EventSource)')
  source.onmessage = (message) => {
    const data = JSON.parse(message.data)
    if (data.type === 'guest') showGuest(data)
  }
  source.addEventListener('resume', (message) => showResume(JSON.parse(message.data)))
  source.onerror = () => {
    if (source.readyState === EventSource.CONNECTING) setState('reconnecting', 'disconnected, reconnecting')
  }
}

/** Resume after the last event shown, naming its history (epoch), so a reset is noticed too. */
function resumeFrom (url) {
  if (lastId) url.searchParams.set('since', lastId)
  if (lastEpoch) url.searchParams.set('epoch', lastEpoch)
}

function showGuest (event) {
  lastId = event.id
  lastEpoch = event.epoch
  emptyEl.hidden = true
  countEl.textContent = `${++arrivals}`
  const li = document.createElement('li')
  const avatar = document.createElement('span')
  avatar.className = 'avatar'
  avatar.textContent = [...event.guest][0] ?? '?' // the family name comes first
  avatar.style.setProperty('--hue', String(hue(event.guest)))
  avatar.setAttribute('aria-hidden', 'true')
  const name = document.createElement('span')
  name.className = 'guest'
  name.textContent = event.guest
  const time = document.createElement('time')
  time.className = 'time'
  time.textContent = event.time
  li.append(avatar, name, time)
  li.dataset.id = event.id
  guestsEl.prepend(li)
  while (guestsEl.children.length > MAX_GUESTS) guestsEl.lastElementChild.remove()
}

/** A stable colour per name, so a returning name looks the same. */
function hue (text) {
  let h = 0
  for (const ch of text) h = (h * 31 + ch.codePointAt(0)) % 360
  return h
}

function showResume ({ replayed, lost }) {
  recoveredEl.hidden = false
  recoveredEl.textContent = lost
    ? `Reconnected: recovered ${replayed} events; some older ones were no longer in the history.`
    : `Reconnected: recovered ${replayed} missed event${replayed === 1 ? '' : 's'}.`
}

/** Events the server could not deliver and no history holds any more (a `gap` control message). */
function showGap ({ lost }) {
  recoveredEl.hidden = false
  recoveredEl.textContent = lost === null
    ? 'The event history was reset: some events may have been missed.'
    : `${lost} event${lost === 1 ? ' was' : 's were'} lost before they could be delivered.`
}

function upload (file) {
  if (!file) return
  const li = document.createElement('li')
  li.textContent = `${file.name}: uploading ${file.size} bytes…`
  uploadsEl.prepend(li)
  if (!socket || socket.readyState !== WebSocket.OPEN) {
    li.textContent = `${file.name}: ${document.body.classList.contains('receive-only') ? 'uploads need a WebSocket' : 'not connected'}`
    return
  }
  pendingUploads.push({ name: file.name, el: li })
  socket.send(file)
}

function settleUpload (message, ok) {
  const item = pendingUploads.shift()
  if (!item) return
  if (ok) {
    const saved = document.createElement('code')
    saved.textContent = message.id
    item.el.className = 'saved'
    item.el.replaceChildren(`${item.name} saved as `, saved, ` (${message.bytes} bytes, sha256 ${message.sha256.slice(0, 12)}…)`)
  } else {
    item.el.className = 'error'
    item.el.textContent = `${item.name} refused: ${message.message}`
  }
}

document.getElementById('say').addEventListener('submit', (e) => {
  e.preventDefault()
  const input = document.getElementById('text')
  if (input.value && socket?.readyState === WebSocket.OPEN) socket.send(input.value)
  input.value = ''
})
document.getElementById('file').addEventListener('change', (e) => {
  upload(e.target.files[0])
  e.target.value = ''
})
const drop = document.getElementById('drop')
drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over') })
drop.addEventListener('dragleave', () => drop.classList.remove('over'))
drop.addEventListener('drop', (e) => {
  e.preventDefault()
  drop.classList.remove('over')
  upload(e.dataTransfer.files[0])
})

connect()
