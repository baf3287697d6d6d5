/* Followup view beacons: <script src="…/v1/beacon.js" data-token="PORTAL_TOKEN" async></script> */
(function (d, w) {
  var me = d.currentScript;
  if (!me || !w.IntersectionObserver || !navigator.sendBeacon) return;
  var tok = me.getAttribute('data-token');
  if (!tok) return;
  var url = me.getAttribute('data-endpoint') || new URL('/v1/beacons', me.src).href;
  var now = Date.now, sid = now().toString(36) + Math.random().toString(36).slice(2, 10);
  var n = 0, q = [], inView = {}, st = {}, last = 0, act = now(), opened = 0;
  var IDLE = 6e5, BEAT = 15e3;
  function ev(kind, sec, ms) {
    q.push({ id: sid + '.' + ++n, kind: kind, section: sec || undefined,
      visible_ms: Math.max(0, Math.round(ms || 0)), time: now() });
  }
  function send() {
    while (q.length) {
      var body = JSON.stringify({ token: tok, session_id: sid, events: q.splice(0, 40) });
      if (!navigator.sendBeacon(url, body))
        fetch(url, { method: 'POST', body: body, keepalive: true, mode: 'no-cors',
          headers: { 'Content-Type': 'text/plain' } }).catch(function () {});
    }
  }
  function shown() { return d.visibilityState == 'visible' && now() - act < IDLE; }
  function start() {
    if (!shown()) return;
    var t = now();
    if (!opened) { opened = 1; ev('open'); send(); }
    if (!last) last = t;
    for (var k in inView) if (inView[k] && !st[k]) st[k] = t;
  }
  function stop() {
    var t = now();
    if (last) { ev('heartbeat', 0, t - last); last = 0; }
    for (var k in st) if (st[k]) { ev('section_visible', k, t - st[k]); st[k] = 0; }
  }
  function init() {
    var io = new IntersectionObserver(function (es) {
      es.forEach(function (e) {
        var k = e.target.getAttribute('data-followup-section');
        var on = e.isIntersecting && e.intersectionRatio >= 0.5;
        if (on && !inView[k]) { inView[k] = 1; if (last) st[k] = now(); }
        else if (!on && inView[k]) {
          inView[k] = 0;
          if (st[k]) { ev('section_visible', k, now() - st[k]); st[k] = 0; }
        }
      });
    }, { threshold: [0, 0.5, 1] });
    d.querySelectorAll('[data-followup-section]').forEach(function (el) { io.observe(el); });
    ['scroll', 'pointerdown', 'keydown', 'touchstart', 'mousemove'].forEach(function (t) {
      w.addEventListener(t, function () { act = now(); if (!last) start(); }, { passive: true });
    });
    d.addEventListener('visibilitychange', function () {
      if (d.visibilityState == 'visible') { act = now(); start(); } else { stop(); send(); }
    });
    w.addEventListener('pagehide', function () { stop(); ev('close'); send(); });
    w.addEventListener('pageshow', function (e) { if (e.persisted) { act = now(); start(); } });
    setInterval(function () {
      if (!last) return;
      stop();
      start();
      send();
    }, BEAT);
    start();
  }
  if (d.readyState == 'loading') d.addEventListener('DOMContentLoaded', init); else init();
})(document, window);
