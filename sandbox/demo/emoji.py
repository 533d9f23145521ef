"""The emoji service: ``python3 -m sandbox.demo.emoji`` (env HOST, PORT=8080).

GET /api/list                 -> [{"shortcode": ":joy:", "unicode": "😂"}, ...]
GET /api/find?shortcode=:joy: -> {"shortcode": ":joy:", "unicode": "😂"} (404 when unknown)
GET /healthz                  -> {"status": "ok"}
"""
from __future__ import annotations

import os

from sandbox.demo.service import DemoServer, Request, Response, error, listen_address, make_server, serve, setup_logging

# A selection from emojivoto's list; ":doughnut:" is the one the voting service refuses.
EMOJI: tuple[tuple[str, str], ...] = (
    (":joy:", "\U0001F602"),
    (":sunglasses:", "\U0001F60E"),
    (":doughnut:", "\U0001F369"),
    (":stuck_out_tongue_winking_eye:", "\U0001F61C"),
    (":money_mouth_face:", "\U0001F911"),
    (":flushed:", "\U0001F633"),
    (":mask:", "\U0001F637"),
    (":nerd_face:", "\U0001F913"),
    (":ghost:", "\U0001F47B"),
    (":skull_and_crossbones:", "\u2620\ufe0f"),
    (":heart_eyes_cat:", "\U0001F63B"),
    (":hear_no_evil:", "\U0001F649"),
    (":see_no_evil:", "\U0001F648"),
    (":speak_no_evil:", "\U0001F64A"),
    (":santa:", "\U0001F385"),
    (":turkey:", "\U0001F983"),
    (":rabbit:", "\U0001F430"),
    (":rainbow:", "\U0001F308"),
    (":vulcan_salute:", "\U0001F596"),
    (":metal:", "\U0001F918"),
    (":thumbsup:", "\U0001F44D"),
    (":wave:", "\U0001F44B"),
    (":clap:", "\U0001F44F"),
    (":raised_hands:", "\U0001F64C"),
    (":pray:", "\U0001F64F"),
    (":dog:", "\U0001F436"),
    (":pig:", "\U0001F437"),
    (":hatching_chick:", "\U0001F423"),
    (":snail:", "\U0001F40C"),
    (":bacon:", "\U0001F953"),
    (":pizza:", "\U0001F355"),
    (":taco:", "\U0001F32E"),
    (":burrito:", "\U0001F32F"),
    (":ramen:", "\U0001F35C"),
    (":champagne:", "\U0001F37E"),
    (":tropical_drink:", "\U0001F379"),
    (":beer:", "\U0001F37A"),
    (":rocket:", "\U0001F680"),
    (":fire:", "\U0001F525"),
    (":tada:", "\U0001F389"),
    (":trophy:", "\U0001F3C6"),
    (":bulb:", "\U0001F4A1"),
    (":crystal_ball:", "\U0001F52E"),
    (":100:", "\U0001F4AF"),
    (":checkered_flag:", "\U0001F3C1"),
    (":floppy_disk:", "\U0001F4BE"),
)
_BY_SHORTCODE = dict(EMOJI)


def _list(_: Request) -> Response:
    return Response(200, [{"shortcode": s, "unicode": u} for s, u in EMOJI])


def _find(req: Request) -> Response:
    shortcode = req.query.get("shortcode", "")
    if not shortcode:
        return error(400, "missing ?shortcode=, e.g. /api/find?shortcode=:joy:")
    unicode = _BY_SHORTCODE.get(shortcode)
    if unicode is None:
        return error(404, f"no emoji with shortcode {shortcode}")
    return Response(200, {"shortcode": shortcode, "unicode": unicode})


def build(*, host: str = "0.0.0.0", port: int = 8080) -> DemoServer:
    return make_server({
        ("GET", "/api/list"): _list,
        ("GET", "/api/find"): _find,
        ("GET", "/healthz"): lambda _: Response(200, {"status": "ok"}),
    }, name="emoji", host=host, port=port)


def main() -> int:
    setup_logging()
    host, port = listen_address(os.environ)
    return serve(build(host=host, port=port), name="emoji")


if __name__ == "__main__":
    raise SystemExit(main())
