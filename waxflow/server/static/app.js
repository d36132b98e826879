// waxflow server: the executions page refreshes itself. It asks the JSON API for the
// counts and the newest execution under the current filters every few seconds, and
// reloads the page only when they changed (and the tab is visible).
(function () {
  "use strict";
  var el = document.getElementById("counts");
  if (!el) { return; }
  var every = parseInt(el.getAttribute("data-refresh-ms"), 10) || 5000;
  var api = el.getAttribute("data-api");
  var seen = [el.getAttribute("data-total"), el.getAttribute("data-newest"),
              el.getAttribute("data-newest-state")].join("|");
  var note = document.getElementById("refresh");
  function tick() {
    if (document.hidden) { return; }
    fetch(api, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (d) {
        if (!d) { return; }
        var now = [String(d.total), d.newest || "", d.newestState || ""].join("|");
        if (note) { note.textContent = "auto-refresh · checked " + new Date().toLocaleTimeString(); }
        if (now !== seen) { window.location.reload(); }
      })
      .catch(function () { if (note) { note.textContent = "auto-refresh · server unreachable"; } });
  }
  window.setInterval(tick, every);
})();
