"""ser: a SIP server in the SER/Kamailio tradition."""

__version__ = "0.1.0"
