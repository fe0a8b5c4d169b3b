// Artillery processor for websocket-test.yml: NIP-42 authentication and signed Nostr events
// (nostr-tools), so the scenario exercises the relay as real clients do.
//
// Every virtual user gets its own key. Messages the relay sends are queued per connection
// from the moment the first step runs, so the AUTH challenge sent on connect is not missed.

'use strict';

const { generateSecretKey, getPublicKey, finalizeEvent } = require('nostr-tools');
const crypto = require('crypto');

// One group for the whole run, so subscribers see the publishers' messages.
const GROUP = process.env.GROUP || crypto.createHash('sha256').update('artillery-group').digest('hex');
const TIMEOUT_MS = 10000;

function inbox(context) {
  if (!context.nostr) {
    const box = { queue: [], waiters: [] };
    context.ws.on('message', (data) => {
      let msg;
      try {
        msg = JSON.parse(data.toString());
      } catch (_) {
        return;
      }
      const i = box.waiters.findIndex((w) => w.want(msg));
      if (i >= 0) {
        const [w] = box.waiters.splice(i, 1);
        clearTimeout(w.timer);
        w.resolve(msg);
      } else {
        box.queue.push(msg);
        if (box.queue.length > 1000) box.queue.shift();
      }
    });
    context.nostr = box;
  }
  return context.nostr;
}

/** Resolves with the first message (already received or coming) for which `want` is true. */
function waitFor(context, want) {
  const box = inbox(context);
  const i = box.queue.findIndex(want);
  if (i >= 0) return Promise.resolve(box.queue.splice(i, 1)[0]);
  return new Promise((resolve, reject) => {
    const w = { want, resolve };
    w.timer = setTimeout(() => {
      box.waiters.splice(box.waiters.indexOf(w), 1);
      reject(new Error('timed out waiting for the relay'));
    }, TIMEOUT_MS);
    box.waiters.push(w);
  });
}

function relayUrl(context) {
  return process.env.RELAY_URL || context.vars.target;
}

/** NIP-42: answers the relay's AUTH challenge with a signed kind-22242 event. */
function authenticate(context, events, done) {
  const sk = generateSecretKey();
  context.vars.sk = sk;
  context.vars.pubkey = getPublicKey(sk);
  const started = Date.now();
  const challengeSeen = waitFor(context, (m) => m[0] === 'AUTH');
  challengeSeen
    .then((m) => {
      const auth = finalizeEvent(
        {
          kind: 22242,
          created_at: Math.floor(Date.now() / 1000),
          tags: [
            ['relay', relayUrl(context)],
            ['challenge', m[1]],
          ],
          content: '',
        },
        sk
      );
      context.ws.send(JSON.stringify(['AUTH', auth]));
      return waitFor(context, (r) => r[0] === 'OK' && r[1] === auth.id);
    })
    .then((ok) => {
      if (ok[2] !== true) throw new Error(`AUTH refused: ${ok[3]}`);
      events.emit('histogram', 'nostr.auth_ms', Date.now() - started);
      done();
    })
    .catch((err) => done(err));
}

/** Publishes one kind-445 group message (fresh ephemeral key, as MDK does) and waits for OK. */
function publishGroupMessage(context, events, done) {
  const ev = finalizeEvent(
    {
      kind: 445,
      created_at: Math.floor(Date.now() / 1000),
      tags: [
        ['h', GROUP],
        ['encoding', 'base64'],
      ],
      content: crypto.randomBytes(384).toString('base64'),
    },
    generateSecretKey()
  );
  const started = Date.now();
  context.ws.send(JSON.stringify(['EVENT', ev]));
  waitFor(context, (m) => m[0] === 'OK' && m[1] === ev.id)
    .then((ok) => {
      events.emit('histogram', 'nostr.ok_ms', Date.now() - started);
      events.emit('counter', ok[2] === true ? 'nostr.accepted' : 'nostr.refused', 1);
      done();
    })
    .catch((err) => done(err));
}

/** Subscribes to the group's messages and waits for EOSE. */
function subscribeGroup(context, events, done) {
  const sub = `s${Math.random().toString(36).slice(2, 10)}`;
  context.vars.sub = sub;
  const started = Date.now();
  context.ws.send(JSON.stringify(['REQ', sub, { kinds: [445], '#h': [GROUP], limit: 10 }]));
  waitFor(context, (m) => (m[0] === 'EOSE' || m[0] === 'CLOSED') && m[1] === sub)
    .then((m) => {
      if (m[0] === 'CLOSED') throw new Error(`subscription refused: ${m[2]}`);
      events.emit('histogram', 'nostr.eose_ms', Date.now() - started);
      done();
    })
    .catch((err) => done(err));
}

/** Counts the live group messages received so far, then closes the subscription. */
function closeSubscription(context, events, done) {
  const box = inbox(context);
  const live = box.queue.filter((m) => m[0] === 'EVENT' && m[1] === context.vars.sub).length;
  events.emit('counter', 'nostr.live_events_received', live);
  context.ws.send(JSON.stringify(['CLOSE', context.vars.sub]));
  done();
}

module.exports = { authenticate, publishGroupMessage, subscribeGroup, closeSubscription };
