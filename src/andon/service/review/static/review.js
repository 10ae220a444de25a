// andon review page: keyboard verdicts, the next part shown at once (prefetched), heatmap and zoom.
// Plain JavaScript, no dependencies. Without it the page still works through its forms and links.
(function () {
  "use strict";

  var root = document.getElementById("review");
  if (!root) { return; }
  var csrf = root.dataset.csrf;
  var params = root.dataset.params || "";
  var holder = document.getElementById("part");
  var statusEl = document.getElementById("status");
  var cache = new Map();          // inspection id -> Promise of the part fragment's HTML
  var judged = [];                // ids judged in this visit, newest last (U goes back)
  var busy = false;
  var opacity = parseFloat(localStorage.getItem("andon.heatOpacity") || "0.45");
  var heatOn = localStorage.getItem("andon.heatOn") !== "0";
  var view = { scale: 1, x: 0, y: 0 };

  function part() { return holder.querySelector(".part"); }
  function q(sel, el) { return (el || document).querySelector(sel); }

  function setStatus(text, kind) {
    statusEl.textContent = text || "";
    statusEl.className = "status" + (kind ? " " + kind : "");
  }

  function partUrl(id) { return "/review/part/" + encodeURIComponent(id) + (params ? "?" + params : ""); }
  function pageUrl(id) { return "/?" + (params ? params + "&" : "") + "item=" + encodeURIComponent(id); }

  // ---- loading parts --------------------------------------------------------------------------------
  function preload(html) {
    var doc = new DOMParser().parseFromString(html, "text/html");
    doc.querySelectorAll(".layers img, .siblings img").forEach(function (img) {
      var pre = new Image();
      pre.decoding = "async";
      pre.src = img.getAttribute("src");
    });
  }

  function fetchPart(id) {
    if (!cache.has(id)) {
      var p = fetch(partUrl(id), { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) {
          if (r.status === 401) { window.location.reload(); throw new Error("logged out"); }
          if (!r.ok) { throw new Error("could not load part " + id + " (" + r.status + ")"); }
          return r.text();
        })
        .then(function (html) { preload(html); return html; });
      p.catch(function () { cache.delete(id); });
      cache.set(id, p);
    }
    return cache.get(id);
  }

  function show(html, id, push) {
    holder.innerHTML = html;
    setup();
    markCurrent(id);
    if (push) { history.pushState({ id: id }, "", pageUrl(id)); }
  }

  function showEmpty() {
    holder.innerHTML = '<div class="empty"><p class="big">Nothing waiting.</p>' +
      '<p class="muted">New flagged parts appear here as the line sends them.</p></div>';
    history.pushState({}, "", "/" + (params ? "?" + params : ""));
  }

  function open(id, push) {
    return fetchPart(id).then(function (html) { show(html, id, push); })
      .catch(function (e) { setStatus(e.message, "error"); });
  }

  function markCurrent(id) {
    document.querySelectorAll(".qitem.current").forEach(function (li) { li.classList.remove("current"); });
    var li = document.querySelector('.qitem[data-id="' + CSS.escape(id) + '"]');
    if (li) {
      li.classList.add("current");
      li.scrollIntoView({ block: "nearest" });
    }
  }

  function setup() {
    var p = part();
    if (!p) { return; }
    view = { scale: 1, x: 0, y: 0 };
    applyView();
    applyHeat();
    var toggle = q(".heat-toggle", p);
    if (toggle) { toggle.addEventListener("change", function () { heatOn = toggle.checked; saveHeat(); applyHeat(); }); }
    var slider = q(".heat-opacity", p);
    if (slider) { slider.addEventListener("input", function () { opacity = slider.value / 100; saveHeat(); applyHeat(); }); }
    q(".zoom-in", p).addEventListener("click", function () { zoomAt(1.5); });
    q(".zoom-out", p).addEventListener("click", function () { zoomAt(1 / 1.5); });
    q(".zoom-reset", p).addEventListener("click", resetView);
    var stage = q(".stage", p);
    stage.addEventListener("wheel", onWheel, { passive: false });
    stage.addEventListener("pointerdown", onDown);
    stage.addEventListener("dblclick", function (e) { if (view.scale > 1) { resetView(); } else { zoomAt(3, e); } });
    var form = q("form.verdicts", p);
    if (form) {
      form.addEventListener("submit", function (e) {
        e.preventDefault();
        var button = e.submitter;
        if (button && button.value) { submit(button.value); }
      });
    }
    if (p.dataset.next) { fetchPart(p.dataset.next); }
  }

  // ---- heatmap ---------------------------------------------------------------------------------------
  function saveHeat() {
    localStorage.setItem("andon.heatOpacity", String(opacity));
    localStorage.setItem("andon.heatOn", heatOn ? "1" : "0");
  }

  function applyHeat() {
    var p = part();
    if (!p) { return; }
    var heat = q("img.heat", p);
    if (heat) { heat.style.opacity = heatOn ? String(opacity) : "0"; }
    var toggle = q(".heat-toggle", p);
    if (toggle) { toggle.checked = heatOn; }
    var slider = q(".heat-opacity", p);
    if (slider) { slider.value = Math.round(opacity * 100); }
  }

  // ---- zoom and pan ----------------------------------------------------------------------------------
  function applyView() {
    var p = part();
    if (!p) { return; }
    var layers = q(".layers", p);
    if (layers) {
      layers.style.transform = "translate(" + view.x + "px," + view.y + "px) scale(" + view.scale + ")";
      layers.classList.toggle("pixelated", view.scale >= 4);
    }
    var level = q(".zoom-level", p);
    if (level) { level.textContent = view.scale === 1 ? "fit" : Math.round(view.scale * 100) + "%"; }
  }

  function resetView() { view = { scale: 1, x: 0, y: 0 }; applyView(); }

  function zoomAt(factor, event) {
    var p = part();
    if (!p) { return; }
    var stage = q(".stage", p);
    var rect = stage.getBoundingClientRect();
    var cx = event ? event.clientX - rect.left - 12 : rect.width / 2;
    var cy = event ? event.clientY - rect.top - 12 : rect.height / 2;
    var scale = Math.min(16, Math.max(1, view.scale * factor));
    var k = scale / view.scale;
    view.x = cx - (cx - view.x) * k;
    view.y = cy - (cy - view.y) * k;
    view.scale = scale;
    if (scale === 1) { view.x = 0; view.y = 0; }
    applyView();
  }

  function onWheel(e) {
    e.preventDefault();
    zoomAt(e.deltaY < 0 ? 1.25 : 0.8, e);
  }

  function onDown(e) {
    if (view.scale === 1 || e.button !== 0) { return; }
    var stage = e.currentTarget;
    var start = { x: e.clientX, y: e.clientY, vx: view.x, vy: view.y };
    stage.setPointerCapture(e.pointerId);
    stage.classList.add("dragging");
    function move(ev) {
      view.x = start.vx + ev.clientX - start.x;
      view.y = start.vy + ev.clientY - start.y;
      applyView();
    }
    function up() {
      stage.classList.remove("dragging");
      stage.removeEventListener("pointermove", move);
      stage.removeEventListener("pointerup", up);
    }
    stage.addEventListener("pointermove", move);
    stage.addEventListener("pointerup", up);
  }

  function pan(dx, dy) {
    if (view.scale === 1) { return; }
    view.x += dx;
    view.y += dy;
    applyView();
  }

  // ---- verdicts --------------------------------------------------------------------------------------
  function setCounts(waiting, escalated) {
    var w = document.getElementById("waiting-count");
    var e = document.getElementById("escalated-count");
    if (w && waiting !== undefined) { w.textContent = waiting; }
    if (e && escalated !== undefined) { e.textContent = escalated; }
    document.title = (waiting !== undefined ? waiting + " waiting · " : "") + "andon review";
  }

  function leaveQueue(id) {
    var li = document.querySelector('.qitem[data-id="' + CSS.escape(id) + '"]');
    if (!li) { return; }
    li.remove();
    var count = document.getElementById("queue-count");
    if (count && /^\d+$/.test(count.textContent)) { count.textContent = Math.max(0, +count.textContent - 1); }
  }

  var NAMES = { confirm_defect: "defect confirmed", false_alarm: "false alarm", cant_tell: "escalated" };

  function submit(verdict, label) {
    var p = part();
    if (busy || !p || p.dataset.reviewable !== "1") { return; }
    var id = p.dataset.id;
    var select = q(".label-select", p);
    var comment = q(".comment", p);
    var body = {
      verdict: verdict,
      label: verdict === "confirm_defect" ? (label || (select ? select.value : null)) : null,
      comment: comment && comment.value.trim() ? comment.value.trim() : null,
      supersedes: p.dataset.supersedes ? Number(p.dataset.supersedes) : null
    };
    busy = true;
    p.classList.add("saving");
    setStatus("saving…");
    fetch("/v1/inspections/" + encodeURIComponent(id) + "/verdicts", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf, "Accept": "application/json" },
      body: JSON.stringify(body)
    }).then(function (r) {
      return r.json().then(function (data) { return { ok: r.ok, status: r.status, data: data }; });
    }).then(function (res) {
      if (!res.ok) {
        p.classList.remove("saving");
        setStatus("Not saved: " + (res.data.message || res.status), "error");
        if (res.status === 401) { window.location.reload(); }
        return null;
      }
      cache.delete(id);
      judged.push(id);
      setCounts(res.data.waiting, res.data.escalated);
      if (root.dataset.queue !== "reviewed") { leaveQueue(id); }
      setStatus("✓ " + NAMES[verdict] + (body.label ? " (" + body.label + ")" : ""), "ok");
      var next = p.dataset.next;
      if (next) { return open(next, true); }
      showEmpty();
      return null;
    }).catch(function (e) {
      p.classList.remove("saving");
      setStatus("Not saved: " + e.message, "error");
    }).then(function () { busy = false; });
  }

  function pickLabel(n) {
    var p = part();
    var select = p && q(".label-select", p);
    if (!select || n > select.options.length) { return; }
    select.selectedIndex = n - 1;
    submit("confirm_defect", select.value);
  }

  function step(offset) {
    var items = Array.prototype.slice.call(document.querySelectorAll(".qitem"));
    var p = part();
    var at = p ? items.findIndex(function (li) { return li.dataset.id === p.dataset.id; }) : -1;
    var target = items[at + offset];
    if (!target && offset > 0 && p && p.dataset.next) { return open(p.dataset.next, true); }
    if (target) { open(target.dataset.id, true); }
  }

  // ---- keyboard --------------------------------------------------------------------------------------
  document.addEventListener("keydown", function (e) {
    var t = e.target;
    var typing = t && (t.tagName === "TEXTAREA" || t.tagName === "INPUT" || t.tagName === "SELECT");
    if (typing) {
      if (e.key === "Escape") { t.blur(); e.preventDefault(); }
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && t.classList.contains("comment")) {
        t.blur();
        e.preventDefault();
      }
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey) { return; }
    var key = e.key;
    var handled = true;
    if (key === "d" || key === "D") { submit("confirm_defect"); }
    else if (key === "g" || key === "G") { submit("false_alarm"); }
    else if (key === "e" || key === "E") { submit("cant_tell"); }
    else if (/^[1-9]$/.test(key)) { pickLabel(Number(key)); }
    else if (key === "c" || key === "C") { var c = part() && q(".comment", part()); if (c) { c.focus(); } }
    else if (key === "r" || key === "R") { var s = part() && q(".label-select", part()); if (s) { s.focus(); } }
    else if (key === "h" || key === "H") { heatOn = !heatOn; saveHeat(); applyHeat(); }
    else if (key === "[") { opacity = Math.max(0, opacity - 0.1); heatOn = true; saveHeat(); applyHeat(); }
    else if (key === "]") { opacity = Math.min(1, opacity + 0.1); heatOn = true; saveHeat(); applyHeat(); }
    else if (key === "+" || key === "=") { zoomAt(1.5); }
    else if (key === "-" || key === "_") { zoomAt(1 / 1.5); }
    else if (key === "0") { resetView(); }
    else if (key === "j" || key === "J") { step(1); }
    else if (key === "k" || key === "K") { step(-1); }
    else if (key === "u" || key === "U") { var last = judged.pop(); if (last) { open(last, true); } }
    else if (key === "ArrowLeft") { pan(60, 0); }
    else if (key === "ArrowRight") { pan(-60, 0); }
    else if (key === "ArrowUp") { pan(0, 60); }
    else if (key === "ArrowDown") { pan(0, -60); }
    else { handled = false; }
    if (handled) { e.preventDefault(); }
  });

  // ---- queue list, filters, history ------------------------------------------------------------------
  document.getElementById("queue").addEventListener("click", function (e) {
    var a = e.target.closest(".qitem a");
    if (!a || e.ctrlKey || e.metaKey || e.shiftKey) { return; }
    e.preventDefault();
    open(a.closest(".qitem").dataset.id, true);
  });
  holder.addEventListener("click", function (e) {
    var a = e.target.closest("a.sibling");
    if (!a || e.ctrlKey || e.metaKey || e.shiftKey) { return; }
    e.preventDefault();
    open(a.dataset.id, true);
  });
  var filters = document.getElementById("filters");
  if (filters) { filters.addEventListener("change", function () { filters.submit(); }); }
  window.addEventListener("popstate", function (e) {
    if (e.state && e.state.id) { open(e.state.id, false); } else { window.location.reload(); }
  });

  function refreshCounts() {
    fetch("/review/counts", { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (c) { if (c) { setCounts(c.waiting, c.escalated); } })
      .catch(function () { /* the next poll tries again */ });
  }
  setInterval(refreshCounts, 15000);

  var first = part();
  if (first) { history.replaceState({ id: first.dataset.id }, "", window.location.href); }
  setup();
}());
