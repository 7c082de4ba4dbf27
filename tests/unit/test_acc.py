"""acc: log lines and acc rows, explicit and at the end of a transaction."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from ser.core.cfg.load import check_text
from ser.core.cfg.runtime import Context, Runtime
from ser.core.db import Db
from ser.core.db.schema import ACC, ensure_table, init_db
from ser.core.parser import parse_message
from ser.mods import acc

INVITE = (b"INVITE sip:bob@example.com SIP/2.0\r\n"
          b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKacc1\r\n"
          b"From: \"Alice\" <sip:alice@example.com>;tag=ft1\r\n"
          b"To: <sip:bob@example.com>\r\n"
          b"Call-ID: call-1@192.0.2.1\r\n"
          b"CSeq: 1 INVITE\r\n"
          b"Max-Forwards: 70\r\n"
          b"Content-Length: 0\r\n\r\n")
REPLY = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1\r\n"
         b"To: <sip:bob@example.com>;tag=tt9\r\nContent-Length: 0\r\n\r\n")


def setup(params: str = "", body: str = "") -> tuple[Context, object, object]:
    cfg = check_text('loadmodule "tm.so"\nloadmodule "sl.so"\nloadmodule "acc.so"\n' + params
                     + f"request_route {{\n{body}\n}}\n", "t.cfg")
    assert [str(e) for e in cfg.errors] == []
    ctx = Context(parse_message(INVITE), Runtime(cfg.settings, cfg.modules), "192.0.2.1")
    return ctx, cfg, cfg.modules["acc"]


LOG = ('modparam("acc", "log_flag", 1)\nmodparam("acc", "log_missed_flag", 2)\n'
       'modparam("acc", "failed_transaction_flag", 3)\n'
       'modparam("acc", "log_extra", "src_user=$fU;src_ip=$si;dst_user=$rU")\n')


def test_log_at_final_reply_when_flagged(caplog):
    ctx, _, inst = setup(LOG)
    acc.mod_init(inst)
    (hook,) = inst.state["tm_on_final"]
    caplog.set_level(logging.DEBUG, "ser.acc")
    hook(ctx, 200, "OK")
    assert not caplog.records                        # no flag, no line
    ctx.flags = 1 << 1
    ctx.cache["tm_final_reply"] = REPLY
    hook(ctx, 200, "OK")
    (rec,) = caplog.records
    assert rec.levelno == logging.INFO
    assert rec.getMessage().startswith("ACC: transaction answered: timestamp=")
    assert rec.getMessage().endswith(
        ";method=INVITE;from_tag=ft1;to_tag=tt9;call_id=call-1@192.0.2.1;code=200;"
        "reason=OK;src_user=alice;src_ip=192.0.2.1;dst_user=bob")


def test_failed_and_missed(caplog):
    ctx, _, inst = setup(LOG)
    acc.mod_init(inst)
    (hook,) = inst.state["tm_on_final"]
    caplog.set_level(logging.DEBUG, "ser.acc")
    ctx.flags = 1 << 1
    hook(ctx, 486, "Busy Here")
    assert not caplog.records                        # failed, no failed_transaction_flag
    ctx.flags = (1 << 1) | (1 << 3) | (1 << 2)
    hook(ctx, 486, "Busy Here")
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs[0].startswith("ACC: transaction failed:") and "code=486;reason=Busy Here" in msgs[0]
    assert msgs[1].startswith("ACC: call missed:")


def test_acc_log_request_from_the_script(caplog):
    ctx, cfg, _ = setup('modparam("acc", "log_level", 2)\n', 'acc_log_request("403 Forbidden");')
    caplog.set_level(logging.DEBUG, "ser.acc")
    cfg.routes.run("request", "", ctx)
    (rec,) = caplog.records
    assert "ACC: request acknowledged:" in rec.getMessage()
    assert ";code=403;reason=Forbidden" in rec.getMessage()


def test_db_backend(tmp_path):
    path = tmp_path / "acc.db"
    db = Db(f"sqlite://{path}")
    init_db(db)
    ensure_table(db, ACC, "missed_calls")
    db.script([f"ALTER TABLE {t} ADD COLUMN src_user VARCHAR(64) NOT NULL DEFAULT ''"
               for t in ("acc", "missed_calls")])
    db.close()
    params = (f'modparam("acc", "db_url", "sqlite://{path}")\nmodparam("acc", "db_flag", 1)\n'
              'modparam("acc", "db_missed_flag", 2)\n'
              'modparam("acc", "db_extra", "src_user=$fU")\n')
    ctx, cfg, inst = setup(params, 'acc_db_request("200 OK", "acc");')
    acc.mod_init(inst)
    acc.child_init(inst, 1)
    assert cfg.routes.run("request", "", ctx) == 1
    (hook,) = inst.state["tm_on_final"]
    ctx.flags = (1 << 1) | (1 << 2)
    ctx.cache["tm_final_reply"] = REPLY
    hook(ctx, 200, "OK")
    hook(ctx, 404, "Not Found")
    con = sqlite3.connect(path)
    rows = con.execute("SELECT method, from_tag, to_tag, callid, sip_code, sip_reason, "
                       "src_user FROM acc ORDER BY id").fetchall()
    assert rows == [("INVITE", "ft1", "", "call-1@192.0.2.1", "200", "OK", "alice"),
                    ("INVITE", "ft1", "tt9", "call-1@192.0.2.1", "200", "OK", "alice")]
    missed = con.execute("SELECT sip_code, sip_reason FROM missed_calls").fetchall()
    assert missed == [("404", "Not Found")]


@pytest.mark.parametrize("param, value, err", [
    ("log_extra", '"src_user"', "want name=$pv"),
    ("log_extra", '"x=$nosuchpv"', "unknown pseudo-variable"),
    ("log_flag", "99", "0..31"),
    ("db_url", '"mysql://x"', "scheme"),
])
def test_bad_params(param, value, err):
    cfg = check_text(f'loadmodule "tm.so"\nloadmodule "acc.so"\n'
                     f'modparam("acc", "{param}", {value})\nrequest_route {{ exit; }}\n', "t.cfg")
    assert any(err in str(e) for e in cfg.errors), [str(e) for e in cfg.errors]
