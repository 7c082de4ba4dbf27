"""The whole pipeline: file -> checked, loaded, compiled configuration.

    load_config(path, defines=None) -> Config       raises CfgErrors
    check_config(path, defines=None) -> Config      never raises; see .errors

Steps: preprocess (defines, includes) -> parse -> global parameters -> load
modules (``loadmodule``) -> module parameters (``modparam``) -> resolve and
compile the routes (fixups, route-type checks). Every step collects its
errors; ``Config.errors`` holds them all in source order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ser.core.cfg import ast
from ser.core.cfg.compile import Routes, compile_script
from ser.core.cfg.core_functions import exports as core_exports
from ser.core.cfg.errors import CfgError, CfgErrors, did_you_mean
from ser.core.cfg.globals import CoreSettings, apply_globals
from ser.core.cfg.parser import parse_tokens
from ser.core.cfg.preproc import Preprocessor
from ser.core.module import Module, ModuleInstance, check_param_value, load_module, module_name
from ser.core.pv import PVResolver


@dataclass
class Config:
    path: str
    script: ast.Script | None = None
    settings: CoreSettings | None = None
    modules: dict[str, ModuleInstance] = field(default_factory=dict)
    routes: Routes | None = None
    errors: list[CfgError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    defines: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


def _sort(errors: list[CfgError], files: list[str]) -> list[CfgError]:
    """Without duplicates, in source order (files in the order they were read)."""
    seen = set()
    out = []
    for e in errors:
        key = (e.file, e.line, e.col, e.message)
        if key not in seen:
            seen.add(key)
            out.append(e)
    rank = {f: i for i, f in reversed(list(enumerate(files)))}
    return sorted(out, key=lambda e: (rank.get(e.file, -1), e.line, e.col))


def check_text(text: str, file: str = "<string>", defines: dict[str, str | None] | None = None,
               extra_modules: list[Module] | None = None, compile_routes: bool = True) -> Config:
    pp = Preprocessor(defines)
    return _finish(pp, pp.run_text(text, file), file, extra_modules, compile_routes)


def check_config(path: str, defines: dict[str, str | None] | None = None,
                 extra_modules: list[Module] | None = None,
                 compile_routes: bool = True) -> Config:
    """Run the whole pipeline; errors are collected in ``Config.errors``."""
    pp = Preprocessor(defines)
    return _finish(pp, pp.run_file(path), path, extra_modules, compile_routes)


def load_config(path: str, defines: dict[str, str | None] | None = None,
                extra_modules: list[Module] | None = None) -> Config:
    """Like check_config, but raises CfgErrors when the config has errors."""
    cfg = check_config(path, defines, extra_modules)
    if cfg.errors:
        raise CfgErrors(cfg.errors)
    return cfg


def _finish(pp: Preprocessor, res: object, path: str, extra_modules: list[Module] | None,
            compile_routes: bool) -> Config:
    from ser.core.cfg.preproc import Preprocessed
    assert isinstance(res, Preprocessed)
    cfg = Config(path, defines=dict(res.defines))
    errors: list[CfgError] = list(res.errors)
    script, perrors = parse_tokens(res.tokens, path)
    # a lexical error (an unterminated string...) explains what follows on its line
    lex_lines = {(e.file, e.line) for e in res.errors}
    errors.extend(e for e in perrors if (e.file, e.line) not in lex_lines)
    cfg.script = script
    cfg.settings = apply_globals(script.globals, errors)
    cfg.warnings.extend(cfg.settings.warnings)
    decls: list[Module] = [core_exports]
    failed: set[str] = set()
    for lm in script.loadmodules:
        name = module_name(lm.path)
        if name in cfg.modules:
            cfg.warnings.append(f"{lm.pos[0]}:{lm.pos[1]}: module '{name}' loaded twice")
            continue
        try:
            decl = load_module(lm.path, lm.pos)
        except CfgError as e:
            errors.append(e)
            failed.add(name)
            continue
        cfg.modules[name] = ModuleInstance(decl, lm.pos)
        decls.append(decl)
        if decl.warning:
            cfg.warnings.append(f"{lm.pos[0]}:{lm.pos[1]}: module '{name}': {decl.warning}")
    for mod in extra_modules or ():
        if mod.name not in cfg.modules:
            cfg.modules[mod.name] = ModuleInstance(mod, ("<builtin>", 0, 0))
            decls.append(mod)
    _modparams(script, cfg, errors, failed)
    resolver = PVResolver()
    for d in decls:
        for pv in d.pvs:
            resolver.add(pv)
    if compile_routes:
        max_while = cfg.settings.values.get("max_while_loops", 100)
        hooks = [inst.decl.script_hooks(inst) for inst in cfg.modules.values()
                 if inst.decl.script_hooks is not None]
        routes, cerrors = compile_script(script, decls, resolver,
                                         int(max_while),  # type: ignore[call-overload]
                                         next((h for h in hooks if h is not None), None))
        errors.extend(cerrors)
        cfg.routes = routes
    cfg.errors = _sort(errors, res.files)
    return cfg


_REGEX_CHARS = re.compile(r"[|*+?()\[\]^$\\.{}]")


def _modparams(script: ast.Script, cfg: Config, errors: list[CfgError],
               failed: set[str]) -> None:
    ignored: list[str] = []
    for mp in script.modparams:
        if _REGEX_CHARS.search(mp.module):
            try:
                rx = re.compile(mp.module)
            except re.error as e:
                errors.append(CfgError.at(mp.pos, f"bad module name pattern '{mp.module}': {e}"))
                continue
            targets = [m for name, m in cfg.modules.items() if rx.fullmatch(name)]
        else:
            m = cfg.modules.get(mp.module)
            targets = [m] if m is not None else []
        if not targets:
            if mp.module in failed or any(re.fullmatch(mp.module, f) for f in failed):
                continue   # its loadmodule already failed
            errors.append(CfgError.at(mp.pos, f"modparam for module '{mp.module}' which is "
                                      "not loaded", did_you_mean(mp.module, cfg.modules)))
            continue
        if not any(inst.decl.param(mp.name) for inst in targets):
            decl = targets[0].decl
            errors.append(CfgError.at(
                mp.name_pos, f"unknown parameter '{mp.name}' of module '{decl.name}'",
                did_you_mean(mp.name, [p.name for p in decl.params])))
            continue
        for inst in targets:
            decl = inst.decl
            param = decl.param(mp.name)
            if param is None:
                continue   # a pattern sets the parameter where it exists
            err = check_param_value(decl, param, mp.value, mp.value_pos)
            if err is not None:
                errors.append(err)
                continue
            if param.ignored:
                ignored.append(f"{decl.name}.{param.name}")
            inst.param_pos[param.name] = mp.value_pos
            if param.multi:
                inst.params[param.name].append(mp.value)
            else:
                inst.params[param.name] = mp.value
            inst.set_params.add(param.name)
    if ignored:
        cfg.warnings.append("module parameters without meaning in ser, ignored: "
                            + ", ".join(ignored))
