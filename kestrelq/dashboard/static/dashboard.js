// Updates the page in place: every few seconds the parts come again from /api/state, rendered
// on the server by the same macros as the page; the two actions post to the same origin with
// the page's token (docs/dashboard.md).
"use strict";
(function () {
  const body = document.body;
  const token = body.dataset.token;
  const every = Number(body.dataset.intervalMs) || 2000;
  const parts = ["servers", "queues", "dead", "workers"];
  const notice = document.getElementById("notice");
  const updated = document.getElementById("updated");

  const shown = {};

  function show(state) {
    for (const part of parts) {
      const el = document.getElementById(part);
      const html = state.html && state.html[part];
      // Only what changed is replaced: a button the user is about to click stays put.
      if (el && html !== undefined && html !== shown[part]) {
        el.innerHTML = html;
        shown[part] = html;
      }
    }
    updated.textContent = "updated " + new Date(state.at * 1000).toISOString().slice(11, 19) + " UTC";
    body.classList.remove("stale");
  }

  function say(text, isError) {
    notice.textContent = text;
    notice.classList.toggle("error", Boolean(isError));
  }

  async function refresh() {
    try {
      // A short deadline: a dashboard that does not answer must not pile requests up.
      const reply = await fetch("api/state", {cache: "no-store", signal: AbortSignal.timeout(5000)});
      if (!reply.ok) throw new Error("HTTP " + reply.status);
      show(await reply.json());
    } catch (err) {
      body.classList.add("stale");
      updated.textContent = "cannot reach the dashboard (" + err.message + "); retrying";
    }
  }

  async function act(button) {
    const what = button.dataset.action;
    button.disabled = true;
    say(what === "drop" ? "dropping…" : "requeueing…", false);
    try {
      const reply = await fetch("api/" + what, {
        method: "POST",
        headers: {"Content-Type": "application/json", "X-Kestrelq-Dashboard": token},
        body: JSON.stringify({server: button.dataset.server, queue: button.dataset.queue,
                              digest: button.dataset.digest || ""}),
      });
      const answer = await reply.json();
      if (!reply.ok) {
        say(answer.error || "HTTP " + reply.status, true);
      } else {
        say(answer.message, false);
        show(answer);
      }
    } catch (err) {
      say("failed: " + err.message, true);
    } finally {
      button.disabled = false;
    }
  }

  document.getElementById("dead").addEventListener("click", function (event) {
    const button = event.target.closest("button[data-action]");
    if (button) act(button);
  });
  setInterval(refresh, every);
})();
