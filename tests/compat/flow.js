'use strict';

// Drives the real, unchanged `chat-client` 1.0.3 package against a running
// chatserver that uses examples/custom_storage.py (users alice, bob and carol,
// group "team" = alice + bob).
//
// Usage: node flow.js ws://127.0.0.1:4001
//
// Prints one JSON object per step on stdout, e.g.
//   {"step":"direct-message","ok":true,"details":{...}}
// and stops at the first failing step with {"step":...,"ok":false,"error":"..."}
// and exit code 1. Every frame sent and received is traced on stderr.

// chat-client is a browser client: it expects a global WebSocket.
global.WebSocket = require('ws');
const ChatClient = require('chat-client');

const url = process.argv[2];
const WAIT_MS = Number(process.env.FLOW_WAIT_MS || 5000); // one reply, push or close
const STEP_MS = Number(process.env.FLOW_STEP_MS || 30000); // a whole step
// FLOW_TOKENS (JSON) gives the tokens of a store provisioned otherwise, e.g. by the admin CLI.
const TOKENS = process.env.FLOW_TOKENS
  ? JSON.parse(process.env.FLOW_TOKENS)
  : { alice: 'alice-token', bob: 'bob-token', carol: 'carol-token' };

if (!url) {
  console.error('usage: node flow.js ws://HOST:PORT');
  process.exit(2);
}

class StepFailure extends Error {}

function check(condition, message, got) {
  if (!condition) {
    throw new StepFailure(got === undefined ? message : `${message} (got ${JSON.stringify(got)})`);
  }
}

// Resolve with `promise`, or reject once `ms` have passed.
function within(promise, what, ms = WAIT_MS) {
  let timer;
  const timeout = new Promise((resolve, reject) => {
    timer = setTimeout(
      () => reject(new StepFailure(`timed out after ${ms} ms waiting for ${what}`)),
      ms,
    );
  });
  return Promise.race([Promise.resolve(promise), timeout]).finally(() => clearTimeout(timer));
}

// A request that must fail: resolve with the error chat-client rejected with.
async function expectError(promise, code, what) {
  let data;
  try {
    data = await within(promise, `the reply to ${what}`);
  } catch (err) {
    if (err instanceof StepFailure) throw err;
    check(err === code, `${what}: expected error ${JSON.stringify(code)}`, err);
    return err;
  }
  throw new StepFailure(`${what}: expected error ${JSON.stringify(code)}, but it succeeded with ${JSON.stringify(data)}`);
}

// Open a ChatClient and record every push it gets, so that a step can wait
// for a push that may already have arrived. (chat-client's off() removes the
// wrong listeners, so listeners are added once and never removed.)
async function connect(name) {
  const client = new ChatClient({ url, onError: () => {} });
  client.name = name;
  client.pushes = [];
  client.waiters = [];
  for (const type of ['chatMessage', 'messageRead']) {
    client.on(type, (data) => {
      const push = { type, data };
      client.pushes.push(push);
      client.waiters.slice().forEach((waiter) => waiter(push));
    });
  }
  const opened = new Promise((resolve, reject) => {
    client.whenOpened(resolve);
    client.on('error', () => reject(new StepFailure(`${name} could not connect to ${url}`)));
  });
  await within(opened, `${name}'s socket to open`);
  trace(client);
  return client;
}

function trace(client) {
  const socket = client.socket;
  const send = socket.send.bind(socket);
  socket.send = (data, ...rest) => {
    console.error(`${client.name} -> ${data}`);
    return send(data, ...rest);
  };
  client.on('message', (frame) => console.error(`${client.name} <- ${JSON.stringify(frame)}`));
  socket.on('close', (code, reason) => console.error(`${client.name} closed: ${code} ${reason}`));
}

function nextPush(client, type, matches, what) {
  const found = new Promise((resolve) => {
    const earlier = client.pushes.find((p) => p.type === type && matches(p.data));
    if (earlier) return resolve(earlier.data);
    const waiter = (push) => {
      if (push.type === type && matches(push.data)) {
        client.waiters.splice(client.waiters.indexOf(waiter), 1);
        resolve(push.data);
      }
    };
    client.waiters.push(waiter);
  });
  return within(found, `${client.name}'s ${type} push (${what})`);
}

function request(promise, what) {
  return within(promise, `the reply to ${what}`).catch((err) => {
    if (err instanceof StepFailure) throw err;
    throw new StepFailure(`${what} was rejected with ${JSON.stringify(err)}`);
  });
}

const ids = (messages) => messages.map((m) => m._id);
const sameList = (a, b) => JSON.stringify(a) === JSON.stringify(b);

const clients = {};
const users = {};
const sent = {};

const steps = [
  ['connect', async () => {
    for (const name of Object.keys(TOKENS)) clients[name] = await connect(name);
    return { connected: Object.keys(clients) };
  }],

  ['authorize', async () => {
    for (const [name, token] of Object.entries(TOKENS)) {
      const user = await request(clients[name].authorize({ token }), `${name}'s authorize`);
      check(user && (typeof user.id === 'string' || typeof user._id === 'string'),
        `${name}'s authorize reply must be a user object with an id`, user);
      users[name] = user.id || user._id;
    }
    return { users };
  }],

  ['authorize-rejected', async () => {
    const mallory = await connect('mallory');
    try {
      const error = await expectError(mallory.authorize({ token: 'wrong-token' }),
        'authorizationFailed', 'authorize with a bad token');
      return { error };
    } finally {
      mallory.close();
    }
  }],

  ['direct-message', async () => {
    const { alice, bob } = clients;
    const text = 'hello bob';
    const reply = await request(alice.send({ to: users.bob, text }), 'alice sending bob a message');
    check(typeof reply._id === 'string' && reply._id, 'the reply must carry a string _id', reply);
    check(reply.from === users.alice, 'the stored message must be from alice', reply);
    check(reply.to === users.bob && reply.text === text, 'the stored message must keep to and text', reply);
    check(typeof reply.createdAt === 'string' && !Number.isNaN(Date.parse(reply.createdAt)),
      'the stored message must have an ISO createdAt', reply);
    const toBob = await nextPush(bob, 'chatMessage', (m) => m._id === reply._id, 'the direct message');
    check(toBob.text === text && toBob.from === users.alice, 'bob must get the stored message', toBob);
    await nextPush(alice, 'chatMessage', (m) => m._id === reply._id, 'her own direct message');
    sent.direct = [reply];
    return { _id: reply._id, createdAt: reply.createdAt, bobGot: toBob._id };
  }],

  ['read', async () => {
    const { alice, bob, carol } = clients;
    const message = sent.direct[0];
    await expectError(alice.read(message._id), 'notFound', 'the sender reading her own message');
    await expectError(carol.read(message._id), 'notFound', 'carol reading a message to bob');
    const updated = await request(bob.read(message._id), "bob's read(msg._id)");
    check(updated && updated._id === message._id && updated.read === true,
      'the read reply must be the message with read: true', updated);
    const push = await nextPush(alice, 'messageRead', (m) => m._id === message._id, 'bob read it');
    check(push.read === true, 'the messageRead push must show read: true', push);
    return { read: updated.read, aliceNotified: push._id };
  }],

  ['group-message', async () => {
    const { alice, bob } = clients;
    const reply = await request(alice.send({ to: 'team', isGroup: true, text: 'hello team' }),
      'alice sending to the group');
    check(typeof reply._id === 'string' && reply.isGroup === true && reply.to === 'team',
      'the reply must be the stored group message', reply);
    check(reply.from === users.alice, 'the group message must be from alice', reply);
    const toBob = await nextPush(bob, 'chatMessage', (m) => m._id === reply._id, 'the group message');
    await nextPush(alice, 'chatMessage', (m) => m._id === reply._id, 'her own group message');
    const updated = await request(bob.read({ id: reply._id }), "bob's read({id})");
    check(Array.isArray(updated.readBy) && updated.readBy.includes(users.bob),
      'a read group message must list bob in readBy', updated);
    await nextPush(alice, 'messageRead', (m) => m._id === reply._id, 'bob read the group message');
    sent.group = [reply];
    return { _id: reply._id, bobGot: toBob._id, readBy: updated.readBy };
  }],

  ['group-non-member', async () => {
    const error = await expectError(
      clients.carol.send({ to: 'team', isGroup: true, text: 'let me in' }),
      'notGroupMember', 'carol sending to a group she is not in');
    return { error };
  }],

  ['client-message-id', async () => {
    const message = { to: users.alice, text: 'sent twice', clientMessageId: 'bob-retry-1' };
    const first = await request(clients.bob.send(message), 'bob sending with a clientMessageId');
    const second = await request(clients.bob.send(message), 'bob resending the same clientMessageId');
    check(first._id === second._id, 'a resent clientMessageId must return the first stored message',
      { first: first._id, second: second._id });
    sent.direct.push(first);
    return { _id: first._id };
  }],

  ['history-direct', async () => {
    const { alice, bob } = clients;
    const third = await request(alice.send({ to: users.bob, text: 'third' }), 'a third direct message');
    sent.direct.push(third);
    const expected = ids(sent.direct).reverse();

    const all = await request(alice.getMessages({ with: users.bob }), "alice's getMessages");
    check(Array.isArray(all), 'getMessages must return a list', all);
    check(sameList(ids(all), expected), `alice's history must be ${JSON.stringify(expected)} (newest first)`, ids(all));
    const bobs = await request(bob.getMessages({ with: users.alice, limit: 10, skip: 0 }), "bob's getMessages");
    check(sameList(ids(bobs), expected), "bob's history must match alice's", ids(bobs));
    const page = await request(alice.getMessages({ with: users.bob, limit: 1, skip: 1 }),
      'getMessages with limit 1, skip 1');
    check(sameList(ids(page), expected.slice(1, 2)), 'limit 1 skip 1 must give the second newest', ids(page));
    const newest = await request(alice.getMessages({ with: users.bob, limit: 2 }), 'getMessages with limit 2');
    check(sameList(ids(newest), expected.slice(0, 2)), 'limit 2 must give the two newest', ids(newest));
    check(all.every((m) => !m.isGroup), 'direct history must not contain group messages', all);
    return { newestFirst: ids(all), page: ids(page) };
  }],

  ['history-group', async () => {
    const { bob, carol } = clients;
    const second = await request(bob.send({ to: 'team', isGroup: true, text: 'hi all' }),
      'bob sending to the group');
    sent.group.push(second);
    const expected = ids(sent.group).reverse();
    const all = await request(bob.getMessages({ with: 'team', isGroup: true }), "bob's group getMessages");
    check(sameList(ids(all), expected), `the group history must be ${JSON.stringify(expected)}`, ids(all));
    const page = await request(clients.alice.getMessages({ with: 'team', isGroup: true, limit: 1, skip: 1 }),
      'group getMessages with limit 1, skip 1');
    check(sameList(ids(page), expected.slice(1)), 'limit 1 skip 1 must give the older group message', ids(page));
    const error = await expectError(carol.getMessages({ with: 'team', isGroup: true }),
      'notGroupMember', "carol's group getMessages");
    return { newestFirst: ids(all), nonMember: error };
  }],

  ['invalid-message', async () => {
    const error = await expectError(clients.alice.send({ text: 'to nobody' }),
      'invalidMessage', 'create without to');
    return { error };
  }],

  ['unknown-action', async () => {
    const error = await expectError(clients.alice.run('noSuchAction', { x: 1 }),
      'unknownAction', 'an unknown action');
    return { error };
  }],

  ['no-stray-pushes', async () => {
    const stray = clients.carol.pushes;
    check(stray.length === 0, 'carol must get no pushes for conversations she is not in', stray);
    return { carolPushes: 0 };
  }],

  ['unauthorized-close', async () => {
    const eve = await connect('eve');
    const closed = new Promise((resolve) => {
      eve.socket.on('close', (code, reason) => resolve({ code, reason: reason.toString() }));
    });
    const answered = eve.getMessages({ with: users.alice }).then(
      (data) => ({ data }), (error) => ({ error }));
    const result = await within(Promise.race([closed, answered]), 'the server to close the socket');
    check(result.code !== undefined, 'the server must close the socket, not reply', result);
    check(result.code === 1008, 'the close code must be 1008 (policy violation)', result);
    return result;
  }],
];

async function main() {
  let failed = false;
  for (const [step, run] of steps) {
    try {
      const details = await within(run(), `step ${step}`, STEP_MS);
      console.log(JSON.stringify({ step, ok: true, details }));
    } catch (err) {
      const error = err instanceof StepFailure ? err.message : (err && err.stack) || String(err);
      console.log(JSON.stringify({ step, ok: false, error }));
      console.error(`chat-client flow failed at step "${step}": ${error}`);
      failed = true;
      break;
    }
  }
  Object.values(clients).forEach((client) => client.close());
  process.exit(failed ? 1 : 0);
}

main();
