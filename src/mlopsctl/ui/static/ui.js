// mlopsctl dashboard: small enhancements; every page works without this file.
(function () {
  "use strict";
  // <select data-autosubmit>: apply the form when the choice changes
  document.querySelectorAll("select[data-autosubmit]").forEach(function (el) {
    el.addEventListener("change", function () { if (el.form) el.form.submit(); });
  });
  // Runs list: "Compare selected" is enabled from two ticked runs and says how many
  var form = document.getElementById("compare-form");
  if (form) {
    var button = document.getElementById("compare-button");
    var update = function () {
      var n = form.querySelectorAll("input[name=runs]:checked").length;
      button.disabled = n < 2;
      button.textContent = n < 2 ? "Compare selected (tick 2 or more)" : "Compare " + n + " runs";
    };
    form.addEventListener("change", update);
    update();
    // one URL of comma-separated ids (/compare?runs=3,4) instead of a repeated parameter
    form.addEventListener("submit", function (ev) {
      var ids = Array.prototype.map.call(form.querySelectorAll("input[name=runs]:checked"), function (c) { return c.value; });
      ev.preventDefault();
      window.location.href = "/compare?runs=" + ids.join(",");
    });
  }
  // Compare: toggle "only differences" in place (the link reloads the page without this script)
  var toggle = document.getElementById("diff-toggle");
  var table = document.getElementById("compare-table");
  if (toggle && table) {
    toggle.addEventListener("click", function (ev) {
      ev.preventDefault();
      var on = table.classList.toggle("only-diff");
      toggle.classList.toggle("on", on);
      toggle.setAttribute("aria-checked", on ? "true" : "false");
      toggle.textContent = "only differences: " + (on ? "on" : "off");
      var url = new URL(window.location.href);
      if (on) { url.searchParams.set("diff", "1"); } else { url.searchParams.delete("diff"); }
      window.history.replaceState(null, "", url.toString());
    });
  }
})();
