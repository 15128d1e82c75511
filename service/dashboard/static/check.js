// The check page: waveforms drawn by wavesurfer.js in the lanes the server laid out (the server
// places each lane so that matched spans line up), and playback from the aligned positions.
import WaveSurfer from './vendor/wavesurfer.js/wavesurfer.esm.js'

const OUTPUT = { waveColor: '#8796b4', progressColor: '#2c3d63' }
const REFERENCE = { waveColor: '#cfa06c', progressColor: '#7d4f1d' }
const players = []
const listeners = []

const clock = (s) => `${Math.floor(s / 60)}:${(s % 60).toFixed(1).padStart(4, '0')}`

function stopAll () {
  for (const ws of players) {
    ws.pause()
    ws.setMuted(false)
    ws.setPlaybackRate(1, true)
  }
}

// A waveform in `el`, loading `el.dataset.src`; a click on it plays from there.
function lane (el, colours, extra = {}) {
  const ws = WaveSurfer.create({
    container: el, url: el.dataset.src, height: el.clientHeight, normalize: true,
    cursorColor: '#11161f', cursorWidth: 1, ...colours, ...extra
  })
  ws.on('interaction', () => { stopAll(); ws.play() })
  ws.on('redrawcomplete', () => { el.dataset.drawn = 'true' })
  for (const event of ['play', 'pause', 'finish', 'timeupdate']) ws.on(event, () => listeners.forEach((f) => f()))
  players.push(ws)
  return ws
}

// One match: the output and the reference excerpt, buttons to play them from the matched span.
function pair (section, outputOptions) {
  const outEl = section.querySelector('.lane.output')
  const refEl = section.querySelector('.lane.reference')
  const output = outEl && outputOptions ? lane(outEl, OUTPUT, outputOptions) : null
  const reference = refEl ? lane(refEl, REFERENCE) : null
  const outputStart = Number(section.dataset.outputStart)
  const referenceStart = Number(section.dataset.referenceStart)
  const tempo = Number(section.dataset.tempo)
  const swap = section.querySelector('[data-play=swap]')
  const keyButton = section.querySelector('[data-play=key]')
  const display = section.querySelector('.clock')
  const recordedSrc = refEl?.dataset.src

  const show = () => {
    const now = [output?.isPlaying() && 'output', reference?.isPlaying() && 'reference'].filter(Boolean)
    section.dataset.playing = now.length === 2 ? 'both' : (now[0] || '')
    if (output) section.dataset.outputTime = output.getCurrentTime().toFixed(2)
    if (reference) section.dataset.referenceTime = reference.getCurrentTime().toFixed(2)
    if (swap) swap.disabled = now.length !== 2
    display.textContent = now.length
      ? [output && `output ${clock(output.getCurrentTime())}`,
          reference && `reference excerpt ${clock(reference.getCurrentTime())}`].filter(Boolean).join(' · ')
      : ''
  }
  listeners.push(show)

  const actions = {
    output () { stopAll(); output.play(outputStart) },
    reference () { stopAll(); reference.play(referenceStart) },
    both () {
      // In step: the reference runs `tempo` reference seconds per output second; the A/B
      // button switches which of the two is heard.
      stopAll()
      reference.setPlaybackRate(tempo, true)
      reference.setMuted(true)
      swap.textContent = 'A/B: hear reference'
      output.play(outputStart)
      reference.play(referenceStart)
    },
    swap () {
      const hearReference = reference.getMuted()
      reference.setMuted(!hearReference)
      output.setMuted(hearReference)
      swap.textContent = hearReference ? 'A/B: hear output' : 'A/B: hear reference'
    },
    key () {
      // A re-performance in another key: the reference transposed to the output's (the server
      // shifts its pitch, keeping its tempo), or back as recorded.
      stopAll()
      const toOutput = section.dataset.key === 'recorded'
      section.dataset.key = toOutput ? 'output' : 'recorded'
      keyButton.textContent = keyButton.dataset[section.dataset.key]
      refEl.dataset.src = toOutput ? `${recordedSrc}?shift=${section.dataset.shift}` : recordedSrc
      refEl.dataset.drawn = 'false'
      reference.load(refEl.dataset.src)
    },
    stop: stopAll
  }
  const needs = { output: [output], reference: [reference], both: [output, reference], key: [reference] }
  for (const button of section.querySelectorAll('[data-play]')) {
    button.disabled ||= !(needs[button.dataset.play] || []).every(Boolean)
    button.addEventListener('click', () => actions[button.dataset.play]())
  }
}

const overviewEl = document.getElementById('overview')
const matches = [...document.querySelectorAll('section.match')]
if (overviewEl) {
  // The output is fetched and decoded once; the match lanes reuse its peaks.
  const overview = lane(overviewEl, OUTPUT)
  overview.once('decode', (duration) => {
    const peaks = overview.exportPeaks({ maxLength: 16000 })
    matches.forEach((section) => pair(section, { peaks, duration }))
  })
  overview.once('error', () => matches.forEach((section) => pair(section, null)))
} else {
  matches.forEach((section) => pair(section, null))
}
