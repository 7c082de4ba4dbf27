"""A SIP UA "behind NAT" for the NAT tests: it sends from a 127.0.0.x socket
but writes a private 10.0.0.x address in its Via and Contact, as a UA behind
a NAT does; raw UDP, so a test sees exactly what reaches it."""

from __future__ import annotations

import hashlib
import re
import socket
import time


class NatUA:
    """A UA behind a "NAT": it sends from 127.0.0.x but writes 10.0.0.x in Contact and Via."""

    def __init__(self, user: str, password: str, ip: str, proxy: int) -> None:
        self.user, self.password, self.proxy = user, password, proxy
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((ip, 0))
        self.sock.settimeout(0.5)
        self.addr = self.sock.getsockname()
        self.private = "10.0.0.99:5060"
        self.seen: list[str] = []     # everything received, in order
        self.n = 0

    def close(self) -> None:
        self.sock.close()

    def send(self, text: str) -> None:
        self.sock.sendto(text.encode(), ("127.0.0.1", self.proxy))

    def wait_for(self, pred, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65535).decode("utf-8", "replace")
            except TimeoutError:
                continue
            self.seen.append(data)
            if pred(data):
                return data
        raise AssertionError(f"{self.user}: nothing matching within {timeout} s; got:\n"
                             + "\n----\n".join(self.seen[-5:]))

    def request(self, method: str, ruri: str, to: str, call_id: str, auth: str = "",
                body: str = "") -> str:
        self.n += 1
        ctype = "Content-Type: application/sdp\r\n" if body else ""
        return (f"{method} {ruri} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {self.private};branch=z9hG4bK{call_id}{self.n};rport\r\n"
                f"Max-Forwards: 70\r\n"
                f"From: <sip:{self.user}@127.0.0.1>;tag={self.user}tag\r\n"
                f"To: <{to}>\r\nCall-ID: {call_id}\r\nCSeq: {self.n} {method}\r\n"
                f"Contact: <sip:{self.user}@{self.private}>\r\n{auth}{ctype}"
                f"Content-Length: {len(body)}\r\n\r\n{body}")

    def digest(self, challenge: str, method: str, uri: str, header: str) -> str:
        params = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge))
        ha1 = hashlib.md5(f"{self.user}:{params['realm']}:{self.password}".encode()).hexdigest()
        ha2 = hashlib.md5(f"{method}:{uri}".encode()).hexdigest()
        extra = ""
        if "qop" in params:
            cnonce = "0a4f113b"
            resp = hashlib.md5(f"{ha1}:{params['nonce']}:00000001:{cnonce}:auth:{ha2}"
                               .encode()).hexdigest()
            extra = f', qop=auth, nc=00000001, cnonce="{cnonce}"'
        else:
            resp = hashlib.md5(f"{ha1}:{params['nonce']}:{ha2}".encode()).hexdigest()
        return (f'{header}: Digest username="{self.user}", realm="{params["realm"]}", '
                f'nonce="{params["nonce"]}", uri="{uri}", response="{resp}", '
                f'algorithm=MD5{extra}\r\n')

    def register(self) -> str:
        """REGISTER (answering a 401 challenge when one comes); the final reply."""
        ruri = "sip:127.0.0.1"
        to = f"sip:{self.user}@127.0.0.1"
        self.send(self.request("REGISTER", ruri, to, f"reg{self.user}"))
        r = self.wait_for(lambda d: re.match(r"SIP/2\.0 [2-6]", d) is not None)
        if not r.startswith("SIP/2.0 401"):
            return r
        chal = re.search(r"^WWW-Authenticate: (.*)\r$", r, re.M).group(1)
        self.send(self.request("REGISTER", ruri, to, f"reg{self.user}",
                               self.digest(chal, "REGISTER", ruri, "Authorization")))
        return self.wait_for(lambda d: d.startswith("SIP/2.0 2") or d.startswith("SIP/2.0 4"))

    def invite(self, ruri: str, call_id: str, body: str = "") -> None:
        """INVITE ``ruri``; a 407 challenge is ACKed and the INVITE sent again
        with credentials. Returns once the proxy took it (100 Trying)."""
        self.send(self.request("INVITE", ruri, ruri, call_id, body=body))
        r = self.wait_for(lambda d: d.startswith(("SIP/2.0 100", "SIP/2.0 407")))
        if r.startswith("SIP/2.0 100"):
            return
        n = self.n
        to_tag = re.search(r"^To: .*;tag=([^;\r]+)", r, re.M).group(1)
        ack = self.request("ACK", ruri, ruri, call_id)
        ack = ack.replace(f"CSeq: {self.n} ACK", f"CSeq: {n} ACK").replace(
            f"branch=z9hG4bK{call_id}{self.n};", f"branch=z9hG4bK{call_id}{n};").replace(
            f"To: <{ruri}>", f"To: <{ruri}>;tag={to_tag}")
        self.send(ack)
        chal = re.search(r"^Proxy-Authenticate: (.*)\r$", r, re.M).group(1)
        self.send(self.request("INVITE", ruri, ruri, call_id, body=body,
                               auth=self.digest(chal, "INVITE", ruri, "Proxy-Authorization")))

    def in_dialog(self, method: str, answer: str, ruri: str, call_id: str, to_tag: str) -> None:
        """Send ``method`` (ACK after the INVITE, or BYE) in the dialog the 2xx
        ``answer`` set up: to its Contact, through its Record-Routes."""
        target = re.search(r"^Contact: <([^>]*)>\r$", answer, re.M).group(1)
        route = "Route: " + ", ".join(reversed(re.findall(r"^Record-Route: (.*)\r$", answer,
                                                          re.M)))
        req = self.request(method, target, ruri, call_id)
        req = req.replace(f"To: <{ruri}>", f"To: <{ruri}>;tag={to_tag}")
        if method == "ACK":
            req = req.replace(f"CSeq: {self.n} ACK", f"CSeq: {self.n - 1} ACK")
        self.send(req.replace("Max-Forwards: 70\r\n", f"Max-Forwards: 70\r\n{route}\r\n"))


def reply_to(req: str, code: str, contact: str, to_tag: str) -> str:
    heads = [ln for ln in req.split("\r\n\r\n")[0].split("\r\n")[1:]
             if ln.split(":")[0].lower() in ("via", "from", "call-id", "cseq", "record-route")]
    to = re.search(r"^To: (.*)\r$", req, re.M).group(1)
    return (f"SIP/2.0 {code}\r\n" + "\r\n".join(heads) + f"\r\nTo: {to};tag={to_tag}\r\n"
            f"Contact: <{contact}>\r\nContent-Length: 0\r\n\r\n")
