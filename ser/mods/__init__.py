"""Loadable modules, one per file or package, named as in Kamailio."""
