"""deploy/chatd.toml: every setting of chatd/server/config.py, at its default (two say why
not), loaded by `chatd serve --config`."""

from __future__ import annotations

import dataclasses
import tomllib

from chatd.server.config import Config, load_config

from .conftest import DEPLOY

# what the example deliberately sets otherwise (its comment says "NOT the default")
DEPLOYED = {"data_dir": "/var/lib/chatd", "metrics_port": 9464}


def test_example_config_has_every_setting_at_its_default() -> None:
    text = (DEPLOY / "chatd.toml").read_text()
    settings = tomllib.loads(text)["server"]
    defaults = {f.name: getattr(Config(), f.name) for f in dataclasses.fields(Config)}
    assert sorted(settings) == sorted(defaults), "deploy/chatd.toml and Config differ"
    for name, value in settings.items():
        assert type(value) is type(defaults[name]), name
        assert value == DEPLOYED.get(name, defaults[name]), name
    for name in DEPLOYED:
        [line] = [ln for ln in text.splitlines() if ln.startswith(f"{name} ")]
        assert "NOT the default" in line and str(defaults[name]) in line


def test_example_config_loads() -> None:
    cfg = load_config(str(DEPLOY / "chatd.toml"), {}, {})
    assert cfg == dataclasses.replace(Config(), **DEPLOYED)  # type: ignore[arg-type]
