// grefine report: sorting, filtering and the before/after sliders. Works from a local file.
"use strict";
(function () {
  var list = document.getElementById("cards");
  var cards = Array.prototype.slice.call(document.querySelectorAll(".card"));
  cards.forEach(function (card, index) {
    card.gIndex = index;
    card.gKeys = JSON.parse(card.getAttribute("data-keys") || "{}");
    card.gGains = JSON.parse(card.getAttribute("data-gains") || "{}");
    card.gTags = JSON.parse(card.getAttribute("data-tags") || "[]");
  });

  function value(id) {
    var element = document.getElementById(id);
    return element ? element.value : "";
  }

  function order(key, descending) {
    return function (x, y) {
      var a = x.gKeys[key], b = y.gKeys[key];
      var missingA = a === undefined || a === null, missingB = b === undefined || b === null;
      if (missingA || missingB) {
        return missingA === missingB ? x.gIndex - y.gIndex : (missingA ? 1 : -1);  // missing last
      }
      var c = typeof a === "string" ? String(a).localeCompare(String(b)) : a - b;
      if (c === 0) { return x.gIndex - y.gIndex; }
      return descending ? -c : c;
    };
  }

  function keep(card, tag, delta, change) {
    if (tag !== "all" && card.gTags.indexOf(tag) < 0) { return false; }
    if (!delta || change === "any") { return true; }
    var gain = card.gGains[delta];
    if (typeof gain !== "number") { return false; }
    return change === "improved" ? gain > 0 : change === "worsened" ? gain < 0 : gain === 0;
  }

  var page = 0;

  function apply(keepPage) {
    if (!list) { return; }
    var tag = value("filter-tag") || "all", delta = value("filter-delta"), change = value("filter-change") || "any";
    var size = parseInt(value("page-size") || "50", 10) || cards.length;
    var kept = cards.filter(function (card) { return keep(card, tag, delta, change); });
    var rest = cards.filter(function (card) { return !keep(card, tag, delta, change); });
    var pages = Math.max(1, Math.ceil(kept.length / size));
    page = keepPage ? Math.min(page, pages - 1) : 0;
    kept.sort(order(value("sort-key") || "name", value("sort-order") === "desc"));
    var fragment = document.createDocumentFragment();  // one reflow, whatever the number of cards
    kept.concat(rest).forEach(function (card, position) {
      card.hidden = !(position >= page * size && position < Math.min(kept.length, (page + 1) * size));
      fragment.appendChild(card);
    });
    list.appendChild(fragment);
    var counter = document.getElementById("shown");
    if (counter) {
      var first = kept.length ? page * size + 1 : 0, last = Math.min(kept.length, (page + 1) * size);
      counter.textContent = kept.length + " of " + cards.length + " shown" + (pages > 1 ? " (" + first + "–" + last + ", page " + (page + 1) + " of " + pages + ")" : "");
    }
    var previous = document.getElementById("page-previous"), next = document.getElementById("page-next");
    if (previous) { previous.disabled = page === 0; previous.hidden = pages < 2; }
    if (next) { next.disabled = page >= pages - 1; next.hidden = pages < 2; }
  }

  ["sort-key", "sort-order", "filter-tag", "filter-delta", "filter-change", "page-size"].forEach(function (id) {
    var element = document.getElementById(id);
    if (element) { element.addEventListener("change", function () { apply(false); }); }
  });
  [["page-previous", -1], ["page-next", 1]].forEach(function (pair) {
    var button = document.getElementById(pair[0]);
    if (button) {
      button.addEventListener("click", function () { page += pair[1]; apply(true); window.scrollTo(0, list.offsetTop); });
    }
  });

  // A file the browser cannot decode (a TIFF, a corrupt input) becomes a link, never a broken image.
  function unshowable(image) {
    var note = document.createElement("div");
    var link = document.createElement("a");
    note.className = "missing unshowable";
    link.href = image.getAttribute("src");
    link.target = "_blank";
    link.textContent = "open the file";
    note.appendChild(document.createTextNode((image.getAttribute("alt") || "image") + ": the browser cannot show this file · "));
    note.appendChild(link);
    (image.closest(".compare") || image.closest("a") || image).replaceWith(note);
  }
  Array.prototype.forEach.call(document.querySelectorAll("img[src]"), function (image) {
    if (image.complete && image.naturalWidth === 0) {
      unshowable(image);
    } else {
      image.addEventListener("error", function () { unshowable(image); });
    }
  });

  Array.prototype.forEach.call(document.querySelectorAll(".compare"), function (box) {
    var range = box.querySelector("input.slider");
    function move() { box.style.setProperty("--pos", range.value + "%"); }
    range.addEventListener("input", move);
    move();
  });

  apply(false);
})();
