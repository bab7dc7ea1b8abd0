// ember dashboard: refresh a live page (a running job's) in place, every few seconds.
// Shipped in the package and served from /static; no library, no network beyond this dashboard.
// It stops once a refreshed page is no longer live (the job ended), and never runs on other pages.
(function () {
  "use strict";
  var PERIOD_MS = 2000;
  var FAILURES_MAX = 30;
  var failures = 0;

  function refresh() {
    if (document.body.getAttribute("data-live") !== "1") {
      return;
    }
    fetch(window.location.href, { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.text();
      })
      .then(function (text) {
        failures = 0;
        var fresh = new DOMParser().parseFromString(text, "text/html");
        var main = fresh.getElementById("main");
        if (main) {
          document.getElementById("main").replaceWith(document.importNode(main, true));
        }
        document.body.setAttribute("data-live", fresh.body.getAttribute("data-live") || "0");
        document.body.setAttribute("data-refreshed", String(Date.now()));
        schedule();
      })
      .catch(function () {
        failures += 1;
        if (failures < FAILURES_MAX) { schedule(); }
      });
  }

  function schedule() {
    if (document.body.getAttribute("data-live") === "1") {
      window.setTimeout(refresh, PERIOD_MS);
    }
  }

  document.addEventListener("DOMContentLoaded", schedule);
})();
