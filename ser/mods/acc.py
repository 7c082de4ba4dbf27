"""acc: transaction accounting to the log and to the ``acc`` table (Kamailio's acc).

Theory of operation. A record is the request's method, From tag, To tag,
Call-ID, the final status code and reason, the time, and the ``*_extra``
pairs (``name=$pv;name2=$pv2``, each pseudo-variable read from the request).

Two ways to make one:

* explicitly, ``acc_log_request(comment)`` / ``acc_db_request(comment,
  table)``, where ``comment`` is ``"CODE REASON"`` (``"200 OK"``) or just a
  reason;
* automatically when a transaction ends: tm calls the callbacks in each
  module's ``state["tm_on_final"]`` with the request's context, the final
  code and reason when it sends the final reply upstream. A request whose
  ``log_flag`` / ``db_flag`` is set is accounted when that reply is a 2xx
  (or any code when ``failed_transaction_flag`` is set too); a request
  with ``log_missed_flag`` / ``db_missed_flag`` set whose transaction ends
  with 3xx..6xx is accounted as a missed call (log, or the
  ``missed_calls`` table). CANCEL and ACK are only accounted with
  ``report_cancels`` / ``report_ack``.

Log lines follow Kamailio's layout: ``ACC: transaction answered:
timestamp=...;method=INVITE;from_tag=...;to_tag=...;call_id=...;code=200;
reason=OK;src_user=...``.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from ser.core.cfg.errors import CfgError
from ser.core.db import Db, DbError, check_url
from ser.core.db.schema import ACC, ensure_table
from ser.core.module import Arg, FixedArg, FixupError, Function, Module, Param, RouteType
from ser.core.pv import PVResolver, to_str

log = logging.getLogger("ser.acc")
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PY_LEVEL = {-5: logging.CRITICAL, -4: logging.CRITICAL, -3: logging.CRITICAL,
             -2: logging.CRITICAL, -1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO,
             2: logging.INFO, 3: logging.DEBUG}
_POS = ("<modparam acc>", 0, 0)


# ------------------------------------------------------------------ extras
def parse_extra(text: str) -> list[tuple[str, Any]]:
    """``"a=$fU;b=$si"`` -> [(name, PVRef)]; ValueError if bad."""
    out: list[tuple[str, Any]] = []
    res = PVResolver()
    for item in text.split(";"):
        item = item.strip()
        if not item:
            continue
        name, eq, spec = item.partition("=")
        name, spec = name.strip(), spec.strip()
        if not eq or not IDENT.fullmatch(name) or not spec.startswith("$"):
            raise ValueError(f"bad extra '{item}': want name=$pv")
        try:
            out.append((name, res.parse_text(spec, _POS)))
        except CfgError as e:
            raise ValueError(f"extra '{name}': {e.message}") from None
    return out


def _check_extra(v: object) -> str | None:
    try:
        parse_extra(str(v))
    except ValueError as e:
        return str(e)
    return None




def _check_ident(v: object) -> str | None:
    return None if IDENT.fullmatch(str(v)) else f"'{v}' is not a table name"


def _check_flag(v: object) -> str | None:
    return None if isinstance(v, int) and -1 <= v <= 31 else "a flag is 0..31 (-1: not set)"


def _check_level(v: object) -> str | None:
    return None if isinstance(v, int) and -5 <= v <= 3 else "a log level is -5..3"


# ------------------------------------------------------------------ records
def split_comment(comment: str) -> tuple[str, str]:
    """``"200 OK"`` -> ("200", "OK"); ``"done"`` -> ("0", "done") (as Kamailio)."""
    m = re.match(r"\s*(\d{3})(?:\s+(.*))?$", comment)
    if m:
        return m.group(1), (m.group(2) or "").strip()
    return "0", comment.strip()


_TO_TAG = re.compile(rb"(?im)^(?:to|t)[ \t]*:[^\r\n]*?;[ \t]*tag=([^;\s,>]+)")


def to_tag(ctx: Any) -> str:
    """The To tag of the request, else of the final reply tm is sending."""
    to = ctx.msg.to
    if to is not None and to.tag:
        return str(to.tag)
    m = _TO_TAG.search(ctx.cache.get("tm_final_reply") or b"")
    return m.group(1).decode("utf-8", "replace") if m else ""


def core_fields(ctx: Any, code: str, reason: str) -> list[tuple[str, str]]:
    msg = ctx.msg
    fr = msg.from_
    return [("method", msg.method), ("from_tag", (fr.tag if fr else None) or ""),
            ("to_tag", to_tag(ctx)),
            ("call_id", msg.call_id or ""), ("code", code), ("reason", reason)]


def extra_values(ctx: Any, extras: list[tuple[str, Any]]) -> list[tuple[str, str]]:
    out = []
    for name, ref in extras:
        try:
            v = ref.get(ctx)
        except Exception:      # noqa: BLE001 - one bad pv must not lose the record
            v = None
        out.append((name, "" if v is None else to_str(v)))
    return out


def log_line(ctx: Any, inst: Any, what: str, code: str, reason: str) -> str:
    st = _state(inst)
    pairs = [("timestamp", str(int(time.time()))), *core_fields(ctx, code, reason),
             *extra_values(ctx, st["log_extra"])]
    return f"ACC: {what}: " + ";".join(f"{k}={v}" for k, v in pairs)


def write_log(ctx: Any, inst: Any, what: str, code: str, reason: str) -> None:
    level = _PY_LEVEL.get(int(inst.params["log_level"]), logging.INFO)
    log.log(level, "%s", log_line(ctx, inst, what, code, reason))


def write_db(ctx: Any, inst: Any, table: str, code: str, reason: str) -> bool:
    st = _state(inst)
    db: Db | None = st.get("db")
    if db is None:
        log.error("acc: no db_url set, cannot account to table %s", table)
        return False
    fields = core_fields(ctx, code, reason)
    cols = ["method", "from_tag", "to_tag", "callid", "sip_code", "sip_reason", "time"]
    vals: list[Any] = [v for _, v in fields]
    vals.append(time.strftime("%Y-%m-%d %H:%M:%S"))
    for name, v in extra_values(ctx, st["db_extra"]):
        cols.append(name)
        vals.append(v)
    sql = (f"INSERT INTO {table} ({', '.join(cols)}) "
           f"VALUES ({', '.join('?' for _ in cols)})")
    try:
        db.execute(sql, vals)
    except DbError as e:
        log.error("acc: cannot write a record to table %s: %s", table, e)
        return False
    return True


def _state(inst: Any) -> dict[str, Any]:
    st = inst.state
    if "log_extra" not in st:
        p = inst.params
        st["log_extra"] = parse_extra(str(p["log_extra"]))
        st["db_extra"] = parse_extra(str(p["db_extra"]))
        st["db"] = db = Db(str(p["db_url"]), what="acc") if p["db_url"] else None
        if db is not None and int(p["db_missed_flag"]) >= 0:
            try:     # Kamailio's missed_calls has the acc columns; made if missing
                ensure_table(db, ACC, str(p["db_table_missed_calls"]))
            except DbError as e:
                log.warning("acc: cannot create table %s: %s", p["db_table_missed_calls"], e)
    return st


def _flag(ctx: Any, flag: int) -> bool:
    return flag >= 0 and bool(ctx.flags & (1 << flag))


# ---------------------------------------------------------------- tm hook
def on_final(inst: Any, ctx: Any, code: int, reason: str) -> None:
    """Called by tm with the request's context when its final reply goes upstream."""
    p = inst.params
    method = ctx.msg.method
    if method == "CANCEL" and not p["report_cancels"]:
        return
    if method == "ACK" and not p["report_ack"]:
        return
    failed_ok = _flag(ctx, int(p["failed_transaction_flag"]))
    accounted = code < 300 or failed_ok
    scode = str(code)
    if accounted and _flag(ctx, int(p["log_flag"])):
        write_log(ctx, inst, "transaction answered" if code < 300 else
                  "transaction failed", scode, reason)
    if accounted and _flag(ctx, int(p["db_flag"])):
        write_db(ctx, inst, str(p["db_table_acc"]), scode, reason)
    if code >= 300:
        if _flag(ctx, int(p["log_missed_flag"])):
            write_log(ctx, inst, "call missed", scode, reason)
        if _flag(ctx, int(p["db_missed_flag"])):
            write_db(ctx, inst, str(p["db_table_missed_calls"]), scode, reason)


# -------------------------------------------------------- script functions
def acc_log_request(ctx: Any, comment: str) -> int:
    inst = ctx.rt.modules["acc"]
    code, reason = split_comment(comment)
    write_log(ctx, inst, "request acknowledged", code, reason)
    return 1


def acc_db_request(ctx: Any, comment: str, table: str) -> int:
    inst = ctx.rt.modules["acc"]
    code, reason = split_comment(comment)
    return 1 if write_db(ctx, inst, table, code, reason) else -1


def _table_fixup(args: list[FixedArg]) -> list[FixedArg]:
    t = args[1]
    if t.is_const and not IDENT.fullmatch(str(t.const)):
        raise FixupError(f"bad table name '{t.const}'", 1)
    return args


def mod_init(inst: Any) -> None:
    inst.state["tm_on_final"] = [lambda ctx, code, reason: on_final(inst, ctx, code, reason)]


def child_init(inst: Any, rank: int) -> None:
    _state(inst)


_ACC_ROUTES = RouteType.REQUEST | RouteType.FAILURE | RouteType.BRANCH | RouteType.ONREPLY

exports = Module(
    name="acc",
    doc="Accounting of transactions to the log and to a database table.",
    params=(
        Param("log_flag", int, -1, "Request flag: account the transaction to the log when "
              "it completes with a 2xx (-1: not set).", _check_flag),
        Param("log_missed_flag", int, -1, "Request flag: log a missed call when the "
              "transaction ends with 3xx..6xx.", _check_flag),
        Param("failed_transaction_flag", int, -1, "Request flag: account with log_flag / "
              "db_flag also when the transaction fails (>= 300).", _check_flag),
        Param("log_level", int, 1, "Level of the accounting log lines (-5..3; 1 L_NOTICE).",
              _check_level),
        Param("log_facility", str, "LOG_DAEMON", "Syslog facility of the accounting lines."),
        Param("log_extra", str, "", "More log fields: \"name=$pv;name2=$pv2\".", _check_extra),
        Param("db_flag", int, -1, "Request flag: write the transaction to the acc table "
              "when it completes with a 2xx.", _check_flag),
        Param("db_missed_flag", int, -1, "Request flag: write a missed call to the "
              "missed_calls table.", _check_flag),
        Param("db_url", str, "", "Database URL of the DB backend.", check_url),
        Param("db_extra", str, "", "More columns: \"column=$pv;column2=$pv2\" (the columns "
              "must exist in the tables).", _check_extra),
        Param("db_table_acc", str, "acc", "Table of accounted transactions.", _check_ident),
        Param("db_table_missed_calls", str, "missed_calls", "Table of missed calls.",
              _check_ident),
        Param("early_media", int, 0, "Account 183 with early media (not done by ser).",
              ignored=True),
        Param("report_ack", int, 0, "Account ACKs too."),
        Param("report_cancels", int, 0, "Account CANCELs too."),
        Param("detect_direction", int, 0, "Swap From/To for in-dialog requests from the "
              "callee.", ignored=True),
        Param("db_insert_mode", int, 0, "0: INSERT (the only mode ser has).", ignored=True),
    ),
    functions=(
        Function("acc_log_request", acc_log_request, (Arg("comment"),), _ACC_ROUTES,
                 doc="Log an accounting line for the current request; the comment is "
                     "\"CODE REASON\" or a reason."),
        Function("acc_db_request", acc_db_request, (Arg("comment"), Arg("table")),
                 _ACC_ROUTES, _table_fixup,
                 doc="Write an accounting row for the current request to a table."),
    ),
    mod_init=mod_init,
    child_init=child_init,
    depends=("tm",),
)
