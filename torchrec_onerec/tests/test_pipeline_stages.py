"""The one stage list: every view of it (runner, fingerprints, command line) agrees, and the graph is in order."""

from __future__ import annotations

import dataclasses

from torchrec_onerec.cli import build_parser
from torchrec_onerec.config import OneRecConfig
from torchrec_onerec.pipeline import COLLECTIVE_STAGES, STAGE_INPUTS, STAGES, stage_fingerprint
from torchrec_onerec.stages import STAGE_LIST
from torchrec_onerec.train.config import STACK_KEYS


def test_every_stage_comes_after_the_stages_it_reads_and_names_real_config_sections() -> None:
    config = OneRecConfig()
    for position, stage in enumerate(STAGE_LIST):
        assert set(stage.inputs) <= set(STAGES[:position]), (stage.name, stage.inputs)
        real = [section for section in stage.sections if section != "train.stack"]
        assert all(hasattr(config, section) for section in real), (stage.name, stage.sections)
    assert all(hasattr(OneRecConfig().train, key) for key in STACK_KEYS)
    assert STAGES == tuple(s.name for s in STAGE_LIST) and len(set(STAGES)) == len(STAGES)
    assert STAGE_INPUTS["align"] == ("train", "train-reward", "cascade")


def test_only_the_training_stages_run_on_every_rank() -> None:
    assert set(COLLECTIVE_STAGES) == {"train", "train-reward", "cascade", "align", "sasrec", "evaluate"}


def test_the_command_line_has_one_subcommand_per_stage_with_its_help() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    helps = {action.dest: action.help for action in commands._choices_actions}
    for stage in STAGE_LIST:
        assert helps[stage.name] == stage.help


def test_a_cascade_change_redoes_what_reads_the_cascade_only() -> None:
    base = OneRecConfig()
    changed = dataclasses.replace(
        base,
        cascade=dataclasses.replace(
            base.cascade, retrieval=dataclasses.replace(base.cascade.retrieval, num_candidates=7)
        ),
    )
    moved = {s for s in STAGES if stage_fingerprint(base, s) != stage_fingerprint(changed, s)}
    assert moved == {"cascade", "evaluate", "compare"}  # alignment reads the ranker only under reward_source=ranker
    ranker = dataclasses.replace(base, align=dataclasses.replace(base.align, reward_source="ranker"))
    ranker_changed = dataclasses.replace(ranker, cascade=changed.cascade)
    assert stage_fingerprint(ranker, "align") != stage_fingerprint(ranker_changed, "align")


def test_listing_the_sasrec_arm_redoes_its_stage_and_what_reads_it_only() -> None:
    base = OneRecConfig()
    assert "sasrec" not in base.compare.arms
    listed = dataclasses.replace(base, compare=dataclasses.replace(base.compare, arms=[*base.compare.arms, "sasrec"]))
    moved = {s for s in STAGES if stage_fingerprint(base, s) != stage_fingerprint(listed, s)}
    assert moved == {"sasrec", "evaluate", "compare"}
    resized = dataclasses.replace(listed, sasrec=dataclasses.replace(listed.sasrec, embedding_dim=32))
    assert {s for s in STAGES if stage_fingerprint(listed, s) != stage_fingerprint(resized, s)} == moved


def test_retraining_the_generative_model_keeps_the_other_models_but_a_stack_change_redoes_every_training() -> None:
    base = OneRecConfig()
    longer = dataclasses.replace(
        base,
        train=dataclasses.replace(
            base.train, optim=dataclasses.replace(base.train.optim, epochs=9), targets="impressions"
        ),
    )
    moved = {s for s in STAGES if stage_fingerprint(base, s) != stage_fingerprint(longer, s)}
    assert moved == {"train", "align", "evaluate", "compare"}  # not the reward model, the cascade or SASRec
    clipped = dataclasses.replace(base, train=dataclasses.replace(base.train, grad_clip=0.5))
    moved = {s for s in STAGES if stage_fingerprint(base, s) != stage_fingerprint(clipped, s)}
    assert moved == set(STAGES) - {"data", "tokenize"}
