// The report's rows: unpacks the embedded gzip+base64 JSON (DecompressionStream, built into the
// browser) and draws a page of rows at a time. Every value is set as text (textContent), never
// as markup; nothing is fetched.
(function () {
  "use strict";
  var PAGE = 50, SBS_PAGE = 20;
  var $ = function (id) { return document.getElementById(id); };

  function unpack(text) {
    var bin = atob(text.trim());
    var bytes = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return new Response(stream).text().then(JSON.parse);
  }

  function el(tag, text, cls) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function textCell(value, cls) {
    var td = el("td");
    var div = el("div", value === null || value === undefined ? "" : value, "cell" + (cls ? " " + cls : ""));
    td.appendChild(div);
    return td;
  }

  function fmtNum(v, digits) {
    if (v === null || v === undefined) return "–";
    return Number(v).toLocaleString("en-US", { maximumFractionDigits: digits });
  }

  function compare(a, b) {
    if (a === b) return 0;
    if (a === null || a === undefined) return 1;
    if (b === null || b === undefined) return -1;
    if (typeof a === "number" && typeof b === "number") return a - b;
    if (typeof a === "boolean" && typeof b === "boolean") return (a ? 1 : 0) - (b ? 1 : 0);
    return String(a).localeCompare(String(b), undefined, { numeric: true });
  }

  function pager(prefix, state, total, size, draw) {
    var pages = Math.max(1, Math.ceil(total / size));
    if (state.page >= pages) state.page = pages - 1;
    $(prefix + "-page").textContent = "page " + (state.page + 1).toLocaleString("en-US") + " of " + pages.toLocaleString("en-US");
    $(prefix + "-prev").disabled = state.page === 0;
    $(prefix + "-next").disabled = state.page >= pages - 1;
  }

  function debounce(fn, ms) {
    var timer = null;
    return function () { clearTimeout(timer); timer = setTimeout(fn, ms); };
  }

  function start(data) {
    var c = data.columns, n = c.id.length, models = data.models;
    var failed = new Array(n);
    for (var i = 0; i < n; i++) failed[i] = !c.ok[i] || c.passed[i] === false;
    var haystack = null;
    function hay(i) {
      if (haystack === null) {
        haystack = new Array(n);
        for (var j = 0; j < n; j++) {
          var parts = [c.id[j], c.output[j], c.error[j], c.error_type[j]];
          if (c.expected) parts.push(c.expected[j]);
          for (var k = 0; k < c.inputs.length; k++) parts.push(c.inputs[k][j]);
          haystack[j] = parts.filter(function (p) { return p !== null && p !== undefined; }).join("\u0000").toLowerCase();
        }
      }
      return haystack[i];
    }

    // -- the rows table -------------------------------------------------------------------
    var cols = [{ key: "id", label: "id", get: function (i) { return c.id[i]; } }];
    if (models.length > 1 || models[0]) cols.push({ key: "model", label: "model", get: function (i) { return models[c.model[i]] || "(no model)"; } });
    data.inputs.forEach(function (name, k) { cols.push({ key: "in" + k, label: name, get: function (i) { return c.inputs[k][i]; } }); });
    if (c.expected) cols.push({ key: "expected", label: "expected (" + data.expected + ")", get: function (i) { return c.expected[i]; } });
    cols.push({ key: "output", label: "output", get: function (i) { return c.output[i]; } });
    if (data.scored) {
      cols.push({ key: "score", label: "score", num: true, get: function (i) { return c.score[i]; } });
      cols.push({ key: "passed", label: "passed", get: function (i) { return c.passed[i]; } });
    }
    cols.push({ key: "error", label: "error", get: function (i) { return c.ok[i] ? null : (c.error_type[i] || "error") + ": " + (c.error[i] || ""); } });
    cols.push({ key: "latency", label: "latency ms", num: true, get: function (i) { return c.latency_ms[i]; } });

    var state = { page: 0, sort: null, desc: false, view: [] };
    var head = $("row-head");
    cols.forEach(function (col) {
      var th = el("th");
      var button = el("button", col.label);
      button.type = "button";
      button.addEventListener("click", function () {
        if (state.sort === col.key) state.desc = !state.desc; else { state.sort = col.key; state.desc = false; }
        head.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", state.desc ? "descending" : "ascending");
        refilter();
      });
      th.appendChild(button);
      head.appendChild(th);
    });

    function refilter() {
      var onlyFailed = $("failed-only").checked;
      var model = $("model-filter").value;
      var text = $("text-filter").value.trim().toLowerCase();
      var view = [];
      for (var i = 0; i < n; i++) {
        if (onlyFailed && !failed[i]) continue;
        if (model !== "" && String(c.model[i]) !== model) continue;
        if (text && hay(i).indexOf(text) < 0) continue;
        view.push(i);
      }
      if (state.sort) {
        var col = cols.filter(function (x) { return x.key === state.sort; })[0];
        var sign = state.desc ? -1 : 1;
        view.sort(function (a, b) { return sign * compare(col.get(a), col.get(b)) || a - b; });
      } else {
        view.sort(function (a, b) { return (failed[b] ? 1 : 0) - (failed[a] ? 1 : 0) || a - b; });
      }
      state.view = view;
      state.page = 0;
      draw();
    }

    function draw() {
      var body = $("row-body");
      var rows = document.createDocumentFragment();
      var first = state.page * PAGE, view = state.view;
      for (var r = first; r < Math.min(view.length, first + PAGE); r++) {
        var i = view[r];
        var tr = el("tr");
        tr.dataset.row = String(i);
        if (failed[i]) tr.className = "failed";
        cols.forEach(function (col) {
          var v = col.get(i);
          if (col.key === "passed") { tr.appendChild(el("td", v === null ? "–" : v ? "✓ passed" : "✗ failed", v ? "good nowrap" : v === false ? "bad nowrap" : "muted")); return; }
          if (col.num) { tr.appendChild(el("td", fmtNum(v, col.key === "score" ? 3 : 0), "num")); return; }
          tr.appendChild(textCell(v, col.key === "error" && v ? "bad" : ""));
        });
        rows.appendChild(tr);
      }
      body.replaceChildren(rows);
      var shown = view.length === 0 ? "no rows match" :
        "rows " + (first + 1).toLocaleString("en-US") + "–" + Math.min(view.length, first + PAGE).toLocaleString("en-US") + " of " + view.length.toLocaleString("en-US");
      $("row-count").textContent = shown + (view.length !== n ? " (filtered from " + n.toLocaleString("en-US") + ")" : "");
      pager("row", state, view.length, PAGE);
    }

    $("failed-only").addEventListener("change", refilter);
    $("model-filter").addEventListener("change", refilter);
    $("text-filter").addEventListener("input", debounce(refilter, 150));
    $("row-prev").addEventListener("click", function () { if (state.page > 0) { state.page--; draw(); } });
    $("row-next").addEventListener("click", function () { if ((state.page + 1) * PAGE < state.view.length) { state.page++; draw(); } });
    refilter();

    // -- a model matrix: outputs side by side ----------------------------------------------
    if (!$("sbs-body")) return;
    var groups = [], byId = new Map();
    for (var i2 = 0; i2 < n; i2++) {
      var key = c.id[i2];
      var g = byId.get(key);
      if (!g) { g = { first: i2, rows: new Array(models.length).fill(-1) }; byId.set(key, g); groups.push(g); }
      if (g.rows[c.model[i2]] < 0) g.rows[c.model[i2]] = i2;
    }
    var sbs = { page: 0, view: [] };
    var sbsHead = $("sbs-head");
    sbsHead.appendChild(el("th", "id"));
    data.inputs.forEach(function (name) { sbsHead.appendChild(el("th", name)); });
    if (c.expected) sbsHead.appendChild(el("th", "expected (" + data.expected + ")"));
    models.forEach(function (m) { sbsHead.appendChild(el("th", m || "(no model)")); });

    function sbsFilter() {
      var onlyFailed = $("sbs-failed").checked, text = $("sbs-text").value.trim().toLowerCase();
      sbs.view = groups.filter(function (g) {
        if (onlyFailed && !g.rows.some(function (i) { return i >= 0 && failed[i]; })) return false;
        if (text && !g.rows.some(function (i) { return i >= 0 && hay(i).indexOf(text) >= 0; })) return false;
        return true;
      });
      sbs.page = 0;
      sbsDraw();
    }

    function sbsDraw() {
      var frag = document.createDocumentFragment(), first = sbs.page * SBS_PAGE;
      sbs.view.slice(first, first + SBS_PAGE).forEach(function (g) {
        var tr = el("tr"), i = g.first;
        tr.appendChild(textCell(c.id[i]));
        c.inputs.forEach(function (values) { tr.appendChild(textCell(values[i])); });
        if (c.expected) tr.appendChild(textCell(c.expected[i]));
        g.rows.forEach(function (j) {
          if (j < 0) { tr.appendChild(el("td", "(no row)", "muted")); return; }
          var td = textCell(c.ok[j] ? c.output[j] : (c.error_type[j] || "error") + ": " + (c.error[j] || ""), c.ok[j] ? "" : "bad");
          if (data.scored || !c.ok[j]) td.insertBefore(el("div", failed[j] ? "✗" : "✓", failed[j] ? "bad" : "good"), td.firstChild);
          tr.appendChild(td);
        });
        frag.appendChild(tr);
      });
      $("sbs-body").replaceChildren(frag);
      $("sbs-count").textContent = sbs.view.length.toLocaleString("en-US") + " of " + groups.length.toLocaleString("en-US") + " inputs";
      pager("sbs", sbs, sbs.view.length, SBS_PAGE);
    }

    $("sbs-failed").addEventListener("change", sbsFilter);
    $("sbs-text").addEventListener("input", debounce(sbsFilter, 150));
    $("sbs-prev").addEventListener("click", function () { if (sbs.page > 0) { sbs.page--; sbsDraw(); } });
    $("sbs-next").addEventListener("click", function () { if ((sbs.page + 1) * SBS_PAGE < sbs.view.length) { sbs.page++; sbsDraw(); } });
    sbsFilter();
  }

  var blob = $("report-data");
  unpack(blob.textContent).then(start).catch(function (err) {
    $("row-count").textContent = "the rows could not be read: " + err;
    console.error(err);
  });
})();
