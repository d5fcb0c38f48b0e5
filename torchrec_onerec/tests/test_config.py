from pathlib import Path

import pytest

from torchrec_onerec.config import ConfigError, OneRecConfig, load_config, to_yaml

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(str(path))
    assert isinstance(cfg, OneRecConfig)
    assert cfg.name == path.stem


def test_overrides_apply_with_types() -> None:
    cfg = load_config(str(CONFIGS / "tiny.yaml"), ["seed=5", "split.max_history=7", "tokenizer.codebook_sizes=[4,4]"])
    assert cfg.seed == 5 and cfg.split.max_history == 7 and cfg.tokenizer.codebook_sizes == [4, 4]
    assert cfg.run_dir == "runs/tiny"


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.num_expertz=8", "unknown config key 'model.num_expertz'"),
        ("modle.num_experts=8", "unknown config key 'modle'"),
        ("model.max_history=7", "set split.max_history only"),
        ("data.synthetic.num_userz=3", "unknown config key 'data.synthetic.num_userz'"),
        ("seed=abc", "'seed'"),
        ("split.max_history=many", "'split.max_history'"),
        ("split.protocol=C", "split.protocol='C'"),
        ("data.source=csv", "data.source='csv'"),
        ("loader.batch_size=0", "loader.batch_size=0"),
        ("seed", "key=value"),
        # optimiser keys moved into each section's optim subsection: the error says where
        ("train.learning_rate=0.01", "'train.learning_rate': the optimiser settings of a section live in its optim"),
        ("cascade.ranker.epochs=2", "set cascade.ranker.optim.epochs"),
        ("reward.optim.learning_rate=0", "reward.optim.learning_rate=0.0 must be > 0"),
        ("align.optim.lr_decay=step", "align.optim.lr_decay='step'"),
        ("model.item_head=prefix", "set tokenizer.disambiguation=item"),
        ("model.item_head=tree", "model.item_head='tree'"),
    ],
)
def test_bad_overrides_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_unknown_key_in_file_names_file_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("split:\n  max_hist: 3\n")
    with pytest.raises(ConfigError, match="split.max_hist"):
        load_config(str(bad))


def test_missing_and_unparsable_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(str(tmp_path / "nope.yaml"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("seed: [1,\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(str(broken))


def test_resolved_yaml_round_trips(tmp_path: Path) -> None:
    cfg = load_config(str(CONFIGS / "kuairand.yaml"), ["seed=3"])
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(cfg))
    again = load_config(str(saved))
    assert again == cfg


def test_model_follows_split_sizes() -> None:
    cfg = load_config(str(CONFIGS / "tiny.yaml"), ["split.max_history=11", "model.num_experts=6"])
    assert (cfg.model.max_history, cfg.model.session_items) == (11, cfg.split.session_items)
    assert cfg.model.num_experts == 6


def test_readme_names_every_config_section() -> None:
    import dataclasses
    import typing
    from pathlib import Path

    from torchrec_onerec.config import OneRecConfig

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    hints = typing.get_type_hints(OneRecConfig)
    sections = [name for name, kind in hints.items() if dataclasses.is_dataclass(kind)]
    assert len(sections) >= 10
    missing = [name for name in sections if f"`{name}`" not in readme]
    assert not missing, f"README's Configs section does not name the config sections {missing}"


def test_each_section_keeps_its_own_optimiser_defaults_under_a_partial_override() -> None:
    cfg = load_config(None, ["align.optim.learning_rate=3e-4", "train.optim.epochs=7"])
    assert (cfg.align.optim.learning_rate, cfg.align.optim.epochs, cfg.align.optim.sparse_learning_rate) == (
        3e-4,
        1,
        0.01,
    )
    assert (cfg.train.optim.epochs, cfg.train.optim.warmup_steps, cfg.train.optim.lr_decay) == (7, 100, "cosine")
    assert (cfg.reward.optim.epochs, cfg.sasrec.optim.epochs, cfg.cascade.ranker.optim.epochs) == (5, 40, 3)
