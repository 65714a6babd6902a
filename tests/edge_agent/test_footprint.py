"""The edge installs without scipy or SUMO: no edge_agent module may need them."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import edge_agent

BLOCKED = ("numpy", "scipy", "sumo", "libsumo", "traci", "sumolib", "simulation", "optimizer",
           "fastapi", "matplotlib")

PROBE = """
import importlib, importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"edge footprint: {{name}} is not installed on an edge box")
sys.meta_path.insert(0, Block())
for name in {modules!r}:
    importlib.import_module(name)
print("ok")
"""


def test_every_edge_agent_module_imports_without_central_or_simulation_packages():
    modules = [f"edge_agent.{m.name}" for m in pkgutil.iter_modules(edge_agent.__path__)]
    assert "edge_agent.runtime" in modules and "edge_agent.guard" in modules
    result = subprocess.run([sys.executable, "-c", PROBE.format(blocked=BLOCKED,
                                                                modules=modules)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
