// The demo page's script: what it shows and the forms, nothing more. Connecting, reconnecting,
// resuming, the EventSource fallback and the way back are fastify-fanout/client's, served beside
// this file as fanout-client.js (the built dist/client/index.js). ?transport=sse in the page's URL
// receives over EventSource from the start. Plain browser JS, no build step.
'use strict'

const LIBRARY = new URL('fanout-client.js', document.currentScript.src).href
const MAX_GUESTS = 50
const MAX_MESSAGES = 200
const meta = (name) => document.querySelector(`meta[name="${name}"]`)?.content ?? ''
// The server writes the streams' paths, prefix included, into the page.
const STREAM = meta('fanout-stream')
const CHANNELS = meta('fanout-channels')
const ROOMS = meta('fanout-rooms') === 'on' && CHANNELS !== ''
const params = new URLSearchParams(location.search)
const settings = {
  transport: params.get('transport') === 'sse' ? 'eventsource' : undefined,
  probeMs: Number(params.get('probe')) || undefined
}
const RECEIVE_ONLY = 'Needs a WebSocket: WebSockets do not get through to the server now, so this page receives over EventSource, which only receives. It tries WebSockets again every little while.'
const $ = (id) => document.getElementById(id)
const stateEl = $('state')
const guestsEl = $('guests')
const recoveredEl = $('recovered')
const uploadsEl = $('uploads')
const countEl = $('count')
const me = `page-${Math.random().toString(36).slice(2, 6)}`

let guests
let rooms
let room
let arrivals = 0

function stateText ({ state, transport, code, retryInMs }) {
  if (state === 'open') return transport === 'eventsource' ? 'connected (EventSource)' : 'connected'
  if (state === 'reconnecting') {
    const why = code === undefined ? 'disconnected' : `disconnected (${code})`
    return retryInMs === undefined ? `${why}, reconnecting` : `${why}, retrying in ${(retryInMs / 1000).toFixed(1)} s`
  }
  return state === 'connecting' ? 'connecting…' : 'closed'
}

/** In EventSource mode what cannot work is switched off, with the reason beside it. */
function receiveOnly (on) {
  document.body.classList.toggle('receive-only', on)
  for (const el of [$('text'), document.querySelector('#say button'), $('file'), $('chat-text'), document.querySelector('#chat button')]) el.disabled = on
  for (const el of document.querySelectorAll('.why-off')) {
    el.hidden = !on
    el.textContent = RECEIVE_ONLY
  }
  const roomNote = $('room-note')
  if (on) note(roomNote, `Sending in the room: ${RECEIVE_ONLY}`)
  else if (roomNote.textContent.startsWith('Sending in the room')) roomNote.hidden = true
}

function note (el, text, gap = false) {
  el.hidden = false
  el.classList.toggle('gap', gap)
  el.textContent = text
}

function showGuest (event) {
  $('empty').hidden = true
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

/** A resume: how many events it recovered, and whether some were gone. */
function resumeText ({ replayed, lost }) {
  return lost
    ? `Reconnected: recovered ${replayed} events; some older ones were no longer in the history.`
    : `Reconnected: recovered ${replayed} missed event${replayed === 1 ? '' : 's'}.`
}

/** Events the server could not deliver and no history holds any more (a `gap`). */
function gapText ({ lost }) {
  return lost === null
    ? 'The event history was reset: some events may have been missed.'
    : `${lost} event${lost === 1 ? ' was' : 's were'} lost before they could be delivered.`
}

function upload (file) {
  if (!file) return
  const li = document.createElement('li')
  li.textContent = `${file.name}: uploading ${file.size} bytes…`
  uploadsEl.prepend(li)
  guests.upload(file).then((ack) => {
    const saved = document.createElement('code')
    saved.textContent = ack.id
    li.className = 'saved'
    li.replaceChildren(`${file.name} saved as `, saved, ` (${ack.bytes} bytes, sha256 ${ack.sha256.slice(0, 12)}…)`)
  }, (err) => {
    li.className = 'error'
    if (err.code === 'disconnected') li.textContent = `${file.name}: connection lost before the ack`
    else if (err.code === 'unsupported') li.textContent = `${file.name}: uploads need a WebSocket`
    else li.textContent = `${file.name} refused: ${err.message}`
  })
}

function showMessage (event) {
  const li = document.createElement('li')
  li.dataset.id = event.id
  if (event.from === me) li.className = 'mine'
  const from = document.createElement('span')
  from.className = 'from'
  from.textContent = String(event.from ?? '?')
  li.append(from, String(event.text ?? ''))
  const list = $('messages')
  list.append(li)
  while (list.children.length > MAX_MESSAGES) list.firstElementChild.remove()
  list.scrollTop = list.scrollHeight
}

/** Joins `room:<name>`: its history, then what every page in it says. */
function join (name) {
  rooms ??= createRoomClient()
  room?.unsubscribe()
  $('messages').replaceChildren()
  const roomNote = $('room-note')
  roomNote.hidden = document.body.classList.contains('receive-only') // its reason stays
  room = rooms.subscribe(`room:${name}`, {
    since: '0-0', // the room's history first (its namespace keeps the last 200)
    onEvent: showMessage,
    onGap: (gap) => note(roomNote, gapText(gap), true),
    onLost: (subscribed) => note(roomNote, resumeText(subscribed), true),
    onError: (err) => note(roomNote, `Cannot join: ${err.message}`, true)
  })
  $('chat').hidden = false
  $('chat-text').focus()
}

function createRoomClient () {
  const client = window.fanout.createClient({ url: CHANNELS, ...settings })
  client.on((notice) => {
    if (notice.type === 'error') return note($('room-note'), `The server refused: ${notice.error.message}`, true)
    $('room-state').textContent = stateText(notice)
    $('room-state').dataset.transport = notice.transport
  })
  return client
}

function start (library) {
  window.fanout = library
  guests = library.createClient({ url: STREAM, single: 'guest', ...settings })
  guests.on((notice) => {
    if (notice.type === 'error') return note(recoveredEl, `The server refused: ${notice.error.message}`, true)
    stateEl.className = `state ${notice.state}`
    stateEl.textContent = stateText(notice)
    stateEl.dataset.transport = notice.transport
    if (notice.state === 'open') receiveOnly(notice.transport === 'eventsource')
  })
  guests.subscribe('guest', {
    onEvent: showGuest,
    onGap: (gap) => note(recoveredEl, gapText(gap), true),
    // A single stream answers only a resume: each of these is a reconnect.
    onSubscribed: (resumed) => note(recoveredEl, resumeText(resumed), resumed.lost)
  })
  $('room').hidden = !ROOMS
}

$('say').addEventListener('submit', (e) => {
  e.preventDefault()
  const input = $('text')
  if (input.value) guests.send(input.value).catch((err) => note(recoveredEl, `Not sent: ${err.message}`, true))
  input.value = ''
})
$('file').addEventListener('change', (e) => {
  upload(e.target.files[0])
  e.target.value = ''
})
const drop = $('drop')
drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over') })
drop.addEventListener('dragleave', () => drop.classList.remove('over'))
drop.addEventListener('drop', (e) => {
  e.preventDefault()
  drop.classList.remove('over')
  upload(e.dataTransfer.files[0])
})
$('join').addEventListener('submit', (e) => {
  e.preventDefault()
  if ($('room-name').checkValidity()) join($('room-name').value)
})
$('chat').addEventListener('submit', (e) => {
  e.preventDefault()
  const input = $('chat-text')
  const text = input.value.trim()
  if (!text || !room) return
  input.value = ''
  rooms.publish(room.channel, { type: 'chat', text, from: me })
    .catch((err) => note($('room-note'), `Not sent (${err.code}): ${err.message}`, true))
})

import(LIBRARY).then(start, (err) => {
  stateEl.className = 'state closed'
  stateEl.textContent = `cannot load the client: ${err.message}`
})
