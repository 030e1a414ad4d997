// imagegen audit treemap: self-contained, no network. Squarified layout of nested nodes
// [name, bytes, children?]; click a cell to zoom in, the breadcrumb to go back up.
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("audit-data").textContent);
  var views = DATA.views, current = null, stack = [];
  var box = document.getElementById("treemap"), crumbs = document.getElementById("crumbs");
  var tip = document.getElementById("tip");

  function human(n) {
    var u = [["GB", 1e9], ["MB", 1e6], ["kB", 1e3]];
    for (var i = 0; i < u.length; i++) if (n >= u[i][1]) { var v = n / u[i][1]; return (v < 10 ? v.toFixed(2) : v.toFixed(1)) + " " + u[i][0]; }
    return n + " B";
  }
  function hue(s) { var h = 0; for (var i = 0; i < s.length; i++) h = (h * 31 + s.charCodeAt(i)) >>> 0; return h % 360; }
  function worst(row, sum, s) {
    var mx = 0, mn = Infinity;
    for (var i = 0; i < row.length; i++) { mx = Math.max(mx, row[i].a); mn = Math.min(mn, row[i].a); }
    return Math.max(s * s * mx / (sum * sum), (sum * sum) / (s * s * mn));
  }
  function squarify(nodes, x, y, w, h) {
    var total = 0, out = [];
    nodes.forEach(function (n) { total += n[1]; });
    if (total <= 0 || w <= 0 || h <= 0) return out;
    var items = nodes.filter(function (n) { return n[1] > 0; }).map(function (n) { return { n: n, a: n[1] * w * h / total }; });
    while (items.length) {
      var s = Math.min(w, h), row = [items[0]], sum = items[0].a, i = 1;
      while (i < items.length) {
        var cand = row.concat([items[i]]);
        if (worst(cand, sum + items[i].a, s) <= worst(row, sum, s)) { row = cand; sum += items[i].a; i++; } else break;
      }
      if (w >= h) {
        var cw = sum / h, yy = y;
        row.forEach(function (r) { var rh = r.a / cw; out.push({ n: r.n, x: x, y: yy, w: cw, h: rh }); yy += rh; });
        x += cw; w -= cw;
      } else {
        var ch = sum / w, xx = x;
        row.forEach(function (r) { var rw = r.a / ch; out.push({ n: r.n, x: xx, y: y, w: rw, h: ch }); xx += rw; });
        y += ch; h -= ch;
      }
      items = items.slice(i);
    }
    return out;
  }
  function cell(parent, r, depth, color, path) {
    var d = document.createElement("div");
    d.className = "tm-cell tm-d" + depth;
    d.style.left = r.x + "px"; d.style.top = r.y + "px";
    d.style.width = Math.max(0, r.w - 1) + "px"; d.style.height = Math.max(0, r.h - 1) + "px";
    d.style.background = "hsl(" + color + "," + (depth ? 45 : 55) + "%," + (depth ? 78 : 62) + "%)";
    d.setAttribute("data-name", r.n[0]); d.setAttribute("data-bytes", r.n[1]);
    var label = r.n[0] + " — " + human(r.n[1]);
    d.title = path.concat([r.n[0]]).join(" / ") + "\n" + human(r.n[1]);
    if (r.w > 40 && r.h > 14) { var l = document.createElement("span"); l.className = "tm-label"; l.textContent = label; d.appendChild(l); }
    parent.appendChild(d);
    return d;
  }
  function draw() {
    var node = stack[stack.length - 1];
    box.innerHTML = "";
    var W = box.clientWidth, H = box.clientHeight;
    var kids = (node[2] || []).slice().sort(function (a, b) { return b[1] - a[1]; });
    var path = stack.map(function (n) { return n[0]; });
    squarify(kids, 0, 0, W, H).forEach(function (r) {
      var color = stack.length > 1 ? hue(stack[1][0]) : hue(r.n[0]);
      var d = cell(box, r, 0, color, path);
      if (r.n[2] && r.n[2].length) {
        d.classList.add("tm-zoom");
        d.addEventListener("click", function () { stack.push(r.n); draw(); });
        if (r.w > 60 && r.h > 40) {
          var inner = squarify(r.n[2].slice().sort(function (a, b) { return b[1] - a[1]; }), 2, 16, r.w - 5, r.h - 19);
          inner.forEach(function (ir) { cell(d, ir, 1, color, path.concat([r.n[0]])); });
        }
      }
    });
    crumbs.innerHTML = "";
    stack.forEach(function (n, i) {
      var a = document.createElement("a"); a.href = "#"; a.textContent = n[0] + " (" + human(n[1]) + ")";
      a.addEventListener("click", function (e) { e.preventDefault(); stack = stack.slice(0, i + 1); draw(); });
      crumbs.appendChild(a);
      if (i < stack.length - 1) crumbs.appendChild(document.createTextNode(" › "));
    });
    box.setAttribute("data-rendered", String(box.querySelectorAll(".tm-cell").length));
  }
  function show(name) {
    current = name; stack = [views[name]];
    document.querySelectorAll("#views button").forEach(function (b) { b.classList.toggle("on", b.getAttribute("data-view") === name); });
    draw();
  }
  document.querySelectorAll("#views button").forEach(function (b) {
    b.addEventListener("click", function () { show(b.getAttribute("data-view")); });
  });
  window.addEventListener("resize", function () { if (current) draw(); });
  show(DATA.initial);
})();
