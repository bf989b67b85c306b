"""Reading docker-compose.yml without a Docker engine: YAML (with anchors and merge keys) plus
Compose's variable interpolation (``${VAR}``, ``${VAR:-default}``, ``$$``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def read_env(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            env[key.strip()] = value.strip()
    return env


def interpolate(obj: Any, env: dict[str, str]) -> Any:
    if isinstance(obj, str):
        def sub(m: re.Match) -> str:
            if m.group(0) == "$$":
                return "$"
            name, default = m.group(1), m.group(2)
            value = env.get(name)
            if value is None or value == "":
                if default is None:
                    raise KeyError(f"compose variable {name} is not set")
                return default
            return value

        return _VAR.sub(sub, obj)
    if isinstance(obj, list):
        return [interpolate(v, env) for v in obj]
    if isinstance(obj, dict):
        return {k: interpolate(v, env) for k, v in obj.items()}
    return obj


def load(path: Path, env: dict[str, str]) -> dict[str, Any]:
    return interpolate(yaml.safe_load(path.read_text()), env)
