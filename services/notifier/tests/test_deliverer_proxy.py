"""Webhook deliveries honour the proxy variables of the environment, as the httpx client did."""

from __future__ import annotations

import pytest

from services.notifier.deliverer import proxy_for


def test_the_scheme_s_proxy_is_used_unless_no_proxy_exempts_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert proxy_for("https://la.example/hook") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://egress:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example,127.0.0.1")
    assert proxy_for("https://la.example/hook") == "http://egress:3128"
    assert proxy_for("http://la.example/hook") is None  # no proxy named for plain HTTP
    assert proxy_for("https://internal.example/hook") is None
    assert proxy_for("https://127.0.0.1:8443/hook") is None
