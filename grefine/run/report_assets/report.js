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

  function apply() {
    if (!list) { return; }
    var tag = value("filter-tag") || "all", delta = value("filter-delta"), change = value("filter-change") || "any";
    var shown = 0;
    cards.slice().sort(order(value("sort-key") || "name", value("sort-order") === "desc")).forEach(function (card) {
      var visible = keep(card, tag, delta, change);
      card.hidden = !visible;
      shown += visible ? 1 : 0;
      list.appendChild(card);
    });
    var counter = document.getElementById("shown");
    if (counter) { counter.textContent = shown + " of " + cards.length + " shown"; }
  }

  ["sort-key", "sort-order", "filter-tag", "filter-delta", "filter-change"].forEach(function (id) {
    var element = document.getElementById(id);
    if (element) { element.addEventListener("change", apply); }
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

  apply();
})();
