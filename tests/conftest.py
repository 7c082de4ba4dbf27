"""Shared test fixtures: the message corpora."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
RFC4475 = DATA / "rfc4475"


def rfc4475(name: str) -> bytes:
    return (RFC4475 / f"{name}.dat").read_bytes()


@pytest.fixture
def corpus() -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in sorted(RFC4475.glob("*.dat"))}
