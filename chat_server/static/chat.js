// The chat page: asks over the server's WebSocket and shows the streamed answer and its sources.
// Every text from the server (answers, file names, chunk texts: anyone's uploaded documents) goes into the
// page as text nodes, never as HTML, so a document cannot run a script here.
"use strict";

const KEY_ITEM = "knowledge-chat-key";
const $ = (id) => document.getElementById(id);
let socket = null;
let ready = false;
let pending = null; // the question waiting for the socket to be ready
let busy = false;

function apiUrl(path) {
  return new URL(path, document.baseURI);
}

function socketUrl() {
  const url = apiUrl("api/chat/ws");
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function key() {
  return $("key").value.trim();
}

function rememberKey() {
  // sessionStorage at most: gone when the tab closes, never sent anywhere by the browser on its own.
  if ($("remember").checked && key()) sessionStorage.setItem(KEY_ITEM, key());
  else sessionStorage.removeItem(KEY_ITEM);
}

function errorText(body, fallback) {
  return (body && body.error && typeof body.error.message === "string") ? body.error.message : fallback;
}

async function loadKnowledge() {
  rememberKey();
  closeSocket();
  $("knowledge").disabled = true;
  $("send").disabled = true;
  setStatus("Connecting…");
  let response;
  try {
    response = await fetch(apiUrl("api/knowledge"), {headers: {Authorization: `Bearer ${key()}`}});
  } catch (error) {
    setStatus("The server cannot be reached.", true);
    return;
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    setStatus(errorText(body, `The server answered ${response.status}.`), true);
    return;
  }
  const select = $("knowledge");
  select.replaceChildren(new Option("All my Knowledge", ""));
  for (const base of body.data) select.append(new Option(base.name || base.id, base.id));
  select.disabled = false;
  $("send").disabled = false;
  setStatus(`${body.data.length} Knowledge base${body.data.length === 1 ? "" : "s"} available.`);
}

function closeSocket() {
  if (socket) socket.close(1000);
  socket = null;
  ready = false;
}

function openSocket() {
  socket = new WebSocket(socketUrl());
  ready = false;
  socket.addEventListener("open", () => socket.send(JSON.stringify({type: "auth", token: key()})));
  socket.addEventListener("message", (event) => handle(JSON.parse(event.data)));
  socket.addEventListener("close", () => {
    socket = null;
    ready = false;
    if (busy) finish("The connection closed before the answer was complete.", true);
  });
}

function send(question) {
  busy = true;
  $("send").disabled = true;
  $("result").hidden = false;
  $("answer").textContent = "";
  $("sources").replaceChildren();
  setStatus("Thinking…");
  if (socket && ready) socket.send(JSON.stringify(question));
  else {
    pending = question;
    if (!socket) openSocket();
  }
}

function finish(text, isError = false) {
  busy = false;
  $("send").disabled = false;
  setStatus(text, isError);
}

function showSources(sources) {
  const list = $("sources");
  list.replaceChildren();
  for (const source of sources) {
    const item = document.createElement("li");
    const name = document.createElement("span");
    name.className = "source-name";
    name.textContent = source.name;
    const meta = document.createElement("span");
    meta.className = "source-meta";
    meta.textContent = ` — ${source.knowledge_name} · score ${source.score.toFixed(3)}`;
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = "Passage";
    const text = document.createElement("div");
    text.className = "source-text";
    text.textContent = source.text;
    details.append(summary, text);
    item.append(name, meta, details);
    list.append(item);
  }
  if (!sources.length) {
    const item = document.createElement("li");
    item.textContent = "No source was found in this Knowledge.";
    list.append(item);
  }
}

function handle(message) {
  switch (message.type) {
    case "ready":
      ready = true;
      if (pending) {
        socket.send(JSON.stringify(pending));
        pending = null;
      }
      break;
    case "token":
      $("answer").append(document.createTextNode(message.text));
      break;
    case "sources":
      showSources(message.sources);
      break;
    case "done":
      finish("Done.");
      break;
    case "error":
      pending = null;
      finish(errorText(message, "The server refused the question."), true);
      break;
  }
}

function ask() {
  const text = $("question").value.trim();
  if (!text || busy) return;
  const question = {question: text};
  if ($("knowledge").value) question.knowledge = $("knowledge").value;
  send(question);
}

document.addEventListener("DOMContentLoaded", () => {
  const saved = sessionStorage.getItem(KEY_ITEM);
  $("connect").addEventListener("click", loadKnowledge);
  $("key").addEventListener("keydown", (event) => { if (event.key === "Enter") loadKnowledge(); });
  $("remember").addEventListener("change", rememberKey);
  $("send").addEventListener("click", ask);
  $("question").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      ask();
    }
  });
  if (saved) {
    $("key").value = saved;
    $("remember").checked = true;
    loadKnowledge();
  }
});
