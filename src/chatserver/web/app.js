// The chatserver browser demo: speaks the wire protocol over one WebSocket.
// Requests {type, data, id} get replies {id, data} or {id, error, message};
// pushes {type, data} carry new messages (chatMessage) and read receipts (messageRead).
"use strict";

const PAGE = 30; // messages per getMessages page
const MIN_BACKOFF = 500; // ms before the first reconnection attempt
const MAX_BACKOFF = 5000;
const DIRECTORY_REFRESH = 10000; // ms between getUsersAndGroups refreshes
const READS_IN_FLIGHT = 4; // read requests sent at once
const CREDENTIALS_KEY = "chatserver.credentials";

const ERROR_TEXT = {
  rateLimited: "You are sending too fast — slow down",
  notGroupMember: "You are not a member of this group",
  tooLarge: "That message is too long",
  storageError: "The server could not save that — try again",
  storageTimeout: "The server took too long to answer — try again",
  invalidMessage: "That message could not be sent",
  invalidQuery: "The server did not understand that request",
  authorizationFailed: "Sign-in failed — check your name or token",
  notFound: "That message does not exist any more",
  unknownAction: "This server does not support that (is it up to date?)",
  actionFailed: "The server could not do that",
  internalError: "Something went wrong on the server",
  disconnected: "Not connected — waiting for the server",
};

const $ = (id) => document.getElementById(id);
const el = (tag, className, text) => {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
};

const state = {
  ws: null,
  nextId: 1,
  pending: new Map(), // request id -> {resolve, reject}
  backoff: MIN_BACKOFF,
  reconnectTimer: null,
  serverInfo: null,
  pendingCredentials: null, // typed in the sign-in form, not yet accepted
  me: null, // my user id once authorized
  users: [],
  groups: [],
  unread: new Map(), // conversation key -> count
  outbox: new Map(), // clientMessageId -> message not yet acknowledged
  conv: null, // the open conversation
  readSent: new Set(), // message ids we asked the server to mark read
  known: new Map(), // user id -> name, for everyone listed or talked to
};

// -- connection ----------------------------------------------------------

function wsUrl() {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
}

function setStatus(name, text) {
  $("status").dataset.state = name;
  $("status").textContent = text;
}

function connect() {
  clearTimeout(state.reconnectTimer);
  if (state.ws && state.ws.readyState <= WebSocket.OPEN) return;
  const ws = new WebSocket(wsUrl());
  state.ws = ws;
  ws.onopen = opened;
  ws.onmessage = (event) => ws === state.ws && received(JSON.parse(event.data));
  ws.onclose = (event) => ws === state.ws && closed(event);
}

function request(type, data) {
  const ws = state.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) {
    return Promise.reject(chatError("disconnected"));
  }
  const id = state.nextId++;
  ws.send(JSON.stringify({ type, data, id }));
  return new Promise((resolve, reject) => state.pending.set(id, { resolve, reject }));
}

function chatError(code, message) {
  return Object.assign(new Error(message || ERROR_TEXT[code] || code), { code });
}

function describe(error) {
  return ERROR_TEXT[error.code] || error.message || String(error);
}

function received(frame) {
  if (frame.type === "chatMessage") return onChatMessage(frame.data);
  if (frame.type === "messageRead") return onMessageRead(frame.data);
  const waiting = state.pending.get(frame.id);
  if (!waiting) return;
  state.pending.delete(frame.id);
  if (frame.error) waiting.reject(chatError(frame.error, frame.message));
  else waiting.resolve(frame.data);
}

async function opened() {
  try {
    state.serverInfo = await request("serverInfo", {});
    $("server-version").textContent = `chatserver ${state.serverInfo.version || ""}`;
    $("name-field").hidden = !state.serverInfo.devAuth;
    $("token-field").hidden = Boolean(state.serverInfo.devAuth);
    const credentials = state.pendingCredentials || savedCredentials();
    if (credentials) await signIn(credentials);
    else showSignIn();
  } catch (error) {
    if (error.code !== "disconnected") showError(describe(error));
  }
}

function closed(event) {
  for (const { reject } of state.pending.values()) reject(chatError("disconnected"));
  state.pending.clear();
  state.ws = null;
  if (state.me && event.code === 1008) showError(closeReason(event.reason));
  // Someone at the sign-in form gets a new connection when they sign in (the
  // server closes connections that take too long to authorize).
  const wanted = !state.serverInfo || state.me || state.pendingCredentials || savedCredentials();
  if (!wanted) {
    if ($("sign-in-view").hidden) setStatus("offline", "Not connected");
    return;
  }
  setStatus("reconnecting", "Reconnecting…");
  const delay = state.backoff * (0.8 + 0.4 * Math.random());
  state.backoff = Math.min(state.backoff * 2, MAX_BACKOFF);
  state.reconnectTimer = setTimeout(connect, delay);
}

function closeReason(reason) {
  if (/rate limit/.test(reason)) return "You were disconnected for sending too fast";
  if (/too many connections/.test(reason)) return "You have too many tabs open for this user";
  return `The server closed the connection${reason ? `: ${reason}` : ""}`;
}

// -- signing in ----------------------------------------------------------

function savedCredentials() {
  try {
    return JSON.parse(sessionStorage.getItem(CREDENTIALS_KEY));
  } catch {
    return null;
  }
}

async function signIn(credentials) {
  let user;
  try {
    user = await request("authorize", credentials);
  } catch (error) {
    if (error.code === "disconnected") return; // retried on reconnection
    state.pendingCredentials = null;
    sessionStorage.removeItem(CREDENTIALS_KEY);
    showSignIn();
    showError(describe(error));
    return;
  }
  state.pendingCredentials = null;
  sessionStorage.setItem(CREDENTIALS_KEY, JSON.stringify(credentials));
  state.me = String(user.id ?? user._id);
  state.backoff = MIN_BACKOFF;
  $("me-name").textContent = user.name || state.me;
  $("whoami").hidden = false;
  $("sign-in-view").hidden = true;
  $("chat-view").hidden = false;
  setStatus("connected", "Connected");
  await refreshDirectory();
  if (state.conv) await openConversation(state.conv.id, state.conv.isGroup);
  for (const message of state.outbox.values()) send(message);
}

function showSignIn() {
  $("chat-view").hidden = true;
  $("whoami").hidden = true;
  $("sign-in-view").hidden = false;
  setStatus("signed-out", "Signed out");
  (state.serverInfo?.devAuth ? $("sign-in-name") : $("sign-in-token")).focus();
}

$("sign-in-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const credentials = state.serverInfo?.devAuth
    ? { name: $("sign-in-name").value.trim() }
    : { token: $("sign-in-token").value.trim() };
  if (!Object.values(credentials)[0]) return;
  state.pendingCredentials = credentials;
  if (state.ws?.readyState === WebSocket.OPEN && state.serverInfo) signIn(credentials);
  else {
    setStatus("connecting", "Connecting…");
    connect();
  }
});

$("sign-out").addEventListener("click", () => {
  sessionStorage.removeItem(CREDENTIALS_KEY);
  Object.assign(state, { me: null, conv: null, pendingCredentials: null });
  for (const collection of [state.outbox, state.unread, state.known, state.readSent]) {
    collection.clear();
  }
  state.ws?.close(1000, "signed out");
  $("messages").replaceChildren();
  showSignIn();
});

// -- people and groups ---------------------------------------------------

const keyOf = (id, isGroup) => `${isGroup ? "g" : "u"}:${id}`;

async function refreshDirectory() {
  if (!state.me) return;
  try {
    const { users, groups } = await request("getUsersAndGroups", {});
    state.users = users.filter((user) => String(user.id) !== state.me);
    // People we talked to stay listed (offline) when the server forgets them.
    const listed = new Set(state.users.map((user) => String(user.id)));
    for (const [id, name] of state.known) {
      if (!listed.has(id)) state.users.push({ id, name, online: false });
    }
    for (const user of state.users) state.known.set(String(user.id), user.name);
    state.groups = groups;
    renderDirectory();
  } catch (error) {
    if (error.code !== "disconnected") showError(describe(error));
  }
}

function renderDirectory() {
  const entry = (id, name, isGroup, online) => {
    const key = keyOf(id, isGroup);
    const button = el("button", "contact");
    button.type = "button";
    button.dataset.key = key;
    if (state.conv?.key === key) button.setAttribute("aria-current", "true");
    if (isGroup) {
      button.append(el("span", "hash", "#"));
      button.lastChild.setAttribute("aria-hidden", "true");
    } else {
      button.append(el("span", `dot ${online ? "online" : ""}`));
      button.append(el("span", "visually-hidden", online ? "online: " : "offline: "));
    }
    button.append(el("span", "name", name || id));
    const unread = state.unread.get(key);
    if (unread) {
      button.append(el("span", "badge", `${unread}`), el("span", "visually-hidden", " unread"));
    }
    button.addEventListener("click", () => openConversation(String(id), isGroup));
    const item = el("li");
    item.append(button);
    return item;
  };
  $("users").replaceChildren(...state.users.map((u) => entry(u.id, u.name, false, u.online)));
  $("groups").replaceChildren(...state.groups.map((g) => entry(g.id, g.name, true)));
  $("no-groups").hidden = state.groups.length > 0;
}

function nameOf(id, isGroup) {
  const list = isGroup ? state.groups : state.users;
  return list.find((entry) => String(entry.id) === id)?.name || id;
}

setInterval(() => state.ws?.readyState === WebSocket.OPEN && refreshDirectory(), DIRECTORY_REFRESH);

$("new-chat-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const id = $("new-chat-id").value.trim();
  if (id && id !== state.me) {
    if (!state.known.has(id)) state.known.set(id, id);
    refreshDirectory();
    openConversation(id, false);
  }
  $("new-chat-id").value = "";
});

// -- a conversation ------------------------------------------------------

async function openConversation(id, isGroup) {
  const conv = { id, isGroup, key: keyOf(id, isGroup), items: new Map(), done: false };
  state.conv = conv;
  state.unread.delete(conv.key);
  renderDirectory();
  $("conversation-title").textContent = isGroup ? `# ${nameOf(id, true)}` : nameOf(id, false);
  $("messages").replaceChildren();
  $("message-text").disabled = false;
  $("composer").querySelector("button").disabled = false;
  $("message-text").focus();
  $("messages").setAttribute("aria-busy", "true"); // no announcing the whole history
  const page = await history(conv, 0);
  if (state.conv !== conv) return;
  $("messages").removeAttribute("aria-busy");
  if (!page) return;
  page.forEach((message) => show(message, "end"));
  for (const message of state.outbox.values()) {
    if (belongsTo(message, conv)) show(message, "end");
  }
  scrollToBottom();
}

async function history(conv, skip) {
  const query = { with: conv.id, skip, limit: PAGE };
  if (conv.isGroup) query.isGroup = true;
  try {
    const page = await request("getMessages", query);
    conv.done = page.length < PAGE;
    if (state.conv === conv) $("load-older").hidden = conv.done;
    return page.reverse(); // oldest first
  } catch (error) {
    if (error.code !== "disconnected") showError(describe(error));
    return null;
  }
}

async function loadOlder() {
  const conv = state.conv;
  if (!conv || conv.done || conv.loading) return;
  conv.loading = true;
  $("messages").setAttribute("aria-busy", "true");
  const stored = [...conv.items.values()].filter((item) => item.message._id).length;
  const page = await history(conv, stored);
  conv.loading = false;
  if (state.conv !== conv) return;
  $("messages").removeAttribute("aria-busy");
  if (!page) return;
  const scroller = $("scroller");
  const fromBottom = scroller.scrollHeight - scroller.scrollTop;
  page.reverse().forEach((message) => show(message, "start"));
  scroller.scrollTop = scroller.scrollHeight - fromBottom; // stay where the reader was
}

$("scroller").addEventListener("scroll", () => $("scroller").scrollTop < 40 && loadOlder());
$("load-older").addEventListener("click", loadOlder);

function belongsTo(message, conv) {
  if (Boolean(message.isGroup) !== conv.isGroup) return false;
  if (conv.isGroup) return String(message.to) === conv.id;
  const other = String(message.from) === state.me ? String(message.to) : String(message.from);
  return other === conv.id;
}

// One list item per message: our own unacknowledged copy and the stored one
// share a key (sender and clientMessageId), so the copy is replaced in place.
const itemKey = (m) => (m.clientMessageId ? `c:${m.from}:${m.clientMessageId}` : `i:${m._id}`);

function show(message, where) {
  const conv = state.conv;
  const key = itemKey(message);
  let item = conv.items.get(key);
  if (!item) {
    item = { node: el("li") };
    conv.items.set(key, item);
    if (where === "start") $("messages").prepend(item.node);
    else $("messages").append(item.node);
  }
  item.message = message;
  render(item);
  markRead(message);
}

function render({ node, message }) {
  const mine = String(message.from) === state.me;
  node.className = `message ${mine ? "mine" : "theirs"}${message.failed ? " failed" : ""}`;
  node.dataset.id = message._id || "";
  const parts = [];
  if (!mine && message.isGroup) {
    parts.push(el("span", "from", nameOf(String(message.from), false)));
  }
  parts.push(el("p", "text", message.text ?? ""));
  const meta = el("span", "meta");
  if (message.createdAt) {
    const when = new Date(message.createdAt);
    const hhmm = when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    const time = el("time", "", hhmm);
    time.dateTime = message.createdAt;
    time.title = when.toLocaleString();
    meta.append(time);
  }
  if (mine) meta.append(el("span", "receipt", receipt(message)));
  if (message.failed) {
    const retry = el("button", "link", "Retry");
    retry.type = "button";
    retry.addEventListener("click", () => send(message));
    meta.append(retry);
  }
  parts.push(meta);
  node.replaceChildren(...parts);
}

function receipt(message) {
  if (message.failed) return "not sent";
  if (!message._id) return "sending…";
  if (message.isGroup) {
    const readers = (message.readBy || []).length;
    return readers ? `read by ${readers}` : "sent";
  }
  return message.read ? "✓ read" : "sent";
}

// Messages from others are marked read once shown (while the page is visible),
// a few requests at a time so that a long unread history stays under the rate limit.
const readQueue = [];
let readsInFlight = 0;

function markRead(message) {
  const id = message._id;
  if (!id || String(message.from) === state.me || document.visibilityState !== "visible") return;
  if (message.isGroup ? (message.readBy || []).includes(state.me) : message.read) return;
  if (state.readSent.has(id)) return;
  state.readSent.add(id);
  readQueue.push(id);
  pumpReads();
}

function pumpReads() {
  while (readsInFlight < READS_IN_FLIGHT && readQueue.length) {
    const id = readQueue.shift();
    readsInFlight++;
    request("read", { id })
      .catch((error) => {
        state.readSent.delete(id); // tried again when next shown
        if (!["disconnected", "rateLimited"].includes(error.code)) showError(describe(error));
      })
      .finally(() => {
        readsInFlight--;
        pumpReads();
      });
  }
}

document.addEventListener("visibilitychange", () => {
  for (const item of state.conv?.items.values() || []) markRead(item.message);
});

function scrollToBottom() {
  $("scroller").scrollTop = $("scroller").scrollHeight;
}

function nearBottom() {
  const s = $("scroller");
  return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
}

// -- sending and receiving -----------------------------------------------

function newClientMessageId() {
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("message-text").value.trim();
  if (!text || !state.conv) return;
  $("message-text").value = "";
  const { id: to, isGroup } = state.conv;
  const message = { to, text, clientMessageId: newClientMessageId(), from: state.me };
  if (isGroup) message.isGroup = true;
  state.outbox.set(message.clientMessageId, message);
  show(message, "end");
  scrollToBottom();
  send(message);
});

async function send(message) {
  if (message.sending) return;
  message.sending = true;
  const { to, text, clientMessageId, isGroup } = message;
  state.outbox.set(clientMessageId, message);
  if (message.failed) {
    delete message.failed; // a retry: "sending…" again
    if (state.conv && belongsTo(message, state.conv)) show(message, "end");
  }
  try {
    const data = { to, text, clientMessageId, ...(isGroup && { isGroup }) };
    const stored = await request("create", data);
    state.outbox.delete(clientMessageId);
    onChatMessage(stored);
  } catch (error) {
    if (error.code === "disconnected") return; // resent after reconnection
    state.outbox.delete(clientMessageId);
    message.failed = true;
    if (state.conv && belongsTo(message, state.conv)) show(message, "end");
    showError(describe(error));
  } finally {
    message.sending = false;
  }
}

function onChatMessage(message) {
  const mine = String(message.from) === state.me;
  if (mine && message.clientMessageId) state.outbox.delete(message.clientMessageId);
  const conv = state.conv;
  if (conv && belongsTo(message, conv)) {
    const follow = mine || nearBottom();
    const known = conv.items.get(itemKey(message))?.message;
    if (!known?._id || !mine) show({ ...message, ...pickReceipts(known) }, "end");
    if (follow) scrollToBottom();
  } else if (!mine) {
    const other = String(message.isGroup ? message.to : message.from);
    const key = keyOf(other, Boolean(message.isGroup));
    state.unread.set(key, (state.unread.get(key) || 0) + 1);
    renderDirectory();
  }
  // Someone new, or listed as offline: the directory is out of date.
  const sender = String(message.from);
  if (!mine && !state.users.some((user) => String(user.id) === sender && user.online)) {
    if (!state.known.has(sender)) state.known.set(sender, sender);
    refreshDirectory();
  }
}

// The same message may arrive twice (its push and its reply, or a reload):
// keep the receipts already seen.
function pickReceipts(known) {
  if (!known?._id) return {};
  return { ...(known.read && { read: true }), ...(known.readBy && { readBy: known.readBy }) };
}

function onMessageRead(message) {
  const item = state.conv?.items.get(itemKey(message));
  if (!item) return;
  item.message = { ...item.message, ...message };
  render(item);
}

// -- errors ----------------------------------------------------------------

let errorTimer = null;
function showError(text) {
  $("error").textContent = text;
  $("error").hidden = false;
  clearTimeout(errorTimer);
  errorTimer = setTimeout(() => ($("error").hidden = true), 6000);
}

connect();
