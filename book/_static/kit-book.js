/* The book's glue between its vendored widget bundle and the rest of the page.
 *
 * Loaded on every page after widgets/require.js and before widgets/embed-amd.js
 * (html_js_files in book/_config.yml). Two things, so that the console stays clean:
 *
 * 1. Fonts. The bundle (@jupyter-widgets/html-manager 1.0.6) holds several modules, each of
 *    which looks for its font files (Font Awesome 4, for the widgets' icons) next to itself, at
 *    an address require.js derives from the module's name, relative to the page:
 *    notebooks/x/@jupyter-widgets/ for "@jupyter-widgets/controls", notebooks/x/@jupyter-widgets/
 *    html-manager/dist/ for ".../dist/libembed-amd". Whichever module's CSS comes first asks.
 *    We map both folders to _static/widgets/, where the Makefile copies the fonts.
 * 2. MathJax. The bundle typesets widget labels with the MathJax 2 call
 *    MathJax.Hub.Queue(["Typeset", MathJax.Hub, element]); the book loads MathJax 3, which has
 *    no Hub (a TypeError per widget). We give MathJax 3 a Hub whose Queue typesets the element
 *    with MathJax 3's own typesetPromise, one job after another, as its documentation advises.
 *
 * And one for the layout (kit-book.css): 3. the column names of output tables (size tables such
 * as image_size, train_images, ...) may break after an underscore, so that a wide table wraps
 * its header inside the column instead of sticking out of it. 4. A page that asks for the full
 * width (a <div class="kit-full-width"> in it: the scoreboard) opens with the navigation
 * collapsed, as the header's menu button would leave it; the same button brings it back.
 *
 * And the explorers (kit.viz.explorer): 5. each .kit-explorer holds its frames, drawn when the
 * notebook ran, as JSON keyed by the controls' positions ("2,0,0", a control the book holds fixed
 * at position 0); moving a control shows the
 * frame for the new positions, and its label the value. No kernel, no request.
 * 6. Search: Sphinx's result snippets are the text of the page's HTML, where formulas are
 * still TeX source (MathJax typesets them only on the page itself); the snippets drop
 * formulas, each replaced by an ellipsis, and the kit source folded on a page.
 */
(function () {
  "use strict";
  var here = document.currentScript.src.replace(/[^/]*$/, "");  // .../_static/

  // 1. The bundle's modules, and so their public path for fonts, live in _static/widgets/.
  if (window.require && window.require.config) {
    window.require.config({ paths: {
      "@jupyter-widgets": here + "widgets",                    // base, controls, html-manager
      "@jupyter-widgets/html-manager/dist": here + "widgets",  // .../dist/libembed-amd
    } });
  }

  // 2. A MathJax 2 Hub.Queue on top of MathJax 3.
  function typeset(element) {
    var mathjax = window.MathJax;
    if (!mathjax || !mathjax.typesetPromise || !mathjax.startup) return;
    mathjax.startup.promise = mathjax.startup.promise
      .then(function () { return mathjax.typesetPromise(element ? [element] : undefined); })
      .catch(function (error) { console.warn("MathJax typeset failed:", error); });
  }
  function installHub() {
    var mathjax = window.MathJax;
    if (!mathjax || !mathjax.version || mathjax.Hub) return;  // absent, still a config, or MathJax 2
    mathjax.Hub = {
      Queue: function () {
        for (var i = 0; i < arguments.length; i++) {
          var job = arguments[i];
          if (Array.isArray(job) && job[0] === "Typeset") typeset(job[2]);
          else if (typeof job === "function") job();
        }
      },
    };
  }
  // MathJax 3 is a deferred script: it has replaced the window.MathJax configuration object
  // with itself by DOMContentLoaded, and the widgets render later, on the load event.
  document.addEventListener("DOMContentLoaded", installHub);
  window.addEventListener("load", installHub);

  // 3. A line-break opportunity (<wbr>) after each underscore of an output table's header cells.
  function breakableNames() {
    document.querySelectorAll(".cell_output table th").forEach(function (cell) {
      if (cell.children.length || cell.textContent.indexOf("_") < 0) return;  // plain text only
      var parts = cell.textContent.split("_");
      cell.textContent = "";
      parts.forEach(function (part, i) {
        if (i) { cell.append("_"); cell.append(document.createElement("wbr")); }
        cell.append(part);
      });
    });
  }
  document.addEventListener("DOMContentLoaded", breakableNames);

  // 4. Full-width pages: the navigation collapsed (sphinx-book-theme's own class for it).
  document.addEventListener("DOMContentLoaded", function () {
    var navigation = document.getElementById("pst-primary-sidebar");
    if (navigation && document.querySelector(".kit-full-width")) navigation.classList.add("pst-sidebar-hidden");
  });

  // 5. Explorers: precomputed frames swapped as the controls move.
  function wireExplorer(box) {
    var frames = JSON.parse(box.querySelector("script.kit-explorer-frames").textContent);
    var image = box.querySelector("img.kit-explorer-image");
    var controls = box.querySelectorAll("[data-kit-control]");
    // one position per control, in order: a slider's value, 0 for a control fixed in the book
    var slots = box.querySelectorAll(".kit-explorer-controls > label, .kit-explorer-controls > .kit-explorer-fixed");
    function show() {
      var key = Array.prototype.map.call(slots, function (slot) {
        var control = slot.querySelector("[data-kit-control]");
        return control ? control.value : "0";
      }).join(",");
      controls.forEach(function (control) {
        var label = control.parentNode.querySelector("output");
        if (label) label.textContent = JSON.parse(control.dataset.labels)[control.value];
      });
      if (frames[key]) image.src = frames[key];
    }
    controls.forEach(function (control) { control.addEventListener("input", show); });
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll(".kit-explorer").forEach(wireExplorer);
  });

  // 6. Search snippets without TeX source.
  function plainSnippets() {
    if (typeof Search === "undefined" || !Search.htmlToText || Search.htmlToText.kitPlain) return;
    var htmlToText = Search.htmlToText;
    Search.htmlToText = function (htmlString, anchor) {
      var page = new DOMParser().parseFromString(htmlString, "text/html");
      page.querySelectorAll(".math, mjx-container, details.kit-source").forEach(function (el) {
        el.replaceWith(page.createTextNode(" … "));
      });
      return htmlToText(page.documentElement.outerHTML, anchor);
    };
    Search.htmlToText.kitPlain = true;
  }
  plainSnippets();
  document.addEventListener("DOMContentLoaded", plainSnippets);
})();
