// Live refresh: every data-refresh seconds, fetch this page again and swap
// the #live-region, so counts, progress and ETAs move without a reload.
// Pages work the same without it; it pauses while the tab is hidden or
// the operator is interacting with a form.
(function () {
  "use strict";
  var secs = parseInt(document.body.dataset.refresh || "0", 10);
  var box = document.getElementById("live");
  if (!secs || !box) return;
  box.parentElement.hidden = false;
  var key = "ferry.live";
  box.checked = localStorage.getItem(key) !== "off";
  box.addEventListener("change", function () { localStorage.setItem(key, box.checked ? "on" : "off"); });
  var busy = false;
  function tick() {
    if (busy || !box.checked || document.hidden) return;
    var a = document.activeElement;
    if (a && a.closest && a.closest("form")) return;
    busy = true;
    fetch(location.href, { credentials: "same-origin", headers: { "X-Ferry-Live": "1" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) return;
        var doc = new DOMParser().parseFromString(html, "text/html");
        var next = doc.getElementById("live-region"), cur = document.getElementById("live-region");
        if (next && cur) cur.replaceWith(next);
        document.body.dataset.updated = String(Date.now());
      })
      .catch(function () {})
      .then(function () { busy = false; });
  }
  setInterval(tick, secs * 1000);
})();
