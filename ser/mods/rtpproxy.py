"""rtpproxy: Kamailio's media relay control, accepted but WITHOUT a media relay.

ser has no client of the rtpproxy control protocol: a config that loads
``rtpproxy`` (Kamailio's stock kamailio.cfg with ``WITH_NAT``) is accepted so
its signalling runs, but the SDP is left as the UA wrote it and no RTP is
relayed. Loading the module prints a WARNING saying so, by ``ser -c`` and at
every start. Every function returns -1 (false), as Kamailio's do when no
rtpproxy answers, and changes nothing.
"""

from __future__ import annotations

from typing import Any

from ser.core.module import Arg, Function, Module, Param, RouteType

R = RouteType

WARNING = ("ser has no media relay: the rtpproxy control protocol is not implemented, "
           "rtpproxy_sock is never contacted, the SDP is not rewritten and media (RTP) is "
           "NOT relayed; rtpproxy_manage/offer/answer/destroy do nothing and return false. "
           "Calls between UAs behind NAT may have no audio.")


def _no_relay(ctx: Any, *args: Any) -> int:
    return -1


_FLAGS = (Arg("flags", optional=True), Arg("ip", optional=True))
_ROUTES = R.REQUEST | R.ONREPLY | R.FAILURE | R.BRANCH

exports = Module(
    name="rtpproxy",
    doc="rtpproxy media relay control: accepted for Kamailio configs, no media relay in "
        "ser (a start-up WARNING says so; the functions do nothing and return false).",
    params=(
        Param("rtpproxy_sock", str, "", "Control socket of rtpproxy (never contacted).",
              multi=True, ignored=True),
        Param("rtpproxy_disable_tout", int, 60, "(accepted)", ignored=True),
        Param("rtpproxy_tout", int, 1000, "(accepted)", ignored=True),
        Param("rtpproxy_retr", int, 5, "(accepted)", ignored=True),
        Param("nortpproxy_str", str, "a=nortpproxy:yes", "(accepted)", ignored=True),
        Param("timeout_socket", str, "", "(accepted)", ignored=True),
        Param("ice_candidate_priority_avp", str, "", "(accepted)", ignored=True),
        Param("extra_id_pv", str, "", "(accepted)", ignored=True),
    ),
    functions=(
        Function("rtpproxy_manage", _no_relay, _FLAGS, _ROUTES,
                 doc="No media relay in ser: does nothing, returns false."),
        Function("rtpproxy_offer", _no_relay, _FLAGS, _ROUTES,
                 doc="No media relay in ser: does nothing, returns false."),
        Function("rtpproxy_answer", _no_relay, _FLAGS, _ROUTES,
                 doc="No media relay in ser: does nothing, returns false."),
        Function("rtpproxy_destroy", _no_relay, (Arg("flags", optional=True),), _ROUTES,
                 doc="No media relay in ser: does nothing, returns false."),
        Function("unforce_rtp_proxy", _no_relay, (Arg("flags", optional=True),), _ROUTES,
                 doc="No media relay in ser: does nothing, returns false."),
    ),
    warning=WARNING,
)
