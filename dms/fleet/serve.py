"""``dms fleet serve``: a small page over the fleet store (the standard library's
``http.server``, one thread per request, read-only).

Token-protected like the preview (:mod:`dms.preview.server`): ``GET /?token=T`` checks T in
constant time, sets an HttpOnly, SameSite=Strict cookie (a keyed hash of the token, never the
token) and redirects to ``/``; every other request needs that cookie or ``Authorization: Bearer
T``, else 401. It listens on 127.0.0.1 unless told otherwise.

The page shows the devices and their last state, a timeline of each device's alerts and the
alerts per hour and type as stacked bars, from ``GET /api/fleet?hours=H`` (refreshed every
few seconds). Everything is drawn by the page itself (inline SVG): no file from elsewhere.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Mapping
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from dms.errors import DmsError
from dms.fleet.report import devices, hourly, timeline
from dms.fleet.store import Store, shown

log = logging.getLogger(__name__)

COOKIE = "dms_fleet"
MIN_TOKEN_BYTES = 16
MAX_HOURS = 24 * 31
TIMELINE_LIMIT = 20_000  # alert points sent to the page, newest first


def fleet_token(environ: Mapping[str, str], variable: str) -> bytes:
    """The access token in ``variable``; DmsError naming it when unset or too short."""
    value = environ.get(variable, "")
    if not value:
        raise DmsError(f"fleet serve: no access token (environment variable {variable} is not "
                       f"set; e.g. export {variable}=$(openssl rand -hex 32))")
    token = value.encode("utf-8")
    if len(token) < MIN_TOKEN_BYTES:
        raise DmsError(f"fleet serve: the token in ${variable} has {len(token)} bytes; use at "
                       f"least {MIN_TOKEN_BYTES} (e.g. openssl rand -hex 32)")
    return token


def fleet_view(store: Store, hours: float, now_wall_s: float) -> dict[str, Any]:
    """What the page shows: devices, hourly counts per type, each device's alerts."""
    since = now_wall_s - hours * 3600.0
    with store.connect() as conn:
        return {"now_wall_s": now_wall_s, "since_wall_s": since, "hours": hours,
                "db": shown(store.url), "devices": devices(conn, since),
                "hourly": hourly(conn, since, now_wall_s),
                "timeline": timeline(conn, since, TIMELINE_LIMIT)}


class FleetServer:
    def __init__(self, store: Store, token: bytes, host: str = "127.0.0.1",
                 port: int = 8089) -> None:
        self.store = store
        self.host, self._port = host, port
        self._token = token
        self.cookie_value = hmac.new(token, b"dms-fleet-view", hashlib.sha256).hexdigest()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self) -> FleetServer:
        handler = type("Handler", (_Handler,), {"app": self})
        try:
            self._httpd = _Server((self.host, self._port), handler)
        except OSError as exc:
            raise DmsError(f"fleet serve: cannot listen on {self.host}:{self._port} "
                           f"({exc.strerror or exc})") from None
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.5}, name="dms-fleet-http",
                                        daemon=True)
        self._thread.start()
        log.info("fleet serve: %s (%s)", self.url, "this machine only" if self.host in (
            "127.0.0.1", "::1", "localhost") else "REACHABLE FROM THE NETWORK")
        return self

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def token_ok(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode("utf-8"), self._token)

    def cookie_ok(self, header: str | None) -> bool:
        if not header:
            return False
        try:
            morsel = SimpleCookie(header).get(COOKIE)
        except Exception:  # noqa: BLE001 - a malformed cookie is no cookie
            return False
        return morsel is not None and hmac.compare_digest(morsel.value.encode(),
                                                          self.cookie_value.encode())


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("fleet serve: error while serving %s", client_address)


class _Handler(BaseHTTPRequestHandler):
    app: FleetServer
    server_version = "dms-fleet"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass  # the query string may hold the token: never logged

    def _send(self, status: int, body: bytes, ctype: str,
              headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _allowed(self) -> bool:
        auth = self.headers.get("Authorization", "")
        bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        return self.app.token_ok(bearer) or self.app.cookie_ok(self.headers.get("Cookie"))

    def _unauthorised(self, what: str) -> None:
        log.warning("fleet serve: %s from %s refused: no valid token", what,
                    self.client_address[0])
        self._send(HTTPStatus.UNAUTHORIZED, b"401: a valid fleet token is needed\n",
                   "text/plain; charset=utf-8", {"WWW-Authenticate": 'Bearer realm="dms-fleet"'})

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path == "/" and "token" in query:
            if not self.app.token_ok(query["token"][0]):
                return self._unauthorised("page")
            cookie = f"{COOKIE}={self.app.cookie_value}; HttpOnly; SameSite=Strict; Path=/"
            return self._send(HTTPStatus.SEE_OTHER, b"", "text/plain",
                              {"Location": "/", "Set-Cookie": cookie})
        if not self._allowed():
            return self._unauthorised(f"GET {url.path}")
        if url.path == "/":
            return self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8",
                              {"Content-Security-Policy": "default-src 'self'; "
                               "script-src 'unsafe-inline'; style-src 'unsafe-inline'"})
        if url.path == "/api/fleet":
            try:
                hours = float((query.get("hours") or ["24"])[0])
            except ValueError:
                hours = -1.0
            if not 0 < hours <= MAX_HOURS:
                return self._send(HTTPStatus.BAD_REQUEST,
                                  f"hours must be in (0, {MAX_HOURS}]\n".encode(), "text/plain")
            try:
                view = fleet_view(self.app.store, hours, time.time())
            except Exception as exc:  # the database is down: say so, keep serving
                log.warning("fleet serve: cannot read the store: %s", exc)
                return self._send(HTTPStatus.SERVICE_UNAVAILABLE,
                                  json.dumps({"error": f"cannot read the store: {exc}"}).encode(),
                                  "application/json")
            return self._send(HTTPStatus.OK, json.dumps(view).encode(), "application/json")
        self._send(HTTPStatus.NOT_FOUND, b"404\n", "text/plain")


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dms fleet</title>
<style>
body{font:14px system-ui,sans-serif;margin:16px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:18px 0 6px}
#meta{color:#666;font-size:12px} table{border-collapse:collapse;background:#fff}
td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}
th{background:#f0f0f0} .online{color:#1a7f37;font-weight:600} .offline{color:#b42318;
font-weight:600} .unknown{color:#888} svg{background:#fff;border:1px solid #ddd}
.legend span{display:inline-block;margin-right:14px} .sw{display:inline-block;width:12px;
height:12px;margin-right:4px;vertical-align:-1px} #error{color:#b42318}
</style></head><body>
<h1>dms fleet</h1>
<div id="meta">loading...</div><div id="error"></div>
<label>window <select id="hours"><option value="6">6 h</option>
<option value="24" selected>24 h</option><option value="72">3 days</option>
<option value="168">7 days</option></select></label>
<h2>Devices</h2>
<table id="devices"><thead><tr><th>device</th><th>status</th><th>driver state</th>
<th>state at</th><th>alerts in window</th><th>last alert</th></tr></thead><tbody></tbody></table>
<h2>Alerts per hour and type</h2>
<div class="legend" id="legend"></div>
<svg id="hourly" width="1000" height="260"></svg>
<h2>Alerts per device over time</h2>
<svg id="timeline" width="1000" height="60"></svg>
<script>
"use strict";
const NS = "http://www.w3.org/2000/svg";
const COLORS = ["#1f77b4","#d62728","#2ca02c","#ff7f0e","#9467bd","#8c564b","#e377c2",
                "#7f7f7f","#bcbd22","#17becf"];
let colorOf = {};
function color(type) {
  if (!(type in colorOf)) colorOf[type] = COLORS[Object.keys(colorOf).length % COLORS.length];
  return colorOf[type];
}
function el(name, attrs, parent, text) {
  const e = document.createElementNS(NS, name);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  parent.appendChild(e); return e;
}
function utc(s) {
  return s == null ? "-" : new Date(s * 1000).toISOString().replace("T", " ").slice(0, 16) + "Z";
}
function hourLabel(s) { return new Date(s * 1000).toISOString().slice(11, 13) + ":00"; }
function xAxis(svg, x0, x1, t0, t1, y, ticks) {
  el("line", {x1: x0, x2: x1, y1: y, y2: y, stroke: "#444"}, svg);
  for (const t of ticks) {
    const x = x0 + (t - t0) / (t1 - t0) * (x1 - x0);
    el("line", {x1: x, x2: x, y1: y, y2: y + 4, stroke: "#444"}, svg);
    el("text", {x: x, y: y + 16, "text-anchor": "middle", "font-size": 11}, svg, hourLabel(t));
  }
}
function hourTicks(t0, t1, width) {
  const hours = (t1 - t0) / 3600, every = Math.max(1, Math.ceil(hours / (width / 60)));
  const out = []; let t = Math.ceil(t0 / 3600) * 3600;
  for (; t <= t1; t += 3600) if (Math.round(t / 3600) % every === 0) out.push(t);
  return out;
}
function drawHourly(v) {
  const svg = document.getElementById("hourly"); svg.innerHTML = "";
  const W = 1000, H = 260, L = 50, R = 10, T = 10, B = 40;
  const hours = v.hourly.hours_wall_s, types = v.hourly.types, names = Object.keys(types);
  const totals = hours.map((_, i) => names.reduce((s, n) => s + types[n][i], 0));
  const top = Math.max(1, ...totals);
  const step = Math.pow(10, Math.floor(Math.log10(top))), yMax = Math.ceil(top / step) * step;
  const t0 = hours[0], t1 = hours[hours.length - 1] + 3600;
  const bw = (W - L - R) / hours.length;
  for (let k = 0; k <= 4; k++) {
    const val = yMax * k / 4, y = H - B - (H - T - B) * k / 4;
    el("line", {x1: L, x2: W - R, y1: y, y2: y, stroke: "#eee"}, svg);
    el("text", {x: L - 6, y: y + 4, "text-anchor": "end", "font-size": 11}, svg,
       String(Math.round(val)));
  }
  el("text", {x: 12, y: T + 10, "font-size": 11, transform: `rotate(-90 12 ${T + 60})`}, svg,
     "alerts / hour");
  hours.forEach((h, i) => {
    let y = H - B;
    for (const n of names) {
      const c = types[n][i]; if (!c) continue;
      const hgt = (H - T - B) * c / yMax; y -= hgt;
      const r = el("rect", {x: L + i * bw + 1, y: y, width: Math.max(1, bw - 2), height: hgt,
                            fill: color(n), class: "bar", "data-type": n}, svg);
      el("title", {}, r, `${utc(h)}: ${c} ${n}`);
    }
  });
  xAxis(svg, L, W - R, t0, t1, H - B, hourTicks(t0, t1, W - L - R));
  const legend = document.getElementById("legend"); legend.innerHTML = "";
  for (const n of names) {
    const s = document.createElement("span");
    s.innerHTML = `<i class="sw" style="background:${color(n)}"></i>`;
    s.appendChild(document.createTextNode(`${n} (${types[n].reduce((a, b) => a + b, 0)})`));
    legend.appendChild(s);
  }
}
function drawTimeline(v) {
  const svg = document.getElementById("timeline"); svg.innerHTML = "";
  const devs = v.devices.map(d => d.device), row = 18, L = 110, R = 10, T = 6;
  const W = 1000, H = T + row * Math.max(1, devs.length) + 30;
  svg.setAttribute("height", H);
  const t0 = v.since_wall_s, t1 = v.now_wall_s;
  devs.forEach((d, i) => {
    const y = T + row * i + row / 2;
    el("text", {x: L - 6, y: y + 4, "text-anchor": "end", "font-size": 11}, svg, d);
    el("line", {x1: L, x2: W - R, y1: y, y2: y, stroke: "#eee"}, svg);
    for (const [t, type, level] of (v.timeline[d] || [])) {
      const x = L + (t - t0) / (t1 - t0) * (W - L - R);
      const c = el("circle", {cx: x, cy: y, r: 2 + (level || 1), fill: color(type),
                              "fill-opacity": 0.7, class: "dot", "data-device": d}, svg);
      el("title", {}, c, `${d} ${utc(t)} ${type} level ${level}`);
    }
  });
  xAxis(svg, L, W - R, t0, t1, T + row * Math.max(1, devs.length), hourTicks(t0, t1, W - L - R));
}
function drawDevices(v) {
  const body = document.querySelector("#devices tbody"); body.innerHTML = "";
  for (const d of v.devices) {
    const tr = document.createElement("tr"); tr.id = "dev-" + d.device;
    for (const [text, cls] of [[d.device, ""], [d.status, d.status],
                               [d.driver_state || "-", ""], [utc(d.state_wall_s), ""],
                               [String(d.alerts), ""], [utc(d.last_alert_wall_s), ""]]) {
      const td = document.createElement("td"); td.textContent = text;
      if (cls) td.className = cls; tr.appendChild(td);
    }
    body.appendChild(tr);
  }
}
async function refresh() {
  const hours = document.getElementById("hours").value;
  try {
    const r = await fetch("/api/fleet?hours=" + hours, {credentials: "same-origin"});
    if (!r.ok) throw new Error("HTTP " + r.status + ": " + (await r.text()));
    const v = await r.json();
    const online = v.devices.filter(d => d.status === "online").length;
    document.getElementById("meta").textContent =
      `${v.devices.length} devices (${online} online), last ${v.hours} h, ` +
      `updated ${utc(v.now_wall_s)}; ${v.db}`;
    document.getElementById("error").textContent = "";
    drawDevices(v); drawHourly(v); drawTimeline(v);
  } catch (e) {
    document.getElementById("error").textContent = "cannot load: " + e.message;
  }
}
document.getElementById("hours").addEventListener("change", refresh);
refresh(); setInterval(refresh, 5000);
</script></body></html>
"""
