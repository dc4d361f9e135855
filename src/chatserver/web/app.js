// The chatserver browser demo: speaks the wire protocol over one WebSocket.
// Requests {type, data, id} get replies {id, data} or {id, error, message};
// pushes {type, data} carry new messages (chatMessage), read receipts
// (messageRead), presence (presence) and typing (typing).
//
// The order of a conversation is the server's: by createdAt, then by the
// order in which the store inserted the messages. A client cannot see
// insertion order directly; it relies on message ids increasing with it,
// which holds for the stores that ship (memory and SQLite: integers, as
// strings; MongoDB: ObjectIds, 24 hex digits, which the store itself sorts
// by). So messages are placed by (createdAt, id) — ids of digits compared as
// numbers, others as strings — and never simply appended in arrival order.
"use strict";

const PAGE = 30; // messages per getMessages page
const CONVERSATIONS_PAGE = 30;
const DIRECTORY_PAGE = 100;
const MAX_WATCHED = 1000; // the server's bound on watchPresence
const MIN_BACKOFF = 500; // ms before the first reconnection attempt
const MAX_BACKOFF = 5000;
const READS_IN_FLIGHT = 4; // read requests sent at once
// ms between two typing requests while someone types: a little over the
// server's interval (one push a second per sender and conversation), so that
// none is dropped there.
const TYPING_EVERY = 1100;
const TYPING_SHOWN_FOR = 4000; // ms "… is typing" stays without a new typing push
const CREDENTIALS_KEY = "chatserver.credentials";
const TITLE = document.title;

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
  notSupported: "This server's storage cannot do that",
  conflict: "That message was already sent differently",
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
  names: new Map(), // user id -> name
  groupNames: new Map(), // group id -> name
  online: new Map(), // user id -> true/false, from watchPresence and its pushes
  convs: new Map(), // conversation key -> {key, id, isGroup, last, unread, opened}
  convsNext: null, // getConversations cursor for older conversations
  directory: { users: [], groups: [], next: null, loaded: false },
  threads: new Map(), // conversation key -> the messages we hold (see thread())
  open: null, // the thread on screen
  outbox: new Map(), // clientMessageId -> message not yet acknowledged
  readSent: new Set(), // message ids we asked the server to mark read
  typing: new Map(), // conversation key -> Map(user id -> timer)
  watching: null, // the watch list last sent (to send it only when it changes)
  features: { conversations: true, cursors: true, presence: true },
  localSeq: 0, // orders our unsent messages among themselves
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

const isOpen = () => state.ws?.readyState === WebSocket.OPEN;

function request(type, data) {
  if (!isOpen()) return Promise.reject(chatError("disconnected"));
  const id = state.nextId++;
  state.ws.send(JSON.stringify({ type, data, id }));
  return new Promise((resolve, reject) => state.pending.set(id, { resolve, reject }));
}

function chatError(code, message) {
  return Object.assign(new Error(message || ERROR_TEXT[code] || code), { code });
}

function describe(error) {
  return ERROR_TEXT[error.code] || error.message || String(error);
}

function complain(error) {
  if (error.code !== "disconnected") showError(describe(error));
}

const PUSHES = {
  chatMessage: (data) => onChatMessage(data),
  messageRead: (data) => onMessageRead(data),
  presence: (data) => onPresence(data),
  typing: (data) => onTyping(data),
};

function received(frame) {
  if (frame.type) return PUSHES[frame.type]?.(frame.data);
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
    complain(error);
  }
}

function closed(event) {
  for (const { reject } of state.pending.values()) reject(chatError("disconnected"));
  state.pending.clear();
  state.ws = null;
  state.watching = null;
  for (const key of [...state.typing.keys()]) clearTyping(key);
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
  state.names.set(state.me, user.name || state.me);
  state.backoff = MIN_BACKOFF;
  $("me-name").textContent = user.name || state.me;
  $("whoami").hidden = false;
  $("sign-in-view").hidden = true;
  $("chat-view").hidden = false;
  showNotificationOffer();
  setStatus("connected", "Connected");
  await catchUp();
}

// After signing in, and after every reconnection: the conversation list, the
// directory's names, presence, then the open conversation from where we left
// it (cursors), then what we wrote while offline.
async function catchUp() {
  // What we hold of every conversation may have changed meanwhile.
  for (const thread of state.threads.values()) thread.stale = true;
  await Promise.all([refreshConversations(), loadDirectory(false)]);
  watchPresence();
  const key = keyFromHash();
  if (key && key !== state.open?.key) await openConversation(key);
  else if (state.open) await refreshThread(state.open);
  else showView("list");
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
  if (isOpen() && state.serverInfo) signIn(credentials);
  else {
    setStatus("connecting", "Connecting…");
    connect();
  }
});

$("sign-out").addEventListener("click", () => {
  sessionStorage.removeItem(CREDENTIALS_KEY);
  Object.assign(state, {
    me: null,
    open: null,
    pendingCredentials: null,
    convsNext: null,
    watching: null,
    directory: { users: [], groups: [], next: null, loaded: false },
  });
  for (const key of [...state.typing.keys()]) clearTyping(key);
  for (const collection of [
    state.outbox,
    state.convs,
    state.threads,
    state.names,
    state.online,
    state.readSent,
  ]) {
    collection.clear();
  }
  history.replaceState(null, "", location.pathname + location.search);
  state.ws?.close(1000, "signed out");
  closeConversation();
  updateTitle();
  showSignIn();
});

// -- conversation keys, names and order -----------------------------------

const keyOf = (id, isGroup) => `${isGroup ? "g" : "u"}:${id}`;
const parseKey = (key) => ({ id: key.slice(2), isGroup: key[0] === "g" });
const hashOf = (key) => `#${key[0]}/${encodeURIComponent(key.slice(2))}`;

function keyFromHash() {
  const match = /^#([ug])\/(.+)$/.exec(location.hash);
  if (!match) return null;
  try {
    return `${match[1]}:${decodeURIComponent(match[2])}`;
  } catch {
    return null;
  }
}

// The conversation a message belongs to, seen from here.
function conversationOf(message) {
  if (message.isGroup) return keyOf(String(message.to), true);
  const from = String(message.from);
  return keyOf(from === state.me ? String(message.to) : from, false);
}

const nameOf = (userId) => state.names.get(userId) || userId;
const groupNameOf = (groupId) => state.groupNames.get(groupId) || groupId;
const titleOf = (key) => {
  const { id, isGroup } = parseKey(key);
  return isGroup ? groupNameOf(id) : nameOf(id);
};

// A stored message carries its id as _id (or id): make it _id, a string.
function storedMessage(message) {
  const id = message._id ?? message.id;
  return id === undefined || id === null ? message : { ...message, _id: String(id) };
}

const DIGITS = /^\d+$/;

function compareIds(a, b) {
  if (a.length !== b.length && DIGITS.test(a) && DIGITS.test(b)) return a.length - b.length;
  return a < b ? -1 : a > b ? 1 : 0;
}

// The server's order: stored messages by (createdAt, id); ours that are not
// stored yet come after them, in the order they were written.
function compareMessages(a, b) {
  const storedA = a._id !== undefined;
  if (storedA !== (b._id !== undefined)) return storedA ? -1 : 1;
  if (!storedA) return (a.localSeq || 0) - (b.localSeq || 0);
  const at = String(a.createdAt ?? "");
  const bt = String(b.createdAt ?? "");
  if (at !== bt) return at < bt ? -1 : 1;
  return compareIds(a._id, b._id);
}

const readByMe = (message) =>
  message.isGroup ? (message.readBy || []).includes(state.me) : Boolean(message.read);

// -- dates -----------------------------------------------------------------

const dateOf = (message) => (message.createdAt ? new Date(message.createdAt) : new Date());
const dayKey = (date) => `${date.getFullYear()}-${date.getMonth() + 1}-${date.getDate()}`;

function dayLabel(date) {
  const today = new Date();
  if (dayKey(date) === dayKey(today)) return "Today";
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  if (dayKey(date) === dayKey(yesterday)) return "Yesterday";
  const options = { weekday: "long", day: "numeric", month: "long" };
  if (date.getFullYear() !== today.getFullYear()) options.year = "numeric";
  return date.toLocaleDateString(undefined, options);
}

const timeOf = (date) => date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });

function shortWhen(date) {
  const label = dayLabel(date);
  if (label === "Today") return timeOf(date);
  if (label === "Yesterday") return label;
  return date.toLocaleDateString(undefined, { day: "numeric", month: "short" });
}

// -- the conversation list -------------------------------------------------

async function refreshConversations() {
  if (!state.features.conversations) return;
  let page;
  try {
    page = await request("getConversations", { limit: CONVERSATIONS_PAGE });
  } catch (error) {
    if (["notSupported", "unknownAction"].includes(error.code)) {
      state.features.conversations = false; // a store without a conversation index
      renderConversations();
    } else complain(error);
    return;
  }
  mergeConversations(page.conversations);
  state.convsNext = page.next;
  conversationsChanged();
}

async function loadOlderConversations() {
  if (!state.convsNext) return;
  try {
    const page = await request("getConversations", {
      limit: CONVERSATIONS_PAGE,
      before: state.convsNext,
    });
    mergeConversations(page.conversations);
    state.convsNext = page.next;
    conversationsChanged();
  } catch (error) {
    complain(error);
  }
}

$("more-conversations").addEventListener("click", loadOlderConversations);

function mergeConversations(entries) {
  for (const entry of entries) {
    const key = keyOf(String(entry.with), Boolean(entry.isGroup));
    const last = storedMessage(entry.last);
    const known = state.convs.get(key);
    // A push that arrived while this answer was on its way is newer: keep it.
    if (known?.last && compareMessages(known.last, last) > 0) continue;
    state.convs.set(key, { ...known, ...parseKey(key), key, last, unread: entry.unread || 0 });
  }
}

function conversation(key) {
  let conv = state.convs.get(key);
  if (!conv) {
    conv = { ...parseKey(key), key, last: null, unread: 0, opened: Date.now() };
    state.convs.set(key, conv);
  }
  return conv;
}

// Newest first; conversations opened here without a message yet on top.
function sortedConversations() {
  return [...state.convs.values()].sort((a, b) => {
    if (!a.last || !b.last) return a.last ? 1 : b.last ? -1 : b.opened - a.opened;
    return compareMessages(b.last, a.last);
  });
}

function conversationsChanged() {
  renderConversations();
  updateTitle();
  watchPresence();
}

function renderConversations() {
  const list = $("conversations");
  const sorted = sortedConversations();
  const nodes = sorted.map((conv) => paintConversation(conv));
  const current = [...list.children];
  if (nodes.length !== current.length || nodes.some((node, i) => node !== current[i])) {
    list.replaceChildren(...nodes);
  }
  $("no-conversations").hidden = sorted.length > 0;
  $("more-conversations").hidden = !state.convsNext;
}

function avatar(key) {
  const { id, isGroup } = parseKey(key);
  const node = el("span", `avatar${isGroup ? " group" : ""}`, isGroup ? "#" : "");
  node.setAttribute("aria-hidden", "true");
  if (!isGroup) node.textContent = (nameOf(id).trim()[0] || "?").toUpperCase();
  return node;
}

// A presence dot, and the words for it (after the name, for screen readers).
function dot(userId) {
  const node = el("span", "dot");
  node.dataset.user = userId;
  node.setAttribute("aria-hidden", "true");
  paintDot(node);
  return node;
}

function presenceWords(userId) {
  const node = el("span", "visually-hidden presence");
  node.dataset.user = userId;
  paintDot(node);
  return node;
}

function paintDot(node) {
  const online = state.online.get(node.dataset.user) === true;
  if (node.classList.contains("dot")) node.classList.toggle("online", online);
  else node.textContent = online ? "(online)" : "(offline)";
}

function previewOf(message) {
  const text = typeof message.text === "string" ? message.text : "(message)";
  const line = text.split("\n", 1)[0];
  const from = String(message.from);
  if (from === state.me) return `You: ${line}`;
  return message.isGroup ? `${nameOf(from)}: ${line}` : line;
}

function paintConversation(conv) {
  if (!conv.node) {
    conv.node = el("li");
    conv.node.dataset.key = conv.key;
    const button = el("button", "conv");
    button.type = "button";
    button.addEventListener("click", () => goTo(conv.key));
    conv.node.append(button);
  }
  const button = conv.node.firstChild;
  if (state.open?.key === conv.key) button.setAttribute("aria-current", "true");
  else button.removeAttribute("aria-current");
  button.classList.toggle("unread", conv.unread > 0);
  const picture = avatar(conv.key);
  if (!conv.isGroup) picture.append(dot(conv.id));
  const top = el("span", "conv-line");
  top.append(el("span", "name", titleOf(conv.key)));
  if (!conv.isGroup) top.append(presenceWords(conv.id));
  if (conv.last) {
    const when = el("time", "when", shortWhen(dateOf(conv.last)));
    when.dateTime = conv.last.createdAt || "";
    top.append(when);
  }
  const bottom = el("span", "conv-line");
  const typing = typingText(conv.key);
  const preview = typing || (conv.last ? previewOf(conv.last) : "No messages yet");
  bottom.append(el("span", `preview${typing ? " typing-now" : ""}`, preview));
  if (conv.unread > 0) {
    const badge = el("span", "badge", String(conv.unread));
    badge.setAttribute("aria-label", `${conv.unread} unread`);
    bottom.append(badge);
  }
  const main = el("span", "conv-main");
  main.append(top, bottom);
  button.replaceChildren(picture, main);
  return conv.node;
}

function updateTitle() {
  let total = 0;
  for (const conv of state.convs.values()) total += conv.unread;
  document.title = total ? `(${total}) ${TITLE}` : TITLE;
}

// -- "new chat": the directory ---------------------------------------------

async function loadDirectory(more) {
  const query = { limit: DIRECTORY_PAGE };
  if (more) query.after = state.directory.next;
  let page;
  try {
    page = await request("getUsersAndGroups", query);
  } catch (error) {
    if (error.code !== "unknownAction") complain(error);
    return;
  }
  const directory = state.directory;
  if (!more) Object.assign(directory, { users: [], groups: [] });
  const users = page.users.filter((user) => String(user.id) !== state.me);
  directory.users.push(...users);
  directory.groups.push(...page.groups);
  directory.next = page.next;
  directory.loaded = true;
  for (const user of users) {
    const id = String(user.id);
    state.names.set(id, user.name || id);
    state.online.set(id, user.online === true); // until watchPresence says more

  }
  for (const group of page.groups) state.groupNames.set(String(group.id), group.name || group.id);
  renderDirectory();
  renderConversations();
  renderHeader();
  watchPresence();
}

function renderDirectory() {
  const entry = (id, name, isGroup) => {
    const button = el("button", "person");
    button.type = "button";
    button.append(isGroup ? el("span", "hash", "#") : dot(id), el("span", "name", name || id));
    if (isGroup) button.firstChild.setAttribute("aria-hidden", "true");
    else button.append(presenceWords(id));
    button.addEventListener("click", () => {
      toggleNewChat(false);
      goTo(keyOf(id, isGroup));
    });
    const item = el("li");
    item.append(button);
    return item;
  };
  const { users, groups, next } = state.directory;
  $("people").replaceChildren(...users.map((u) => entry(String(u.id), u.name, false)));
  $("groups").replaceChildren(...groups.map((g) => entry(String(g.id), g.name, true)));
  $("no-people").hidden = users.length > 0;
  $("no-groups").hidden = groups.length > 0;
  $("more-people").hidden = !next;
}

function toggleNewChat(open) {
  $("new-chat").setAttribute("aria-expanded", String(open));
  $("new-chat-panel").hidden = !open;
  if (open) {
    loadDirectory(false);
    $("new-chat-id").focus();
  }
}

$("new-chat").addEventListener("click", () =>
  toggleNewChat($("new-chat").getAttribute("aria-expanded") !== "true"),
);
$("more-people").addEventListener("click", () => loadDirectory(true));

$("new-chat-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const id = $("new-chat-id").value.trim();
  $("new-chat-id").value = "";
  if (!id || id === state.me) return;
  toggleNewChat(false);
  goTo(keyOf(id, false));
});

// -- presence ----------------------------------------------------------------

let watchTimer = null;

// Watch the people in the conversation list, then those of the directory.
function watchPresence() {
  clearTimeout(watchTimer);
  watchTimer = setTimeout(sendWatchList, 0);
}

async function sendWatchList() {
  if (!state.me || !isOpen() || !state.features.presence) return;
  const ids = new Set();
  for (const conv of sortedConversations()) if (!conv.isGroup) ids.add(conv.id);
  for (const user of state.directory.users) ids.add(String(user.id));
  ids.delete(state.me);
  const list = [...ids].slice(0, MAX_WATCHED);
  const signature = [...list].sort().join("\n");
  if (signature === state.watching) return;
  state.watching = signature;
  try {
    const online = await request("watchPresence", { ids: list });
    for (const [id, isOnline] of Object.entries(online)) state.online.set(id, isOnline === true);
    paintPresence();
  } catch (error) {
    state.watching = null;
    if (error.code === "unknownAction") state.features.presence = false;
    else complain(error);
  }
}

function onPresence({ id, online }) {
  state.online.set(String(id), online === true);
  paintPresence();
}

function paintPresence() {
  document.querySelectorAll("[data-user]").forEach(paintDot);
  renderHeader();
}

// -- typing ------------------------------------------------------------------

function onTyping(data) {
  const from = String(data.from);
  if (from === state.me) return;
  const key = data.isGroup ? keyOf(String(data.to), true) : keyOf(from, false);
  let who = state.typing.get(key);
  if (!who) state.typing.set(key, (who = new Map()));
  clearTimeout(who.get(from));
  who.set(
    from,
    setTimeout(() => stopTyping(key, from), TYPING_SHOWN_FOR),
  );
  typingChanged(key);
}

function stopTyping(key, userId) {
  const who = state.typing.get(key);
  if (!who?.has(userId)) return;
  clearTimeout(who.get(userId));
  who.delete(userId);
  if (!who.size) state.typing.delete(key);
  typingChanged(key);
}

function clearTyping(key) {
  for (const userId of [...(state.typing.get(key)?.keys() || [])]) stopTyping(key, userId);
}

function typingText(key) {
  const names = [...(state.typing.get(key)?.keys() || [])].map(nameOf);
  if (!names.length) return "";
  if (names.length === 1) return `${names[0]} is typing…`;
  if (names.length === 2) return `${names[0]} and ${names[1]} are typing…`;
  return `${names.length} people are typing…`;
}

function typingChanged(key) {
  const conv = state.convs.get(key);
  if (conv) paintConversation(conv);
  if (state.open?.key === key) $("typing").textContent = typingText(key);
}

let typingSent = { key: null, at: 0 };
let typingLater = null;

// Tell the conversation at once, or at the end of the interval if we just did
// (so that the last keystrokes are never left untold).
function typed() {
  const held = state.open;
  if (!held || !$("message-text").value.trim()) return;
  const wait = typingSent.key === held.key ? typingSent.at + TYPING_EVERY - Date.now() : 0;
  if (wait <= 0) sendTyping(held);
  else if (!typingLater) {
    typingLater = setTimeout(() => {
      typingLater = null;
      if (state.open === held && $("message-text").value.trim()) sendTyping(held);
    }, wait);
  }
}

function sendTyping(held) {
  typingSent = { key: held.key, at: Date.now() };
  const data = held.isGroup ? { to: held.id, isGroup: true } : { to: held.id };
  request("typing", data).catch(() => {}); // a hint: nothing to do if it fails
}

$("message-text").addEventListener("input", () => {
  const box = $("message-text");
  box.style.height = "auto";
  box.style.height = `${box.scrollHeight + 2}px`;
  typed();
});

// -- a conversation's messages -------------------------------------------

// What we hold of one conversation: its messages in the server's order, each
// with its list item (attached to the page while the conversation is open).
function thread(key) {
  let held = state.threads.get(key);
  if (!held) {
    held = {
      ...parseKey(key),
      key,
      items: new Map(), // itemKey -> {node, day, bubble, message}
      order: [], // items, oldest first
      loaded: false, // its newest page was fetched
      done: false, // no older messages to fetch
      stale: false, // to catch up on before showing it again
      loading: false,
    };
    state.threads.set(key, held);
  }
  return held;
}

// One item per message: our own unacknowledged copy and the stored one share
// a key (sender and clientMessageId), so the copy is replaced in place.
const itemKey = (m) => (m.clientMessageId ? `c:${m.from}:${m.clientMessageId}` : `i:${m._id}`);

function mergeReceipts(known, message) {
  const merged = { ...message };
  if (known.read) merged.read = true;
  if (known.readBy || message.readBy) {
    merged.readBy = [...new Set([...(known.readBy || []), ...(message.readBy || [])])];
  }
  return merged;
}

// Put a message where it belongs in the thread (or update it there).
function place(held, message, onlyIfHeld = false) {
  const key = itemKey(message);
  let item = held.items.get(key);
  if (!item && onlyIfHeld) return null;
  if (item && item.message._id && !message._id) return item; // stored already
  if (item) {
    const merged = item.message._id ? mergeReceipts(item.message, message) : message;
    const moved = compareMessages(item.message, merged) !== 0;
    if (moved) unplace(held, item);
    item.message = merged;
    if (moved) insert(held, item);
  } else {
    item = entry(message);
    held.items.set(key, item);
    insert(held, item);
  }
  render(item);
  return item;
}

function insert(held, item) {
  const { order } = held;
  let low = 0;
  let high = order.length;
  while (low < high) {
    const middle = (low + high) >> 1;
    if (compareMessages(order[middle].message, item.message) <= 0) low = middle + 1;
    else high = middle;
  }
  order.splice(low, 0, item);
  if (state.open === held) $("messages").insertBefore(item.node, order[low + 1]?.node ?? null);
  markDay(held, low);
  markDay(held, low + 1);
}

function unplace(held, item) {
  const index = held.order.indexOf(item);
  if (index < 0) return;
  held.order.splice(index, 1);
  item.node.remove();
  markDay(held, index);
}

function forget(held) {
  for (const item of held.order) item.node.remove();
  Object.assign(held, { items: new Map(), order: [], loaded: false, done: false });
}

// A date separator above the first message of each day.
function markDay(held, index) {
  const item = held.order[index];
  if (!item) return;
  const date = dateOf(item.message);
  const previous = held.order[index - 1];
  const first = !previous || dayKey(dateOf(previous.message)) !== dayKey(date);
  item.day.hidden = !first;
  if (first) {
    item.day.firstChild.textContent = dayLabel(date);
    item.day.firstChild.dateTime = dayKey(date);
  }
}

function entry(message) {
  const node = el("li", "entry");
  const day = el("h3", "day");
  day.append(el("time"));
  day.hidden = true;
  const bubble = el("div", "message");
  node.append(day, bubble);
  return { node, day, bubble, message };
}

function render({ bubble, message }) {
  const mine = String(message.from) === state.me;
  bubble.className = `message ${mine ? "mine" : "theirs"}${message.failed ? " failed" : ""}`;
  bubble.dataset.id = message._id || "";
  const parts = [];
  if (!mine && message.isGroup) parts.push(el("span", "from", nameOf(String(message.from))));
  parts.push(el("p", "text", typeof message.text === "string" ? message.text : ""));
  const meta = el("span", "meta");
  if (message.createdAt) {
    const when = new Date(message.createdAt);
    const time = el("time", "", timeOf(when));
    time.dateTime = message.createdAt;
    time.title = when.toLocaleString();
    meta.append(time);
  }
  if (mine) meta.append(el("span", "receipt", receipt(message)));
  if (message.failed) {
    const retry = el("button", "link", "Retry");
    retry.type = "button";
    retry.addEventListener("click", () => send(state.outbox.get(message.clientMessageId) || message));
    meta.append(retry);
  }
  parts.push(meta);
  bubble.replaceChildren(...parts);
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

const newestStored = (held) => {
  for (let i = held.order.length - 1; i >= 0; i--) {
    if (held.order[i].message._id) return held.order[i].message;
  }
  return null;
};
const oldestStored = (held) => held.order.find((item) => item.message._id)?.message || null;

function historyQuery(held, extra) {
  return { with: held.id, limit: PAGE, ...(held.isGroup && { isGroup: true }), ...extra };
}

// The newest page: placed among what we hold (receipts merged).
async function loadNewest(held) {
  const page = await request("getMessages", historyQuery(held, {}));
  if (!held.loaded) held.done = page.length < PAGE;
  held.loaded = true;
  for (const message of page) place(held, storedMessage(message));
  // A conversation older than the list's pages, opened from "New chat".
  const conv = state.convs.get(held.key);
  const newest = newestStored(held);
  if (conv && newest && (!conv.last || compareMessages(newest, conv.last) > 0)) {
    conv.last = newest;
    conversationsChanged();
  }
}

// Catching up: every message after the newest we hold, a page at a time
// (oldest first), then the newest page again for the read receipts given
// meanwhile to messages we already held.
async function refreshThread(held) {
  if (state.open === held) $("messages").setAttribute("aria-busy", "true");
  try {
    const newest = newestStored(held);
    if (newest && state.features.cursors) {
      let after = newest._id;
      for (;;) {
        let page;
        try {
          page = await request("getMessages", historyQuery(held, { after }));
        } catch (error) {
          if (error.code === "notFound") {
            forget(held); // the server no longer has it (a store emptied): start afresh
            break;
          }
          if (!["notSupported", "invalidQuery"].includes(error.code)) throw error;
          state.features.cursors = false;
          break;
        }
        for (const message of page) place(held, storedMessage(message));
        if (page.length < PAGE) break;
        after = String(page[page.length - 1]._id ?? page[page.length - 1].id);
      }
    }
    await loadNewest(held);
    held.stale = false;
  } catch (error) {
    complain(error);
  }
  if (state.open === held) {
    $("messages").removeAttribute("aria-busy");
    $("load-older").hidden = held.done;
    for (const item of held.order) markRead(item.message, held);
  }
}

async function loadOlder() {
  const held = state.open;
  if (!held || !held.loaded || held.done || held.loading) return;
  held.loading = true;
  $("messages").setAttribute("aria-busy", "true");
  const oldest = oldestStored(held);
  const stored = held.order.filter((item) => item.message._id).length;
  let page = null;
  try {
    const cursor = state.features.cursors && oldest ? { before: oldest._id } : { skip: stored };
    page = await request("getMessages", historyQuery(held, cursor));
  } catch (error) {
    if (["notSupported", "invalidQuery"].includes(error.code) && state.features.cursors) {
      state.features.cursors = false; // a store without cursors: count instead
    } else complain(error);
  }
  held.loading = false;
  if (state.open !== held) return;
  $("messages").removeAttribute("aria-busy");
  if (!page) return;
  held.done = page.length < PAGE;
  $("load-older").hidden = held.done;
  const scroller = $("scroller");
  const fromBottom = scroller.scrollHeight - scroller.scrollTop;
  for (const message of page) place(held, storedMessage(message));
  scroller.scrollTop = scroller.scrollHeight - fromBottom; // stay where the reader was
}

$("scroller").addEventListener("scroll", () => $("scroller").scrollTop < 40 && loadOlder());
$("load-older").addEventListener("click", loadOlder);

// -- opening and closing conversations ---------------------------------------

// Conversations are opened through the URL's hash (#u/bob, #g/team), so that
// a reload reopens the same one and a phone's back button returns to the list.
function goTo(key) {
  if (location.hash === hashOf(key)) openConversation(key);
  else location.hash = hashOf(key);
}

window.addEventListener("hashchange", () => {
  if (!state.me) return;
  const key = keyFromHash();
  if (key) openConversation(key);
  else closeConversation();
});

$("back").addEventListener("click", () => {
  location.hash = "";
});

function showView(name) {
  $("chat-view").dataset.view = name;
}

function renderHeader() {
  const held = state.open;
  const presence = $("conversation-presence");
  if (!held) {
    $("conversation-title").textContent = "Pick a conversation";
    presence.textContent = "";
    return;
  }
  $("conversation-title").textContent = held.isGroup
    ? `# ${groupNameOf(held.id)}`
    : nameOf(held.id);
  const online = !held.isGroup && state.online.get(held.id) === true;
  presence.textContent = held.isGroup ? "" : online ? "online" : "offline";
  presence.classList.toggle("online", online);
}

async function openConversation(key) {
  if (!state.me) return;
  if (!parseKey(key).id) return;
  showView("conversation");
  if (state.open?.key === key) return;
  const held = thread(key);
  state.open = held;
  conversation(key);
  conversationsChanged();
  renderHeader();
  $("typing").textContent = typingText(key);
  for (const item of held.order) item.day.hidden = true;
  $("messages").replaceChildren(...held.order.map((item) => item.node));
  held.order.forEach((_, index) => markDay(held, index)); // "Today" may be yesterday by now
  $("load-older").hidden = !held.loaded || held.done;
  $("message-text").disabled = false;
  $("composer").querySelector("button").disabled = false;
  $("message-text").focus();
  for (const message of state.outbox.values()) {
    if (conversationOf(message) === key) place(held, message);
  }
  scrollToBottom();
  if (!held.loaded || held.stale) {
    $("messages").setAttribute("aria-busy", "true"); // no announcing the whole history
    if (held.loaded) await refreshThread(held);
    else {
      try {
        await loadNewest(held);
        held.stale = false;
      } catch (error) {
        complain(error);
      }
    }
    if (state.open !== held) return;
    $("messages").removeAttribute("aria-busy");
    $("load-older").hidden = held.done;
    scrollToBottom();
  }
  for (const item of held.order) markRead(item.message, held);
}

function closeConversation() {
  state.open = null;
  $("messages").replaceChildren();
  $("typing").textContent = "";
  $("message-text").disabled = true;
  $("composer").querySelector("button").disabled = true;
  $("load-older").hidden = true;
  renderHeader();
  renderConversations();
  showView("list");
}

// -- reading ------------------------------------------------------------------

// Messages from others are marked read once shown (while the page is visible),
// a few requests at a time so that a long unread history stays under the rate limit.
const readQueue = [];
let readsInFlight = 0;

function markRead(message, held) {
  const id = message._id;
  if (!id || String(message.from) === state.me || readByMe(message)) return;
  if (state.open !== held || document.visibilityState !== "visible") return;
  if (state.readSent.has(id)) return;
  state.readSent.add(id);
  readQueue.push({ id, key: held.key });
  pumpReads();
}

function pumpReads() {
  while (readsInFlight < READS_IN_FLIGHT && readQueue.length) {
    const { id, key } = readQueue.shift();
    readsInFlight++;
    request("read", { id })
      .then((message) => {
        const conv = state.convs.get(key);
        if (conv?.unread > 0) {
          conv.unread--; // the server's count goes down once per message, as ours
          paintConversation(conv);
          updateTitle();
        }
        const held = state.threads.get(key);
        if (held) place(held, storedMessage(message), true);
      })
      .catch((error) => {
        state.readSent.delete(id); // tried again when next shown
        if (!["disconnected", "rateLimited"].includes(error.code)) complain(error);
      })
      .finally(() => {
        readsInFlight--;
        pumpReads();
      });
  }
}

document.addEventListener("visibilitychange", () => {
  if (document.visibilityState !== "visible" || !state.me) return;
  const held = state.open;
  for (const item of held?.order || []) markRead(item.message, held);
  if (isOpen()) refreshConversations(); // read in another tab meanwhile?
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

function submit() {
  const box = $("message-text");
  const text = box.value.trim();
  const held = state.open;
  if (!text || !held) return;
  box.value = "";
  box.style.height = "auto";
  clearTimeout(typingLater); // the message says it all
  typingLater = null;
  const message = {
    to: held.id,
    text,
    clientMessageId: newClientMessageId(),
    from: state.me,
    localSeq: ++state.localSeq,
  };
  if (held.isGroup) message.isGroup = true;
  state.outbox.set(message.clientMessageId, message);
  place(held, message);
  scrollToBottom();
  send(message);
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  submit();
});

// With a keyboard, Enter sends and Shift+Enter starts a new line (and Enter
// while an input method composes a character is the input method's). On a
// touch screen, whose keyboard has no Shift+Enter, Enter is a new line and
// the Send button sends.
const KEYBOARD = matchMedia("(pointer: fine)").matches;
if (KEYBOARD) $("message-text").placeholder = "Write a message… (Shift+Enter for a new line)";

$("message-text").addEventListener("keydown", (event) => {
  if (event.key !== "Enter" || event.shiftKey || event.isComposing || !KEYBOARD) return;
  event.preventDefault();
  submit();
});

async function send(message) {
  if (message.sending) return;
  message.sending = true;
  const { to, text, clientMessageId, isGroup } = message;
  state.outbox.set(clientMessageId, message);
  const held = state.threads.get(conversationOf(message));
  if (message.failed) {
    delete message.failed; // a retry: "sending…" again
    if (held) place(held, { ...message });
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
    if (held) place(held, { ...message });
    showError(describe(error));
  } finally {
    message.sending = false;
  }
}

function onChatMessage(data) {
  const message = storedMessage(data);
  const from = String(message.from);
  const mine = from === state.me;
  if (mine && message.clientMessageId) state.outbox.delete(message.clientMessageId);
  const key = conversationOf(message);
  if (!mine) stopTyping(key, from);
  const known = state.convs.get(key);
  if (!known?.last || compareMessages(message, known.last) > 0) {
    const conv = conversation(key);
    conv.last = message;
    if (!mine && !readByMe(message)) {
      conv.unread++;
      notify(message, key);
    }
    conversationsChanged();
  }
  if (!mine && !state.names.has(from)) namesSoon();
  const held = state.threads.get(key);
  if (!held) return; // fetched when opened
  const follow = state.open === held && (mine || nearBottom());
  const item = place(held, message);
  markRead(item.message, held);
  if (follow) scrollToBottom();
}

function onMessageRead(data) {
  const message = storedMessage(data);
  const held = state.threads.get(conversationOf(message));
  if (held) place(held, message, true);
}

// Someone new wrote: the directory knows their name (one refresh at a time).
let namesTimer = null;
function namesSoon() {
  if (namesTimer) return;
  namesTimer = setTimeout(() => {
    namesTimer = null;
    if (isOpen() && state.me) loadDirectory(false);
  }, 1000);
}

// -- desktop notifications ------------------------------------------------------

function showNotificationOffer() {
  $("enable-notifications").hidden =
    !("Notification" in window) || Notification.permission !== "default";
}

$("enable-notifications").addEventListener("click", async () => {
  try {
    await Notification.requestPermission();
  } finally {
    showNotificationOffer();
  }
});

function notify(message, key) {
  if (document.visibilityState === "visible" || !("Notification" in window)) return;
  if (Notification.permission !== "granted") return;
  const from = nameOf(String(message.from));
  const title = message.isGroup ? `${from} in #${groupNameOf(String(message.to))}` : from;
  const body = typeof message.text === "string" ? message.text.slice(0, 200) : "";
  try {
    const notification = new Notification(title, { body, tag: key });
    notification.onclick = () => {
      window.focus();
      goTo(key);
      notification.close();
    };
  } catch {
    // Some browsers (Chrome on Android) only notify through a service worker.
  }
}

// -- errors ----------------------------------------------------------------

let errorTimer = null;
function showError(text) {
  $("error").textContent = text;
  $("error").hidden = false;
  clearTimeout(errorTimer);
  errorTimer = setTimeout(() => ($("error").hidden = true), 6000);
}

updateTitle();
connect();
