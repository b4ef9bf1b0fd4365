// twinfiler console: progressive enhancement only. Every page works without this script.
// 1. Takeover/giveback links open an in-page dialog that first runs the check via the API.
// 2. The operation page follows progress over server-sent events.
// 3. The overview refreshes itself every few seconds.
"use strict";
(function () {
  const REFRESH_MS = 5000;
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.content : "";

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    for (const c of children) e.append(c);
    return e;
  }

  async function openDialog(link) {
    const kind = link.dataset.check, target = link.dataset.target;
    const resp = await fetch("/api/v1/" + kind + "/check", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify({ target: target }),
    });
    if (!resp.ok) { window.location = link.href; return; } // fall back to the plain page
    const check = await resp.json();
    const dlg = el("dialog", { class: "confirm" });
    dlg.append(el("h2", {}, (kind === "takeover" ? "Take over " : "Give back to ") + target));
    const list = el("ul", { class: "checks" });
    for (const c of check.checks) {
      list.append(el("li", { class: c.ok ? "ok" : "bad" }, (c.ok ? "\u2714 " : "\u2718 ") + c.name +
        (c.detail ? " \u2014 " + c.detail : "")));
    }
    dlg.append(list);
    const form = el("form", { method: "post", action: "/" + kind + "/" + encodeURIComponent(target) });
    form.append(el("input", { type: "hidden", name: "csrf", value: csrf }));
    if (kind === "takeover") {
      form.append(el("label", {}, el("input", { type: "radio", name: "mode", value: "graceful", checked: "" }),
        " Graceful, force after ", el("input", { type: "number", name: "countdown_s", value: "60", min: "1", max: "600" }), " s"));
      form.append(el("label", {}, el("input", { type: "radio", name: "mode", value: "immediate" }), " Immediate"));
    }
    form.append(el("label", {}, el("input", { type: "checkbox", name: "confirm", value: "yes", required: "" }), " I am sure"));
    const go = el("button", { type: "submit", class: "danger" }, kind === "takeover" ? "Take over" : "Give back");
    if (!check.possible) go.disabled = true;
    const cancel = el("button", { type: "button" }, "Cancel");
    cancel.addEventListener("click", () => { dlg.close(); dlg.remove(); });
    form.append(go, " ", cancel);
    dlg.append(check.possible ? form : el("p", { class: "error" }, "Not possible now."), check.possible ? "" : cancel);
    document.body.append(dlg);
    dlg.showModal();
  }

  // Same format as the server renders: "YYYY-MM-DD HH:MM:SSZ" (UTC).
  function fmtTime(ms) {
    return new Date(ms).toISOString().slice(0, 19).replace("T", " ") + "Z";
  }

  function renderProgress(box, p) {
    const ol = el("ol", { class: "steps" });
    for (const s of p.steps) {
      const sym = { pending: "\u25cb", running: "\u25d4", done: "\u2714", failed: "\u2718", skipped: "\u2013" }[s.state] || "?";
      const li = el("li", { class: s.state }, el("span", { class: "sym" }, sym), " ", el("strong", {}, s.name));
      if (s.detail) li.append(" \u2014 ", el("span", { class: "detail" }, s.detail));
      if (s.at_unix_ms) li.append(" ", el("small", { class: "at" }, fmtTime(s.at_unix_ms)));
      ol.append(li);
    }
    const outcome = el("div", { class: "outcome" });
    if (!p.outcome) outcome.append(el("p", {}, "Running\u2026"));
    else if (p.outcome.result === "succeeded") outcome.append(el("p", { class: "ok" }, "Succeeded."));
    else outcome.append(el("p", { class: "bad" }, "Failed: " + p.outcome.reason));
    box.replaceChildren(ol, outcome);
    box.dataset.finished = p.outcome ? "1" : "0";
  }

  function followProgress(box) {
    if (box.dataset.finished === "1") return;
    const src = new EventSource("/api/v1/operations/" + box.dataset.op + "/events");
    src.addEventListener("progress", (ev) => renderProgress(box, JSON.parse(ev.data)));
    src.addEventListener("end", () => src.close()); // otherwise EventSource reconnects forever
  }

  function liveOverview(box) {
    setInterval(async () => {
      if (document.querySelector("dialog[open]")) return; // do not yank the page under a dialog
      const resp = await fetch(window.location.pathname, { credentials: "same-origin" });
      if (!resp.ok || resp.redirected) return;
      const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
      const fresh = doc.getElementById("overview");
      if (fresh) box.replaceChildren(...fresh.childNodes);
    }, REFRESH_MS);
  }

  document.addEventListener("click", (ev) => {
    const link = ev.target.closest("a[data-check]");
    if (!link) return;
    ev.preventDefault();
    openDialog(link).catch(() => { window.location = link.href; });
  });
  document.addEventListener("DOMContentLoaded", () => {
    const box = document.getElementById("progress");
    if (box) followProgress(box);
    const overview = document.getElementById("overview");
    if (overview) liveOverview(overview);
  });
})();
