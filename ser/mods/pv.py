"""pv: the pseudo-variable module of Kamailio.

In ser the message pseudo-variables live in the core (``ser/core/pv.py``) so
a config that does not load ``pv`` still works; this module adds the
functions and parameters of Kamailio's pv module.
"""

from __future__ import annotations

from typing import Any

from ser.core.module import Arg, Function, Module, Param
from ser.core.pv import PVRef


def pv_isset(ctx: Any, pv: PVRef) -> int:
    return 1 if pv.get(ctx) is not None else -1


def pv_unset(ctx: Any, pv: PVRef) -> int:
    if pv.writable:
        pv.set(ctx, None)
    return 1


def is_int(ctx: Any, pv: PVRef) -> int:
    v = pv.get(ctx)
    if isinstance(v, int):
        return 1
    try:
        int(str(v))
    except ValueError:
        return -1
    return 1


exports = Module(
    name="pv",
    doc="Pseudo-variable functions.",
    params=(
        Param("shvset", str, "", "Initial value of a $shv: \"name=type:value\".", multi=True),
        Param("varset", str, "", "Initial value of a $var: \"name=type:value\".", multi=True),
    ),
    functions=(
        Function("pv_isset", pv_isset, (Arg("pv", "pv"),), doc="True if the PV has a value."),
        Function("pv_unset", pv_unset, (Arg("pv", "pv"),), doc="Unset the PV."),
        Function("is_int", is_int, (Arg("pv", "pv"),), doc="True if the PV holds a number."),
    ),
)
