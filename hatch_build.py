"""Hatchling build hook (pyproject.toml): the browser app's built bundle, clients/web/dist
(made by `npm run build` there; not in git), ships as chatd/web/static, where chatd.web
looks when it runs from a wheel. The sdist carries the bundle at its checkout path, so a
wheel built from the sdist gets it too. Without a built bundle, packages build without it
(and the node says how to build it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

BUNDLE = "clients/web/dist"


class WebBundleHook(BuildHookInterface):  # type: ignore[type-arg]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        bundle = Path(self.root) / BUNDLE
        if version == "editable" or not (bundle / "index.html").is_file():
            return  # (a checkout's chatd.web finds clients/web/dist itself)
        target = "chatd/web/static" if self.target_name == "wheel" else BUNDLE
        build_data["force_include"][str(bundle)] = target
