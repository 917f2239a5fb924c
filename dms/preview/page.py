"""The one page of the preview: the stream, the status view and the operator buttons.

Plain HTML and a few lines of JavaScript, no external resources (the device is offline). The
status is polled from ``/api/status`` every ``status_poll_s``; the buttons post to
``/api/command/<name>`` with the token from the token field as ``Authorization: Bearer``.
"""

from __future__ import annotations

from dms.preview.settings import PreviewSettings

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>dms preview</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 0; background: #111; color: #eee; }
main { display: flex; flex-wrap: wrap; gap: 16px; padding: 12px; }
#stream { max-width: 100%; border: 1px solid #444; background: #000; min-width: 320px;
          min-height: 240px; }
table { border-collapse: collapse; min-width: 320px; }
td { padding: 3px 8px; border-bottom: 1px solid #333; vertical-align: top; }
td:first-child { color: #aaa; }
.alert { color: #ff6b6b; font-weight: bold; }
.ok { color: #7bd88f; } .bad { color: #ff6b6b; }
fieldset { border: 1px solid #444; margin-top: 12px; }
button { font-size: 14px; padding: 4px 12px; }
#notice { color: #ff6b6b; font-weight: bold; }
</style></head>
<body>
<main>
<section>
  <div id="notice">LIVE VIEW of the driver: personal data. Watching is logged; nothing is
  recorded.</div>
  <img id="stream" alt="live camera view (with overlays)" src="/stream.mjpg">
</section>
<section>
  <table>
    <tr><td>driver state</td><td id="driver_state">-</td></tr>
    <tr><td>active alerts</td><td id="alerts">-</td></tr>
    <tr><td>calibration</td><td id="calibration">-</td></tr>
    <tr><td>eyes</td><td id="eyes">-</td></tr>
    <tr><td>fps</td><td id="fps">-</td></tr>
    <tr><td>camera</td><td id="camera">-</td></tr>
    <tr><td>MQTT</td><td id="mqtt">-</td></tr>
    <tr><td>outbox</td><td id="outbox">-</td></tr>
    <tr><td>buzzer</td><td id="buzzer">-</td></tr>
    <tr><td>models</td><td id="models">-</td></tr>
    <tr><td>viewers</td><td id="viewers">-</td></tr>
    <tr><td>updated</td><td id="updated">-</td></tr>
  </table>
  <fieldset><legend>operator commands</legend>
    <label>token <input id="token" type="password" autocomplete="off" size="24"></label><br>
    <button id="btn_calibrate" type="button">start calibration</button>
    <label>mute for <input id="mute_s" type="number" value="60" min="1" style="width:5em">
      s</label> <button id="btn_mute" type="button">mute</button>
    <div id="cmd_result"></div>
  </fieldset>
</section>
</main>
<script>
"use strict";
const POLL_MS = __POLL_MS__;
const $ = (id) => document.getElementById(id);
const h = location.hash.match(/token=([^&]*)/);
if (h) { $("token").value = decodeURIComponent(h[1]);
         history.replaceState(null, "", location.pathname); }
function text(id, value, cls) { const e = $(id); e.textContent = value; e.className = cls || ""; }
async function poll() {
  try {
    const r = await fetch("/api/status", {cache: "no-store"});
    if (!r.ok) { text("updated", "status: HTTP " + r.status, "bad"); return; }
    const s = await r.json();
    text("driver_state", s.driver_state);
    const a = s.active_alerts || [];
    text("alerts", a.length ? a.map(x => "L" + x.level + " " + x.type + ": " + x.reason)
                               .join("; ") : "none", a.length ? "alert" : "ok");
    const c = s.calibration || {};
    text("calibration", (c.state || "-") + (c.state === "calibrating"
         ? " " + Math.round(100 * (c.progress || 0)) + " %" : "") + " (source: "
         + (c.source || s.neutral_source || "-") + ")" + (s.calibration_command
         ? ", explicit calibration running" : ""));
    const e = s.eyes || {};
    text("eyes", e.rules === "eyes"
         ? (e.closed ? "closed " + e.closed_s + " s" : "open " + Math.round(100 * (e.ratio || 0))
            + " % of this driver's aperture") + (e.blinks_per_min == null ? ""
            : ", " + Math.round(e.blinks_per_min) + " blinks/min")
         : "head-only rules (" + (e.why || "not measured") + ")",
         e.rules === "eyes" ? (e.closed ? "alert" : "ok") : (e.why === "not_visible" ? "bad" : ""));
    text("fps", String(s.fps));
    text("camera", s.camera + " (" + s.camera_source + ")", s.camera === "ok" ? "ok" : "bad");
    text("mqtt", s.mqtt, s.mqtt === "connected" ? "ok" : (s.mqtt === "off" ? "" : "bad"));
    const o = s.outbox;
    text("outbox", o ? o.pending_alerts + " alerts pending, " + o.alerts_in_memory
         + " in memory" : "-");
    text("buzzer", s.buzzer || "-");
    text("models", (s.model_licences || []).map(m => m.task + ": " + m.name + " ("
         + m.licence + ")").join("; "));
    text("viewers", String(s.preview_viewers));
    text("updated", "t = " + s.t_s + " s");
  } catch (e) { text("updated", "status: " + e, "bad"); }
}
async function command(name, args) {
  const token = $("token").value;
  const headers = {"Content-Type": "application/json"};
  if (token) headers["Authorization"] = "Bearer " + token;
  text("cmd_result", name + ": sending...");
  try {
    const r = await fetch("/api/command/" + name, {method: "POST", headers,
                          body: JSON.stringify(args)});
    const body = r.headers.get("Content-Type").startsWith("application/json")
      ? await r.json() : {error: (await r.text()).trim()};
    if (r.ok && body.ok) text("cmd_result", name + ": accepted " + JSON.stringify(body.result),
                              "ok");
    else text("cmd_result", name + ": refused (HTTP " + r.status + "): " + body.error, "bad");
  } catch (e) { text("cmd_result", name + ": " + e, "bad"); }
  poll();
}
$("btn_calibrate").onclick = () => command("calibrate", {});
$("btn_mute").onclick = () => command("mute", {duration_s: Number($("mute_s").value)});
poll();
setInterval(poll, POLL_MS);
</script>
</body></html>
"""


def page_html(settings: PreviewSettings) -> str:
    return _PAGE.replace("__POLL_MS__", str(round(1000 * settings.status_poll_s)))
