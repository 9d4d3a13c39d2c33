"""Agent topologies as data.

A topology is a YAML file: a system message, an ordered list of agents (name, role, prompt template, whom each agent
``sees``, which one is ``final``) and how context is worded per method. The two shipped ones (``sequential``,
``hierarchical``) and the single-agent ``single`` live in ``latentmas/engine/topologies/``; a user adds a reviewer or rewords
a prompt by pointing ``--arch`` at their own file, without touching Python. Prompts contain no model names.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import yaml

SHIPPED_DIR = Path(__file__).parent / "topologies"


class TopologyError(ValueError):
    pass


@dataclass(frozen=True)
class Agent:
    name: str
    role: str
    prompt: str
    sees: tuple[str, ...]
    final: bool = False


@dataclass(frozen=True)
class Topology:
    name: str
    system: str
    agents: tuple[Agent, ...]
    context: dict
    digest: str  # sha256 of the file: part of the config hash, so editing a prompt changes the cell's identity

    @property
    def final_agent(self) -> Agent:
        return self.agents[-1]

    def render(self, agent: Agent, question: str, answer_instruction: str, mode: str,
               texts: dict[str, str] | None = None) -> list[dict[str, str]]:
        """Chat messages for one agent. ``mode``: "text" (teammates' texts inlined), "latent", or "none"."""
        if mode == "text" and agent.sees:
            items = [self.context["text_item"].format(name=a.name, role=a.role, text=(texts or {})[a.name])
                     for a in self.agents if a.name in agent.sees]
            context = self.context["text_header"] + "\n\n".join(items)
        elif mode == "latent" and self.agents.index(agent) > 0:
            context = self.context["latent"]
        else:
            context = self.context["none"]
        user = agent.prompt.format(question=question, context=context,
                                   answer_instruction=answer_instruction if agent.final else "")
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user.strip()}]


def topology_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in {".yaml", ".yml"}:
        if not p.exists():
            raise TopologyError(f"topology file {p} not found")
        return p
    shipped = SHIPPED_DIR / f"{name_or_path}.yaml"
    if not shipped.exists():
        known = sorted(f.stem for f in SHIPPED_DIR.glob("*.yaml"))
        raise TopologyError(f"unknown architecture {name_or_path!r}; shipped: {', '.join(known)} (or a .yaml path)")
    return shipped


def load_topology(name_or_path: str) -> Topology:
    path = topology_path(name_or_path)
    raw_bytes = path.read_bytes()
    raw = yaml.safe_load(raw_bytes)
    where = str(path)
    for key in ("name", "system", "agents", "context"):
        if key not in raw:
            raise TopologyError(f"{where}: missing key {key!r}")
    agents = []
    for i, a in enumerate(raw["agents"]):
        for key in ("name", "prompt"):
            if key not in a:
                raise TopologyError(f"{where}: agents[{i}] is missing {key!r}")
        agents.append(Agent(name=a["name"], role=a.get("role", a["name"]), prompt=a["prompt"],
                            sees=tuple(a.get("sees", [])), final=bool(a.get("final", False))))
    names = [a.name for a in agents]
    if len(set(names)) != len(names):
        raise TopologyError(f"{where}: agent names must be unique, got {names}")
    if not agents or not agents[-1].final or any(a.final for a in agents[:-1]):
        raise TopologyError(f"{where}: exactly one agent, the last, must have final: true")
    for a in agents:
        unknown = set(a.sees) - set(names[: names.index(a.name)])
        if unknown:
            raise TopologyError(f"{where}: agent {a.name!r} sees {sorted(unknown)}, which are not earlier agents")
        try:
            a.prompt.format(question="", context="", answer_instruction="")
        except (KeyError, IndexError, ValueError) as exc:
            raise TopologyError(f"{where}: agent {a.name!r} prompt has a bad placeholder: {exc}") from exc
    for key in ("text_item", "text_header", "latent", "none"):
        raw["context"].setdefault(key, "")
    return Topology(name=raw["name"], system=raw["system"], agents=tuple(agents), context=raw["context"],
                    digest=hashlib.sha256(raw_bytes).hexdigest())
