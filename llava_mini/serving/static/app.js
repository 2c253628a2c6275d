// The classroom page: pick or upload an image, ask, watch the answer stream in, see where it looked.
// It speaks only to the server that served it: POST /v1/chat/completions (stream: true), GET /v1/models,
// and the classroom routes /classroom/images, /classroom/blank.png and /classroom/attention.
// A server started with an API key answers those with 401 until the page sends the key: the page then asks for it,
// keeps it for this tab only (sessionStorage, never in the address) and sends it as "Authorization: Bearer".
"use strict";

const state = { image: null, blank: null, messages: [], busy: false, chosen: false,
                key: sessionStorage.getItem("llava_mini_key") };
const $ = (id) => document.getElementById(id);

function say(text) { $("status").textContent = text; }

// fetch, with the API key when there is one.
function api(url, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  return fetch(url, { ...options, headers });
}

// Resolves once the server accepts the key typed into the key form.
function askForKey(message) {
  $("key-form").hidden = false;
  $("key-message").textContent = message;
  $("api-key").focus();
  return new Promise((resolve) => {
    $("key-form").onsubmit = async (event) => {
      event.preventDefault();
      state.key = $("api-key").value.trim();
      const response = await api("/v1/models");
      if (!response.ok) { $("key-message").textContent = "That key was refused; try again."; return; }
      sessionStorage.setItem("llava_mini_key", state.key);
      $("key-form").hidden = true;
      resolve(response);
    };
  });
}

async function dataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

async function fetchDataUrl(url) {
  const response = await api(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return dataUrl(await response.blob());
}

function reset() {
  state.messages = [];
  $("messages").innerHTML = "";
  $("heatmap").hidden = true;
  say("New conversation.");
}

function showImage(url) {
  state.image = url;
  $("image").src = url;
  reset();
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = `message ${role}`;
  const who = document.createElement("b");
  who.textContent = role === "user" ? "You: " : "Model: ";
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  div.append(who, body);
  $("messages").append(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return { div, body };
}

// The request the OpenAI convention expects: the image rides in the first user message as a data: URL.
function requestMessages(image) {
  return state.messages.map((m, i) => (i === 0 && m.role === "user" && image)
    ? { role: "user", content: [{ type: "text", text: m.content }, { type: "image_url", image_url: { url: image } }] }
    : m);
}

async function ask(question) {
  const blind = $("blind").checked;
  const image = blind ? state.blank : state.image;
  state.messages.push({ role: "user", content: question });
  addMessage("user", question + (blind ? "  (blind)" : ""));
  const reply = addMessage("assistant", "");
  const response = await api("/v1/chat/completions", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ messages: requestMessages(image), temperature: 0, stream: true }),
  });
  if (!response.ok) {
    const error = await response.json();
    state.messages.pop();
    reply.body.textContent = `(${error.error.message})`;
    return;
  }
  // Server-sent events: "data: {chunk}\n\n" ... "data: [DONE]"
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", answer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, end).replace(/^data: /, "");
      buffer = buffer.slice(end + 2);
      if (line === "[DONE]") continue;
      answer += JSON.parse(line).choices[0].delta.content || "";
      reply.body.textContent = answer;
    }
  }
  state.messages.push({ role: "assistant", content: answer });
  if ($("show-map").checked && state.messages.length === 2 && answer) await heatmap(image, question, answer, reply);
}

// Where the answer looked: only for the first turn, whose prompt is exactly "<image>\nquestion".
async function heatmap(image, question, answer, reply) {
  say("Drawing where the answer looked...");
  const response = await api("/classroom/attention", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ image, question, answer }),
  });
  const result = await response.json();
  if (!response.ok) { say(result.error.message); return; }
  $("heatmap").src = result.heatmap;
  $("heatmap").hidden = false;
  const note = document.createElement("span");
  note.className = "note";
  note.textContent = "  (heat map: where this answer looked)";
  reply.div.append(note);
  say("");
}

// The gallery's images are fetched (with the key, if any) while the page is already usable: clicking one before its
// data has arrived waits for it, and the first image is chosen for the class only if nobody has chosen one yet.
async function loadGallery() {
  const response = await api("/classroom/images");
  const names = response.ok ? (await response.json()).images : [];
  const loads = names.map((name) => {
    const img = document.createElement("img");
    img.alt = name;
    img.title = name;
    const data = fetchDataUrl(`/classroom/images/${encodeURIComponent(name)}`);
    img.onclick = async () => {
      state.chosen = true;
      document.querySelectorAll("#gallery img").forEach((x) => x.classList.remove("chosen"));
      img.classList.add("chosen");
      showImage(await data);
    };
    $("gallery").append(img);
    return data.then((url) => { img.src = url; });
  });
  if (loads.length) {
    await loads[0];
    if (!state.chosen) $("gallery").firstChild.click();
  }
  await Promise.all(loads);
}

async function start() {
  let response = await api("/v1/models");
  if (response.status === 401) response = await askForKey("This server needs its API key.");
  const models = await response.json();
  const m = models.data[0];
  $("model-name").textContent = `${m.id}: ${(m.parameters / 1e6).toFixed(1)}M parameters` +
    (m.vision ? "" : " (text only)");
  state.blank = await fetchDataUrl("/classroom/blank.png");
  $("upload").onchange = async () => {
    if ($("upload").files[0]) { state.chosen = true; showImage(await dataUrl($("upload").files[0])); }
  };
  $("reset").onclick = reset;
  $("ask").onsubmit = async (event) => {
    event.preventDefault();
    const question = $("question").value.trim();
    if (!question || state.busy) return;
    state.busy = true;
    $("question").value = "";
    $("send").disabled = true;
    try { await ask(question); } catch (e) { say(String(e)); } finally { state.busy = false; $("send").disabled = false; }
  };
  say("Pick an image and ask a question.");
  await loadGallery();
}

start();
