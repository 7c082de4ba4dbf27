"""Prometheus exposition of shm statistics, checked with prometheus_client's parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from ser.core.metrics import metric_name, render


def test_render_parses_with_types_and_help():
    text = render({"tm:current": 3, "tm:total": 10, "usrloc:location-contacts": 2,
                   "sl:1xx_replies": 4, "core:rcv_requests": 7}, uptime=12.5,
                  blocked_sources=1)
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams["ser_tm_transactions_current"].type == "gauge"
    assert fams["ser_tm_transactions_current"].samples[0].value == 3
    assert fams["ser_usrloc_contacts"].samples[0].value == 2
    assert fams["ser_pike_blocked_sources"].samples[0].value == 1
    assert fams["ser_uptime_seconds"].samples[0].value == 12.5
    assert fams["ser_tm_transactions"].type == "counter"
    assert fams["ser_tm_transactions"].samples[0].name == "ser_tm_transactions_total"
    assert fams["ser_sl_1xx_replies"].samples[0].value == 4
    assert fams["ser_core_received_requests"].samples[0].value == 7
    assert all(f.documentation for f in fams.values())


def test_names_are_prometheus_names():
    assert metric_name("usrloc:location-contacts") == "ser_usrloc_location_contacts"
    assert metric_name("tls:x.y") == "ser_tls_x_y"
