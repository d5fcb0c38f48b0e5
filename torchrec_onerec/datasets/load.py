"""One entry point from a ``data`` config section to canonical InteractionData: dispatches on ``data.source``
to the synthetic world, KuaiRand-Pure, MovieLens, a sequence file or an interaction table."""

from __future__ import annotations

from torchrec_onerec.datasets.config import DataConfig
from torchrec_onerec.errors import ConfigError
from torchrec_onerec.datasets.generic import load_interaction_table, load_sequence_file
from torchrec_onerec.datasets.interactions import InteractionData
from torchrec_onerec.datasets.kuairand import load_kuairand
from torchrec_onerec.datasets.movielens import load_movielens

_PATH_KIND = {"kuairand": "a folder", "movielens": "a folder", "sequence": "a file", "table": "a file"}


def load_dataset(config: DataConfig, *, seed: int) -> InteractionData:
    """Load the data set that ``config`` names, validated.

    Args:
        config: the ``data`` section; ``path`` is required for every source but ``synthetic``.
        seed: the run's seed; it drives the synthetic world (file sources are deterministic).

    Returns:
        Validated InteractionData. ``drop_duplicates`` applies to movielens and table sources (KuaiRand keeps
        its log as released, see ``kuairand.py``); ``sep`` applies to sequence and table sources.

    Raises:
        ConfigError: a file source without ``data.path``.
        DataError: unreadable or inconsistent files (the message names the file, line and value).

    Example:
        >>> import tempfile, os
        >>> f = os.path.join(tempfile.mkdtemp(), "seq.txt")
        >>> _ = open(f, "w").write("alice 3 1 2\\n")
        >>> load_dataset(DataConfig(source="sequence", path=f), seed=0).num_items
        3
        >>> load_dataset(DataConfig(source="table"), seed=0)
        Traceback (most recent call last):
        ...
        torchrec_onerec.errors.ConfigError: data.path is required for data.source='table' (a file)
    """
    if config.source == "synthetic":
        from torchrec_onerec.datasets.synthetic import load_synthetic

        data, _world = load_synthetic(config.synthetic, seed=seed)
        return data.validate()
    if not config.path:
        raise ConfigError(f"data.path is required for data.source={config.source!r} ({_PATH_KIND[config.source]})")
    if config.source == "kuairand":
        return load_kuairand(config.path)
    if config.source == "movielens":
        return load_movielens(config.path, drop_duplicates=config.drop_duplicates)
    if config.source == "sequence":
        return load_sequence_file(config.path, sep="whitespace" if config.sep == "auto" else config.sep)
    assert config.source == "table", config.source  # DataConfig.__post_init__ checked the source
    return load_interaction_table(
        config.path,
        user_col=config.user_col,
        item_col=config.item_col,
        time_col=config.time_col,
        timestamp_unit=config.timestamp_unit,
        feedback_cols=list(config.feedback_cols),
        sep="," if config.sep == "auto" else config.sep,
        drop_duplicates=config.drop_duplicates,
    )
