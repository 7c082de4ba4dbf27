"""TLS profile files: SNI sections, server_name matching, duplicates."""

from __future__ import annotations

import pytest

from ser.core.tls import Profile, Profiles, TlsError, base_profiles, parse_config_file


@pytest.mark.parametrize(("mode", "sni", "hit"), [
    (0, "sip.example.com", True), (0, "SIP.Example.COM.", True), (0, "a.sip.example.com", False),
    (1, "sip.example.com", True), (1, "a.sip.example.com", True), (1, "xsip.example.com", False),
    (2, "sip.example.com", False), (2, "a.sip.example.com", True),
])
def test_server_name_mode(mode, sni, hit):
    assert Profile(server_name="sip.example.com", server_name_mode=mode).matches(sni) is hit


def test_repeated_sections_are_sni_profiles_tried_address_first(tmp_path):
    f = tmp_path / "tls.cfg"
    f.write_text("[server:127.0.0.1:5061]\nmethod = TLSv1.2+\n"
                 "[server:127.0.0.1:5061]\nserver_name = a.test  # comment\n"
                 "[server:default]\nserver_name = b.test\nserver_name_mode = 1\n"
                 "[server:127.0.0.1:5062]\nserver_name = c.test\n")
    base = base_profiles({"server_name": "client-sends.test"})
    profs = parse_config_file(str(f), base)
    assert [p.name for p in profs] == ["server:127.0.0.1:5061", "server:127.0.0.1:5061/a.test",
                                       "server:default/b.test", "server:127.0.0.1:5062/c.test"]
    all_ = Profiles([Profile(role="server"), *profs])
    start = all_.server("127.0.0.1", 5061)
    assert start.name == "server:127.0.0.1:5061"
    assert [p.name for p in all_.sni_candidates(start)] == [
        "server:127.0.0.1:5061/a.test", "server:default/b.test"]
    # an address with only an SNI section starts with it
    assert all_.server("127.0.0.1", 5062).name == "server:127.0.0.1:5062/c.test"
    assert all_.server("127.0.0.1", 5063).name == "server:default"


@pytest.mark.parametrize(("text", "why"), [
    ("[server:default]\nserver_name = a\n[server:default]\nserver_name = a\n",
     ":3: [server:default] with server_name a is defined twice"),
    ("[client:default]\n[client:default]\n", ":2: [client:default] is defined twice"),
    ("[server:default]\nserver_name_mode = 3\n",
     ":2: [server:default] server_name_mode: 3 is not 0, 1 or 2"),
    ("[server:default]\nmethod = TLSv1.2+\nmethod = TLSv1.3\n",
     ":3: [server:default] option 'method' is given twice"),
    ("method = TLSv1.2+\n", ":1: 'method = TLSv1.2+' comes before any section"),
    ("[a:b]\n", ":1: [a:b] must be [server:...] or [client:...]"),
])
def test_bad_profile_files(tmp_path, text, why):
    f = tmp_path / "tls.cfg"
    f.write_text(text)
    with pytest.raises(TlsError) as e:
        parse_config_file(str(f), base_profiles({}))
    assert str(e.value).startswith(f"{f}{why}")
    assert "~~" not in str(e.value)


def test_settings_remember_where_they_were_given(tmp_path):
    f = tmp_path / "tls.cfg"
    f.write_text("[server:default]\n\ncertificate = c.pem\n[client:default]\n")
    base = base_profiles({"certificate": "m.pem", "ca_list": "ca.pem"},
                         {"certificate": ("ser.cfg", 7, 29), "ca_list": ("ser.cfg", 8, 25)})
    server, client = parse_config_file(str(f), base)
    assert server.where == {"certificate": f"{f}:3", "ca_list": "ser.cfg:8:25"}
    assert client.where == {"certificate": "ser.cfg:7:29", "ca_list": "ser.cfg:8:25"}
    assert base.where["certificate"] == "ser.cfg:7:29"
