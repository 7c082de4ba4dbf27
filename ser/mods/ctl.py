"""ctl: Kamailio's binrpc control module, accepted for compatibility.

ser's control interface is JSON-RPC 2.0 (the jsonrpcs module, over a FIFO and
a UNIX datagram socket; ``serctl`` and kamcli speak it); it has no binrpc, so
``kamcmd`` cannot talk to ser. ``loadmodule "ctl.so"`` and its parameters are
accepted so that Kamailio configs load unchanged, and the start-up log says
once that binrpc is not served.
"""

from __future__ import annotations

import logging

from ser.core.module import Module, ModuleInstance, Param

log = logging.getLogger("ser")


def mod_init(inst: ModuleInstance) -> None:
    where = ", ".join(str(b) for b in inst.params["binrpc"]) or "the default socket"
    log.warning("ctl: binrpc (kamcmd) is not available in ser; %s is not served. "
                "ser's control interface is JSON-RPC (module jsonrpcs, serctl, kamcli)", where)


_doc = "Accepted for compatibility; ser serves no binrpc."

exports = Module(
    name="ctl",
    doc="Kamailio's binrpc control (kamcmd): accepted, not served. ser's control is "
        "JSON-RPC (jsonrpcs, serctl).",
    params=(
        Param("binrpc", str, None, "Where binrpc would listen. " + _doc, multi=True),
        Param("binrpc_buffer_size", (int, str), 1024, _doc),
        Param("mode", int, 0o600, _doc),
        Param("user", (int, str), "", _doc),
        Param("group", (int, str), "", _doc),
        Param("fifo", str, None, _doc, multi=True),
        Param("autoconversion", int, 0, _doc),
        Param("binrpc_max_body_size", int, 32, _doc),
        Param("binrpc_struct_max_body_size", int, 8, _doc),
    ),
    mod_init=mod_init,
)
