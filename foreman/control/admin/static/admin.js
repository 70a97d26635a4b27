// foreman's settings pages: small enhancements over forms that work without JavaScript.
// Live status (polling), the Test button's answer in place, copy buttons, confirmations.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";
const POLL_MS = 3000;

function poll(url, apply) {
  let busy = false;
  setInterval(async () => {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const response = await fetch(url, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } });
      if (response.status === 401) return location.reload(); // signed out: the page asks again
      if (response.ok) apply(response);
    } catch (_) {
      // foreman is restarting or the network blinked: try again at the next tick
    } finally {
      busy = false;
    }
  }, POLL_MS);
}

function liveDashboard() {
  const live = document.querySelector("[data-live]");
  if (!live) return;
  poll(live.dataset.live, async (response) => { live.innerHTML = await response.text(); });
}

function liveStatus() {
  const cards = document.querySelector("[data-live-status]");
  if (!cards) return;
  poll(cards.dataset.liveStatus, async (response) => {
    const live = await response.json();
    for (const slot of document.querySelectorAll("[data-status-for]")) {
      if (!(slot.dataset.statusFor in live)) slot.textContent = "This backend was deleted.";
    }
    for (const [id, parts] of Object.entries(live)) {
      const status = document.querySelector(`[data-status-for="${id}"]`);
      if (status) status.innerHTML = parts.status;
      // the model list changed (a discovery): redraw it, unless someone is choosing
      const models = document.querySelector(`[data-models-for="${id}"]`);
      if (models && models.dataset.sig !== parts.sig && !models.contains(document.activeElement)) {
        models.innerHTML = parts.models;
        models.dataset.sig = parts.sig;
      }
    }
  });
}

function testButtons() {
  for (const form of document.querySelectorAll("form[data-test]")) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const button = form.querySelector("button");
      const output = document.getElementById(form.dataset.test);
      button.disabled = true;
      button.setAttribute("aria-busy", "true");
      output.innerHTML = '<span class="spinner" aria-hidden="true"></span> Testing…';
      try {
        const response = await fetch(form.action, {
          method: "POST",
          credentials: "same-origin",
          headers: { "X-CSRF-Token": csrf(), "X-Requested-With": "fetch" },
        });
        if (response.status === 401) return location.reload();
        output.innerHTML = response.ok ? await response.text() : `<span class="test-result failed">Test failed (${response.status})</span>`;
      } catch (error) {
        output.textContent = "foreman did not answer: " + error;
      } finally {
        button.disabled = false;
        button.removeAttribute("aria-busy");
      }
    });
  }
}

// A model chosen from a card's menu is used at once, in place (no page load); without
// JavaScript the form's "Use this model" button does the same.
function modelMenus() {
  document.addEventListener("change", async (event) => {
    const select = event.target.closest(".model-row select");
    if (!select) return;
    const form = select.form;
    const note = form.querySelector(".model-note");
    note.textContent = "Saving…";
    try {
      const response = await fetch(form.action, {
        method: "POST",
        body: new FormData(form),
        credentials: "same-origin",
        headers: { "X-CSRF-Token": csrf(), "X-Requested-With": "fetch" },
      });
      if (response.status === 401) return location.reload();
      const answer = await response.json();
      note.textContent = response.ok ? "✓ Saved" : answer.error;
    } catch (error) {
      note.textContent = "foreman did not answer: " + error;
    }
  });
}

function copyButtons() {
  for (const button of document.querySelectorAll("[data-copy]")) {
    button.addEventListener("click", async () => {
      const field = document.querySelector(button.dataset.copy);
      field.select();
      try {
        await navigator.clipboard.writeText(field.value);
      } catch (_) {
        document.execCommand("copy");
      }
      button.textContent = "Copied";
    });
  }
}

function confirmations() {
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
}

document.documentElement.classList.add("js");
document.addEventListener("DOMContentLoaded", () => {
  liveDashboard();
  liveStatus();
  testButtons();
  modelMenus();
  copyButtons();
  confirmations();
});
