// k8s4r dashboard: live updates without reloads. Served as a file (the
// Content-Security-Policy allows no inline script); no library.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var pending = null;

  // Fetch this page again and swap its main part, keeping scroll position.
  function refresh() {
    pending = null;
    fetch(location.href, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.redirected && r.url.indexOf("/ui/login") >= 0) { location.href = r.url; return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (!html) return;
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("main");
        var old = document.getElementById("main");
        if (!fresh || !old) return;
        // Keep what the user is typing and the log already shown.
        var log = document.getElementById("log");
        var freshLog = fresh.querySelector("#log");
        if (log && freshLog) freshLog.textContent = log.textContent;
        var focused = document.activeElement && document.activeElement.id;
        old.replaceWith(fresh);
        if (focused) {
          var f = document.getElementById(focused);
          if (f) f.focus();
        }
        document.body.setAttribute("data-refreshed", String(Date.now()));
      })
      .catch(function () {});
  }

  function schedule() {
    if (pending === null) pending = setTimeout(refresh, 150);
  }

  var watch = document.body.getAttribute("data-watch");
  if (watch && window.EventSource) {
    var es = new EventSource("/ui/live?watch=" + encodeURIComponent(watch));
    var lost = false;
    es.addEventListener("open", function () {
      if (live) live.className = "live on";
      // Reconnected (the server ends each stream after a while): catch up.
      if (lost) schedule();
      lost = false;
    });
    es.addEventListener("error", function () { lost = true; if (live) live.className = "live off"; });
    es.addEventListener("change", schedule);
    es.addEventListener("reset", function () { es.close(); location.reload(); });
  }

  // A task's log tail: fetched again every 2 s while the tab is visible
  // (each fetch asks the robot for its tail, so not faster).
  function tail() {
    var pre = document.getElementById("log");
    if (!pre || document.hidden) return;
    fetch(pre.getAttribute("data-src"), { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.text().then(function (t) { return [r.ok, t]; }); })
      .then(function (res) {
        var p = document.getElementById("log");
        if (!p) return;
        var atEnd = p.scrollTop + p.clientHeight >= p.scrollHeight - 4;
        p.textContent = res[0] ? res[1] : "(log not available: " + res[1] + ")";
        if (atEnd) p.scrollTop = p.scrollHeight; // follow the tail unless scrolled up
        p.setAttribute("data-fetched", String(Date.now()));
      })
      .catch(function () {});
  }
  if (document.getElementById("log")) {
    tail();
    setInterval(tail, 2000);
  }
})();
