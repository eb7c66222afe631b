// The console's only script of its own: draws the Mermaid diagrams of the page (from the
// locally served mermaid.min.js) and marks a route's current state. No inline script: the
// page's CSP allows scripts from this origin only.
(function () {
  "use strict";

  function markCurrent(pre) {
    var node = pre.getAttribute("data-current");
    if (!node) return;
    // The diagram text says `class X current` (Mermaid styles the node with it); this also puts
    // the class on the state's SVG group itself, whatever id prefix a Mermaid version gives it.
    var pattern = new RegExp("(^|-)state-" + node.replace(/[^\w]/g, "\\$&") + "-\\d+$");
    pre.querySelectorAll("svg g[id]").forEach(function (g) {
      if (pattern.test(g.id)) g.classList.add("current");
    });
  }

  function draw() {
    var nodes = Array.prototype.slice.call(document.querySelectorAll("pre.mermaid"));
    if (!nodes.length || !window.mermaid) return;
    window.mermaid.initialize({ startOnLoad: false, securityLevel: "strict" });
    window.mermaid.run({ nodes: nodes }).then(function () {
      nodes.forEach(markCurrent);
      document.body.setAttribute("data-diagrams", "rendered");
    }, function (error) {
      document.body.setAttribute("data-diagrams", "failed");
      nodes.forEach(function (pre) { pre.setAttribute("data-error", String(error && error.message || error)); });
    });
  }

  // An action htmx sent and the server refused (a 4xx or 5xx, problem+json) is not swapped into
  // the page by htmx; its detail is shown here, so a click never ends in silence.
  function say(text) {
    var box = document.getElementById("console-message");
    if (!box) return;
    box.textContent = text;
    box.hidden = !text;
  }

  document.addEventListener("htmx:beforeRequest", function () { say(""); });
  document.addEventListener("htmx:responseError", function (event) {
    var xhr = event.detail.xhr;
    var text = xhr.status + " " + xhr.statusText;
    try {
      var problem = JSON.parse(xhr.responseText);
      if (problem && problem.detail) text = problem.detail;
    } catch (ignored) { /* not problem+json: the status line says enough */ }
    say(text);
  });
  document.addEventListener("htmx:sendError", function () {
    say("the server could not be reached; try again");
  });

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", draw);
  } else {
    draw();
  }
})();
