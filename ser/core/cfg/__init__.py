"""The routing script: preprocessor, lexer, parser and compiler of Kamailio's
native configuration language.

Entry points (see each module's docstring):

    load_config(path, defines=None) -> Config      preprocess, parse, load
                                                    modules, run fixups
    check_config(path, defines=None) -> CheckResult  the same, never raises:
                                                    errors and warnings collected
    compile_routes(config) -> Routes                the script as Python callables
"""

from __future__ import annotations

from ser.core.cfg.errors import CfgError, CfgErrors

__all__ = ["CfgError", "CfgErrors"]
