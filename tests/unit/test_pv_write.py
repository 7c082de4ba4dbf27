"""Writable From/To pseudo-variables and $shv shared between processes."""

from __future__ import annotations

import os
import uuid

from ser.core.cfg.load import check_text
from ser.core.cfg.runtime import Context, Runtime
from ser.core.parser import parse_message
from ser.shm import Shm

REQ = (b"INVITE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
       b'From: "A" <sip:alice@a.com>;tag=1\r\nTo: sip:bob@b.com\r\nCall-ID: c\r\n'
       b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")


def run(script: str, raw: bytes = REQ, shm: Shm | None = None) -> tuple[object, Runtime]:
    cfg = check_text(script, "t.cfg")
    assert not cfg.errors, cfg.errors
    rt = Runtime(cfg.settings, cfg.modules, 1)
    rt.shm = shm
    msg = parse_message(raw)
    cfg.routes.request(Context(msg, rt))
    return msg, rt


def test_from_parts_rewritten_keeping_the_tag():
    msg, _ = run('request_route {\n $fU = "carol";\n $fd = "example.org";\n $fn = "Al";\n}\n')
    out = parse_message(msg.serialize())
    assert out.from_.display == "Al"
    assert str(out.from_.uri) == "sip:carol@example.org"
    assert out.from_.tag == "1"


def test_to_uri_and_display():
    msg, _ = run('request_route {\n $tu = "sip:dave@d.net;user=phone";\n'
                 ' $tn = "Dave \\"D\\"";\n}\n')
    out = parse_message(msg.serialize(), strict=True)
    assert str(out.to.uri) == "sip:dave@d.net;user=phone"
    assert out.to.display == 'Dave "D"'
    assert out.count("to") == 1


def test_shv_is_shared_through_shared_memory():
    shm = Shm.create(f"/ser-test-{os.getpid()}-{uuid.uuid4().hex[:6]}", 4 << 20)
    try:
        shm.create_table("shv", 4)
        shm.child_init(1)
        run('request_route {\n $shv(n) = 41;\n $shv(s) = "text";\n}\n', shm=shm)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                shm.child_init(2)
                run('request_route {\n $shv(n) = $shv(n) + 1;\n}\n', shm=shm)
                code = 0
            finally:
                os._exit(code)
        assert os.waitpid(pid, 0)[1] == 0
        msg, rt = run('request_route {\n $var(x) = $shv(n);\n $var(y) = $shv(s);\n}\n',
                      shm=shm)
        assert rt.vars["x"] == 42 and rt.vars["y"] == "text"
    finally:
        shm.close()
        shm.unlink()
