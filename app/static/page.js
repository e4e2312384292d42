// Polls /api/uploads for the uploads on this page until each is done or dead, and shows the
// thumbnail, the worker that made it and how long its task waited in the queue. No reload.
"use strict";
const FINAL = new Set(["done", "dead"]);
const SHOWN = 256; // the thumbnail size the page shows; the others are links

function render(li, s) {
  const state = s.state || "unknown";
  li.dataset.state = state;
  li.querySelector(".state").textContent = state === "dead" ? "failed, dead-lettered" : state;
  const detail = li.querySelector(".detail");
  if (state === "done") {
    const thumb = li.querySelector(".thumb");
    if (!thumb.querySelector("img")) {
      const img = document.createElement("img");
      img.src = s.base + "thumb-" + SHOWN + ".jpg?t=" + s.updated_at;
      img.alt = "thumbnail of " + s.name;
      thumb.appendChild(img);
    }
    const links = Object.keys(s.thumbs || {}).map(
      (size) => '<a href="' + s.base + "thumb-" + size + '.jpg">' + s.thumbs[size].join("x") + "</a>");
    detail.innerHTML = "";
    detail.append("made by " + s.worker + ", waited " + s.waited_s.toFixed(3) + " s in the queue, " +
      s.took_s.toFixed(3) + " s to make; sizes: ");
    detail.insertAdjacentHTML("beforeend", links.join(" "));
  } else if (state === "failed" || state === "dead") {
    detail.textContent = s.error + " (" + s.failures + " of " + (s.max_deliveries || "?") +
      " deliveries failed" + (state === "dead" ? "; the message is in the dead-letter queue" : ", retrying") + ")";
  }
}

async function poll() {
  const pending = [...document.querySelectorAll("li.upload")].filter((li) => !FINAL.has(li.dataset.state));
  if (pending.length === 0) return;
  try {
    const ids = pending.map((li) => li.dataset.id).join(",");
    const reply = await fetch("api/uploads?ids=" + ids, { cache: "no-store" });
    const doc = await reply.json();
    for (const li of pending) {
      const s = doc.uploads[li.dataset.id];
      if (s) render(li, s);
    }
  } catch (e) {
    // The front end restarting: keep polling.
  }
  setTimeout(poll, 500);
}

for (const li of document.querySelectorAll("li.upload")) {
  if (FINAL.has(li.dataset.state)) {
    fetch("api/uploads?ids=" + li.dataset.id).then((r) => r.json()).then((d) => render(li, d.uploads[li.dataset.id]));
  }
}
poll();
