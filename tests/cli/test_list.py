"""``suite list``: every registry, entry by entry."""

from __future__ import annotations

from suite.analysis.claims.experiments import EXPERIMENTS
from suite.cli import main
from suite.metrics import METRICS
from suite.metrics.networks import CLIP_MODELS, FEATURE_NETWORKS
from suite.model.backends import BACKENDS
from suite.model.backends.components import STAGE_KINDS
from suite.model.devices import DTYPES
from suite.model.presets import PRESETS
from suite.model.samplers import SAMPLERS
from suite.prompts.sets import PROMPT_SETS

SECTIONS = {
    "backends:": BACKENDS,
    "presets:": PRESETS,
    "samplers:": SAMPLERS,
    "prompt sets:": PROMPT_SETS,
    "claim experiments": EXPERIMENTS,
    "metrics:": METRICS,
    "feature networks": FEATURE_NETWORKS,
}


def _sections(out: str) -> dict[str, set[str]]:
    """Section heading -> the whole names that start its entry lines (two-space indent, name first)."""
    sections: dict[str, set[str]] = {}
    current = None
    for line in out.splitlines():
        if not line.startswith(" "):
            current = next((heading for heading in SECTIONS if line.startswith(heading)), None)
            if current:
                sections[current] = set()
        elif current and line.startswith("  ") and not line.startswith("   "):
            sections[current].add(line.split()[0])
    return sections


def test_list_prints_every_registry_entry_in_its_own_section(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    sections = _sections(out)
    assert set(sections) == set(SECTIONS)
    for heading, registry in SECTIONS.items():
        missing = set(registry.names()) - sections[heading]
        assert not missing, f"{heading} {sorted(missing)} not listed"
    for heading, registry in (("CLIP models", CLIP_MODELS), ("dtypes", DTYPES), ("stage kinds", STAGE_KINDS)):
        line = next(line for line in out.splitlines() if line.startswith(heading))
        assert line.split(": ", 1)[1].split(", ") == registry.names()


def test_the_section_reader_takes_whole_names_and_skips_continuation_lines():
    out = (
        "presets:\n  sd15-extra             [latent] an SD variant\n"
        + " " * 24
        + "stages: latent(latent)\nsamplers:\n  ddim                   DDIMScheduler\n"
    )
    sections = _sections(out)
    assert sections == {"presets:": {"sd15-extra"}, "samplers:": {"ddim"}}
    assert "sd15" not in sections["presets:"]  # a prefix of a listed name is not listed
