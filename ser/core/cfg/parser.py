"""Parser: the preprocessed token stream -> :class:`ast.Script`.

A hand-written recursive-descent parser. Operator precedence follows
Kamailio's grammar, lowest first::

    ||   &&   |   &   ^   == != =~ !~   < > <= >=   + -   * / %   ! - ~ defined

The parser never stops at the first mistake: it records a :class:`CfgError`,
skips to a point where parsing can resume (the next ``;`` or ``}`` of a
statement, the next top-level item) and goes on, so one run reports every
syntax error of a file.
"""

from __future__ import annotations

import ipaddress
import re

from ser.core.cfg import ast
from ser.core.cfg.errors import CfgError, Pos
from ser.core.cfg.lexer import Token, scan_pv

ROUTE_KINDS = {
    "request_route": "request", "route": "route", "failure_route": "failure",
    "onreply_route": "onreply", "reply_route": "reply", "branch_route": "branch",
    "onsend_route": "onsend", "event_route": "event",
}
KEYWORDS = frozenset({
    "method", "uri", "status", "from_uri", "to_uri", "src_ip", "dst_ip", "src_port",
    "dst_port", "proto", "af", "myself", "snd_ip", "snd_port", "snd_proto", "snd_af",
    "to_ip", "to_port", "msg_len",
})
CONSTANTS = {"UDP": 1, "TCP": 2, "TLS": 3, "SCTP": 4, "WS": 5, "WSS": 6,
             "udp": 1, "tcp": 2, "tls": 3, "sctp": 4, "ws": 5, "wss": 6,
             "INET": 4, "INET6": 6, "inet": 4, "inet6": 6}
_BINARY_LEVELS: tuple[frozenset[str], ...] = (
    frozenset({"||"}), frozenset({"&&"}), frozenset({"|"}), frozenset({"&"}),
    frozenset({"^"}), frozenset({"==", "!=", "=~", "!~"}),
    frozenset({"<", ">", "<=", ">="}), frozenset({"+", "-"}), frozenset({"*", "/", "%"}),
)
_NAME_OK = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_YES_NO = {"yes": 1, "true": 1, "on": 1, "enable": 1, "no": 0, "false": 0, "off": 0,
           "disable": 0}


class _Abort(Exception):
    """Unwinds to the nearest recovery point after an error was recorded."""


class Parser:
    def __init__(self, tokens: list[Token], file: str = "<string>") -> None:
        self.toks = tokens
        self.i = 0
        end = tokens[-1].pos if tokens else (file, 1, 1)
        self.eof = Token("EOF", None, (end[0], end[1], end[2] + len(tokens[-1].text)
                                       if tokens else 1), "")
        self.errors: list[CfgError] = []

    # -- token helpers -------------------------------------------------------
    def peek(self, k: int = 0) -> Token:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else self.eof

    def take(self) -> Token:
        tok = self.peek()
        if self.i < len(self.toks):
            self.i += 1
        return tok

    def is_op(self, op: str, k: int = 0) -> bool:
        t = self.peek(k)
        return t.kind == "OP" and t.value == op

    def is_id(self, name: str, k: int = 0) -> bool:
        t = self.peek(k)
        return t.kind == "ID" and t.value == name

    def error(self, pos: Pos, message: str, hint: str | None = None) -> _Abort:
        self.errors.append(CfgError.at(pos, message, hint))
        return _Abort()

    def expect_op(self, op: str, what: str = "") -> Token:
        tok = self.peek()
        if tok.kind == "OP" and tok.value == op:
            return self.take()
        raise self.error(tok.pos, f"expected '{op}'{what}, found {describe(tok)}")

    def semicolon(self) -> None:
        if self.is_op(";"):
            self.take()
            return
        tok = self.peek()
        prev = self.toks[self.i - 1] if self.i else tok
        end = (prev.pos[0], prev.pos[1], prev.pos[2] + len(prev.text))
        if prev.origin is not None:       # from a #!define: the use site
            end = prev.pos
        raise self.error(end, f"missing ';' before {describe(tok)}")

    # -- top level -----------------------------------------------------------
    def parse(self) -> ast.Script:
        globals_: list[ast.GlobalParam] = []
        loads: list[ast.LoadModule] = []
        params: list[ast.ModParam] = []
        routes: list[ast.Route] = []
        while self.peek().kind != "EOF":
            start = self.i
            try:
                item = self.top_item()
            except _Abort:
                self.recover_top(start)
                continue
            if isinstance(item, ast.GlobalParam):
                globals_.append(item)
            elif isinstance(item, ast.LoadModule):
                loads.append(item)
            elif isinstance(item, ast.ModParam):
                params.append(item)
            elif isinstance(item, ast.Route):
                routes.append(item)
        return ast.Script(tuple(globals_), tuple(loads), tuple(params), tuple(routes))

    def recover_top(self, start: int) -> None:
        """Skip to the next token that can start a top-level item."""
        if self.i == start:
            self.take()
        depth = 0
        while (tok := self.peek()).kind != "EOF":
            if tok.kind == "OP" and tok.value == "{":
                depth += 1
            elif tok.kind == "OP" and tok.value == "}":
                depth -= 1
                if depth <= 0:
                    self.take()
                    if depth == 0:
                        return
                    depth = 0
                    continue
            elif depth == 0 and tok.kind == "ID" and (
                    tok.value in ROUTE_KINDS or tok.value in ("loadmodule", "modparam")
                    or self.is_op("=", 1)) and tok.pos[2] == 1:
                return
            self.take()

    def top_item(self) -> ast.GlobalParam | ast.LoadModule | ast.ModParam | ast.Route:
        tok = self.peek()
        if tok.kind == "ID":
            if tok.value in ("loadmodule", "loadmod"):
                self.take()
                arg = self.take()
                if arg.kind != "STR":
                    raise self.error(arg.pos, "loadmodule needs a quoted module name")
                if self.is_op(";"):
                    self.take()
                return ast.LoadModule(arg.value, tok.pos)
            if tok.value == "modparam":
                return self.modparam()
            if tok.value in ROUTE_KINDS and not self.is_op("=", 1):
                return self.route()
            if self.is_op("=", 1) or self.is_op("+=", 1):
                return self.global_param()
            if tok.value in ("loadpath", "mpath") and self.peek(1).kind == "STR":
                self.take()
                arg = self.take()
                return ast.GlobalParam("loadpath", arg.value, arg.value, tok.pos, arg.pos)
        if tok.kind == "OP" and tok.value == "}":
            raise self.error(tok.pos, "unbalanced '}': no block is open here")
        raise self.error(tok.pos, f"unexpected {describe(tok)} at top level",
                         "expected a global parameter, loadmodule, modparam or a route block")

    def global_param(self) -> ast.GlobalParam:
        name = self.take()
        self.take()   # '='
        line = name.pos[1]
        vals: list[Token] = []
        while True:
            t = self.peek()
            if t.kind == "EOF" or t.pos[1] != line or t.pos[0] != name.pos[0]:
                break
            if t.kind == "OP" and t.value == ";":
                self.take()
                break
            vals.append(self.take())
        if not vals:
            raise self.error(name.pos, f"missing value for '{name.value}'")
        text = join_tokens(vals)
        value: object = text
        if len(vals) == 1 and vals[0].kind in ("NUM", "STR"):
            value = vals[0].value
        elif len(vals) == 2 and vals[0].kind == "OP" and vals[0].value == "-" \
                and vals[1].kind == "NUM":
            value = -vals[1].value
        return ast.GlobalParam(name.value, value, text, name.pos, vals[0].pos)

    def modparam(self) -> ast.ModParam:
        tok = self.take()
        self.expect_op("(", " after modparam")
        mod = self.take()
        if mod.kind != "STR":
            raise self.error(mod.pos, "modparam: the module name must be a quoted string")
        self.expect_op(",", " in modparam")
        name = self.take()
        if name.kind != "STR":
            raise self.error(name.pos, "modparam: the parameter name must be a quoted string")
        self.expect_op(",", " in modparam")
        vtok = self.peek()
        neg = False
        if vtok.kind == "OP" and vtok.value == "-":
            self.take()
            neg = True
            vtok = self.peek()
        if vtok.kind == "STR":
            value: str | int = self.strings()
        elif vtok.kind == "NUM":
            value = -self.take().value if neg else self.take().value
        elif not neg and vtok.kind == "ID" and str(vtok.value).lower() in _YES_NO:
            value = _YES_NO[str(self.take().value).lower()]   # Kamailio lexes these as 1/0
        else:
            raise self.error(vtok.pos, f"modparam: the value must be a string or a number, "
                             f"found {describe(vtok)}")
        self.expect_op(")", " to close modparam")
        if self.is_op(";"):
            self.take()
        return ast.ModParam(mod.value, name.value, value, tok.pos, name.pos, vtok.pos)

    def strings(self) -> str:
        """One or more adjacent string literals, concatenated."""
        parts = [self.take().value]
        while self.peek().kind == "STR":
            parts.append(self.take().value)
        return "".join(parts)

    def route(self) -> ast.Route:
        tok = self.take()
        kind = ROUTE_KINDS[tok.value]
        name = ""
        if self.is_op("["):
            open_ = self.take()
            parts: list[Token] = []
            while not self.is_op("]"):
                t = self.peek()
                if t.kind == "EOF" or (t.kind == "OP" and t.value in "{}"):
                    raise self.error(open_.pos, "missing ']' after the route name")
                parts.append(self.take())
            self.take()
            name = "".join(str(p.value) if p.kind == "STR" else p.text for p in parts)
            if not name:
                raise self.error(open_.pos, "empty route name")
        if kind == "route" and not name:
            kind = "request"
        if kind == "onreply" and not name:
            kind = "reply"
        if kind in ("request", "reply", "onsend") and name and kind != "onsend":
            if kind == "request":
                raise self.error(tok.pos, "request_route takes no name")
        needs_name = kind in ("failure", "branch", "event")
        if needs_name and not name:
            raise self.error(tok.pos, f"{tok.value} needs a name: {tok.value}[NAME]")
        if kind == "route" and name == "0":
            kind, name = "request", ""
        body = self.block()
        return ast.Route(kind, name, body, tok.pos)

    # -- statements ----------------------------------------------------------
    def block(self) -> ast.Block:
        open_ = self.peek()
        if not (open_.kind == "OP" and open_.value == "{"):
            raise self.error(open_.pos, f"expected '{{', found {describe(open_)}")
        self.take()
        stmts: list[ast.Stmt] = []
        while True:
            tok = self.peek()
            if tok.kind == "EOF":
                raise self.error(open_.pos, "unbalanced '{': this block is never closed")
            if tok.kind == "OP" and tok.value == "}":
                self.take()
                return ast.Block(tuple(stmts), open_.pos)
            if tok.kind == "ID" and tok.value in ROUTE_KINDS and tok.pos[2] == 1 and (
                    self.is_op("[", 1) or self.is_op("{", 1)):
                # a route block starting inside a block: the '}' is missing
                raise self.error(open_.pos, "unbalanced '{': this block is never closed")
            stmt = self.statement_recovering()
            if stmt is not None:
                stmts.append(stmt)

    def statement_recovering(self) -> ast.Stmt | None:
        start = self.i
        try:
            return self.statement()
        except _Abort:
            self.recover_stmt(start)
            return None

    def recover_stmt(self, start: int) -> None:
        """Skip past the next ';' (or up to the next '}') at this nesting level."""
        if self.i == start and not self.is_op("}"):
            self.take()
        depth = 0
        while (tok := self.peek()).kind != "EOF":
            if tok.kind == "OP":
                if tok.value == ";" and depth == 0:
                    self.take()
                    return
                if tok.value in "({[":
                    depth += 1
                elif tok.value in ")]":
                    depth = max(0, depth - 1)
                elif tok.value == "}":
                    if depth == 0:
                        return
                    depth -= 1
            elif tok.kind == "ID" and tok.value in ROUTE_KINDS and tok.pos[2] == 1:
                return
            self.take()

    def body(self) -> ast.Block:
        """A block, or one statement without braces (if/else/while bodies)."""
        if self.is_op("{"):
            return self.block()
        pos = self.peek().pos
        stmt = self.statement()
        return ast.Block((stmt,), pos)

    def statement(self) -> ast.Stmt:
        tok = self.peek()
        if tok.kind == "OP":
            if tok.value == "{":
                return self.block()
            if tok.value == ";":
                self.take()
                return ast.Block((), tok.pos)
        if tok.kind == "PV":
            return self.assignment()
        if tok.kind != "ID":
            raise self.error(tok.pos, f"unexpected {describe(tok)}, expected a statement")
        word = tok.value
        if word == "if":
            self.take()
            cond = self.paren_cond("if")
            then = self.body()
            else_ = None
            if self.is_id("else"):
                self.take()
                if self.is_id("if"):
                    pos = self.peek().pos
                    else_ = ast.Block((self.statement(),), pos)
                else:
                    else_ = self.body()
            return ast.If(cond, then, else_, tok.pos)
        if word == "while":
            self.take()
            cond = self.paren_cond("while")
            return ast.While(cond, self.body(), tok.pos)
        if word == "switch":
            return self.switch()
        if word in ("exit", "drop", "break"):
            self.take()
            if self.is_op("(") and self.is_op(")", 1):
                self.take()
                self.take()
            self.semicolon()
            if word == "exit":
                return ast.Exit(tok.pos)
            return ast.Drop(tok.pos) if word == "drop" else ast.Break(tok.pos)
        if word == "return":
            self.take()
            value = None
            if not self.is_op(";"):
                value = self.expr()
            self.semicolon()
            return ast.Return(value, tok.pos)
        if word in ("case", "default"):
            raise self.error(tok.pos, f"'{word}' outside of a switch")
        if word == "else":
            raise self.error(tok.pos, "'else' without 'if'")
        if word in KEYWORDS:
            raise self.error(tok.pos, f"'{word}' is not a statement")
        call = self.call()
        self.semicolon()
        return ast.ExprStmt(call, tok.pos)

    def paren_cond(self, what: str) -> ast.Expr:
        tok = self.peek()
        if not (tok.kind == "OP" and tok.value == "("):
            raise self.error(tok.pos, f"expected '(' after '{what}', found {describe(tok)}")
        return self.expr()   # a parenthesised expression

    def assignment(self) -> ast.Assign:
        tok = self.take()
        target = self.pv(tok)
        op = self.peek()
        if not (op.kind == "OP" and op.value in ("=", "+=")):
            raise self.error(op.pos, f"expected '=' after {tok.text}, found {describe(op)}")
        self.take()
        value = self.expr()
        self.semicolon()
        return ast.Assign(target, op.value, value, tok.pos)

    def switch(self) -> ast.Switch:
        tok = self.take()
        expr = self.paren_cond("switch")
        open_ = self.peek()
        self.expect_op("{", " after switch (...)")
        cases: list[ast.Case] = []
        seen_default = False
        while True:
            t = self.peek()
            if t.kind == "EOF":
                raise self.error(open_.pos, "unbalanced '{': this block is never closed")
            if t.kind == "OP" and t.value == "}":
                self.take()
                break
            if t.kind == "ID" and t.value in ("case", "default"):
                self.take()
                value: ast.Expr | None = None
                if t.value == "case":
                    value = self.unary()
                    if not isinstance(value, ast.Str | ast.Int) and not (
                            isinstance(value, ast.UnOp) and value.op == "-"
                            and isinstance(value.operand, ast.Int)):
                        self.errors.append(CfgError.at(
                            value.pos, "a case label must be a number or a string"))
                elif seen_default:
                    self.errors.append(CfgError.at(t.pos, "second 'default' in switch"))
                seen_default = seen_default or t.value == "default"
                self.expect_op(":", f" after '{t.value}'")
                body: list[ast.Stmt] = []
                while not (self.is_id("case") or self.is_id("default") or self.is_op("}")
                           or self.peek().kind == "EOF"):
                    stmt = self.statement_recovering()
                    if stmt is not None:
                        body.append(stmt)
                cases.append(ast.Case(value, tuple(body), t.pos))
                continue
            raise self.error(t.pos, f"expected 'case' or 'default', found {describe(t)}")
        return ast.Switch(expr, tuple(cases), tok.pos)

    # -- expressions ---------------------------------------------------------
    def expr(self, level: int = 0) -> ast.Expr:
        if level == len(_BINARY_LEVELS):
            return self.unary()
        left = self.expr(level + 1)
        ops = _BINARY_LEVELS[level]
        while (t := self.peek()).kind == "OP" and t.value in ops:
            self.take()
            right = self.expr(level + 1)
            left = ast.BinOp(t.value, left, right, t.pos)
        return left

    def unary(self) -> ast.Expr:
        t = self.peek()
        if t.kind == "OP" and t.value in ("!", "-", "~"):
            self.take()
            operand = self.unary()
            if t.value == "-" and isinstance(operand, ast.Int):
                return ast.Int(-operand.value, t.pos)
            return ast.UnOp(t.value, operand, t.pos)
        if t.kind == "ID" and t.value == "defined":
            self.take()
            paren = self.is_op("(")
            if paren:
                self.take()
            pv = self.peek()
            if pv.kind != "PV":
                raise self.error(pv.pos, "'defined' needs a pseudo-variable")
            self.take()
            if paren:
                self.expect_op(")", " after defined(...)")
            return ast.Defined(self.pv(pv), t.pos)
        return self.primary()

    def primary(self) -> ast.Expr:
        t = self.peek()
        k = t.kind
        if k == "NUM":
            self.take()
            return ast.Int(t.value, t.pos)
        if k == "STR":
            return ast.Str(self.strings(), t.pos)
        if k == "PV":
            self.take()
            if t.value == "$null":
                return ast.Null(t.pos)
            return self.pv(t)
        if k in ("IP4", "IP6"):
            self.take()
            try:
                net = ipaddress.ip_network(t.value, strict=False)
            except ValueError:
                raise self.error(t.pos, f"invalid IP address or network '{t.value}'") from None
            return ast.IPNet(t.value, net, t.pos)
        if k == "OP" and t.value == "(":
            self.take()
            e = self.expr()
            close = self.peek()
            if not (close.kind == "OP" and close.value == ")"):
                raise self.error(close.pos, f"expected ')', found {describe(close)}")
            self.take()
            return e
        if k == "ID":
            if t.value in KEYWORDS:
                self.take()
                return ast.Keyword(t.value, t.pos)
            if t.value in CONSTANTS and not self.is_op("(", 1):
                self.take()
                return ast.Int(CONSTANTS[t.value], t.pos)
            return self.call()
        raise self.error(t.pos, f"unexpected {describe(t)} in expression")

    def call(self) -> ast.Call:
        t = self.take()
        if t.kind != "ID":
            raise self.error(t.pos, f"expected a function name, found {describe(t)}")
        args: list[ast.Expr] = []
        if self.is_op("("):
            open_ = self.take()
            if self.is_op(")"):
                self.take()
                return ast.Call(t.value, (), t.pos)
            while True:
                a = self.peek()
                if a.kind == "ID" and (self.is_op(",", 1) or self.is_op(")", 1)) \
                        and a.value not in KEYWORDS:
                    self.take()
                    args.append(ast.Name(a.value, a.pos))
                else:
                    args.append(self.expr())
                sep = self.peek()
                if sep.kind == "OP" and sep.value == ",":
                    self.take()
                    continue
                if sep.kind == "OP" and sep.value == ")":
                    self.take()
                    break
                if sep.kind == "EOF" or (sep.kind == "OP" and sep.value in ";{}"):
                    raise self.error(open_.pos, f"missing ')' to close the call of '{t.value}'")
                raise self.error(sep.pos, f"expected ',' or ')' in the call of '{t.value}', "
                                 f"found {describe(sep)}")
        return ast.Call(t.value, tuple(args), t.pos)

    def pv(self, tok: Token) -> ast.PV:
        try:
            return parse_pv_text(tok.value, tok.pos)
        except CfgError as e:
            self.errors.append(e)
            raise _Abort() from None


def describe(tok: Token) -> str:
    if tok.kind == "EOF":
        return "end of file"
    if tok.kind == "STR":
        return f"string {tok.text}"
    return f"'{tok.text or tok.value}'"


def join_tokens(toks: list[Token]) -> str:
    out: list[str] = []
    for i, t in enumerate(toks):
        if i and t.space_before:
            out.append(" ")
        out.append(str(t.value) if t.kind == "STR" else t.text)
    return "".join(out)


# ------------------------------------------------------------ pseudo-variables

_PV_HEAD = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


def parse_pv_text(raw: str, pos: Pos) -> ast.PV:
    """Split the text of one pseudo-variable into name, inner name, index and
    transformations. Raises CfgError on a malformed one."""
    transforms: list[ast.Transform] = []
    if raw.startswith("$("):
        body = raw[2:-1]
        m = re.match(r"[A-Za-z_][A-Za-z0-9_]*", body)
        if not m:
            raise CfgError.at(pos, f"bad pseudo-variable '{raw}'")
        j = m.end()
        name = m.group()
        inner, index, j = _inner_index(body, j, raw, pos)
        while j < len(body):
            if body[j] != "{":
                raise CfgError.at(pos, f"bad transformation in '{raw}'")
            end = _close_brace(body, j)
            if end is None:
                raise CfgError.at(pos, f"missing '}}' in transformation of '{raw}'")
            spec = body[j + 1:end]
            parts = _split_args(spec)
            transforms.append(ast.Transform(parts[0].strip(), tuple(parts[1:]), pos))
            j = end + 1
        return ast.PV(raw, name, inner, index, tuple(transforms), pos)
    m = _PV_HEAD.match(raw)
    if not m:
        raise CfgError.at(pos, f"bad pseudo-variable '{raw}'")
    inner, index, j = _inner_index(raw, m.end(), raw, pos)
    if j != len(raw):
        raise CfgError.at(pos, f"bad pseudo-variable '{raw}'")
    return ast.PV(raw, m.group(1), inner, index, (), pos)


def _inner_index(s: str, j: int, raw: str, pos: Pos) -> tuple[str | None, str | None, int]:
    inner = index = None
    if j < len(s) and s[j] == "(":
        depth = 0
        k = j
        while k < len(s):
            if s[k] == "(":
                depth += 1
            elif s[k] == ")":
                depth -= 1
                if depth == 0:
                    break
            k += 1
        if k >= len(s):
            raise CfgError.at(pos, f"missing ')' in pseudo-variable '{raw}'")
        inner = s[j + 1:k]
        j = k + 1
    if j < len(s) and s[j] == "[":
        k = s.find("]", j)
        if k < 0:
            raise CfgError.at(pos, f"missing ']' in pseudo-variable '{raw}'")
        index = s[j + 1:k].strip()
        j = k + 1
    return inner, index, j


def _close_brace(s: str, j: int) -> int | None:
    depth = 0
    for k in range(j, len(s)):
        if s[k] == "{":
            depth += 1
        elif s[k] == "}":
            depth -= 1
            if depth == 0:
                return k
    return None


def _split_args(spec: str) -> list[str]:
    """'s.select,1,,' -> ['s.select', '1', ',']: a comma right after a comma
    is an argument (as in Kamailio's {s.select,1,,})."""
    out: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(spec):
        c = spec[i]
        if c == "\\" and i + 1 < len(spec):
            cur.append(spec[i + 1])
            i += 2
            continue
        if c == "$":
            end = scan_pv(spec, i)
            if end:
                cur.append(spec[i:end])
                i = end
                continue
        if c == ",":
            if not cur and out and i + 1 < len(spec) + 1 and len(out) >= 1 and \
                    (i + 1 == len(spec) or spec[i + 1] == ","):
                cur.append(",")
                i += 1
                continue
            out.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    out.append("".join(cur))
    return out


def parse_tokens(tokens: list[Token], file: str = "<string>") -> tuple[ast.Script, list[CfgError]]:
    p = Parser(tokens, file)
    script = p.parse()
    return script, p.errors
