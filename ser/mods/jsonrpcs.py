"""jsonrpcs: JSON-RPC 2.0 control over a FIFO, a UNIX datagram socket and HTTP.

ser's control process always runs; loading this module (as Kamailio configs
do) only sets where it listens. Relative paths are under the runtime
directory (``ser -Y DIR``). ``http_port`` turns on the HTTP listener
(``/RPC`` and Prometheus ``/metrics``), off by default.
"""

from __future__ import annotations

from ser.core.module import Module, Param


def _transport(v: object) -> str | None:
    return None if isinstance(v, int) and 0 <= v <= 15 else "transport is a bit mask 0..15"


def _port(v: object) -> str | None:
    return None if isinstance(v, int) and 0 <= v <= 65535 else "a port is 0..65535"


exports = Module(
    name="jsonrpcs",
    doc="JSON-RPC 2.0 control interface (FIFO and UNIX datagram socket).",
    params=(
        Param("transport", int, 6, "Transports to serve, a bit mask: 2 FIFO, 4 datagram "
              "socket (8 TCP is not available; HTTP, Kamailio's 1 over xhttp, is served by "
              "the control process when http_port is set).", _transport),
        Param("http_port", int, 0, "Port of the embedded HTTP listener of the control "
              "process: POST /RPC (JSON-RPC 2.0) and GET /metrics (Prometheus). 0: off.",
              _port),
        Param("http_address", str, "127.0.0.1", "Address of the HTTP listener."),
        Param("fifo_name", str, "ser_rpc.fifo", "The FIFO file (relative: in the runtime dir)."),
        Param("fifo_mode", int, 0o660, "Permissions of the FIFO file."),
        Param("fifo_group", (int, str), "", "Group of the FIFO file.", ignored=True),
        Param("fifo_user", (int, str), "", "Owner of the FIFO file.", ignored=True),
        Param("fifo_reply_dir", str, "/tmp/", "Directory of the clients' reply FIFOs."),
        Param("dgram_socket", str, "ser_rpc.sock",
              "The UNIX datagram socket (relative: in the runtime dir)."),
        Param("dgram_mode", int, 0o660, "Permissions of the datagram socket file."),
        Param("dgram_group", (int, str), "", "Group of the socket file.", ignored=True),
        Param("dgram_user", (int, str), "", "Owner of the socket file.", ignored=True),
        Param("dgram_timeout", int, 2000, "Send timeout of datagram replies, ms."),
        Param("pretty_format", int, 1, "Indent JSON replies.", ignored=True),
    ),
)
