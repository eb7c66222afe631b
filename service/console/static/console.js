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

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", draw);
  } else {
    draw();
  }
})();
