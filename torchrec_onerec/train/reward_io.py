"""The session reward model's file: a plain state dict plus what rebuilds and checks the model (``reward_model.pt``).

``save_reward_model`` writes it atomically with its config, sizes, signals and item codes, so that a file scores
sessions without the codebook; ``load_reward_model`` refuses a file built for another catalogue or other
signals, naming the mismatch.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

from torchrec_onerec.models.reward import SessionRewardModel
from torchrec_onerec.models.reward_config import RewardModelConfig
from torchrec_onerec.run_dir import load_tagged, save_tagged
from torchrec_onerec.optim_config import section_with_optim

REWARD_FORMAT = "torchrec_onerec.reward_model/1"
REWARD_MODEL_FILE = "reward_model.pt"  # its name in a run's train-reward folder


def plain_reward_model(
    state: Dict[str, torch.Tensor],
    config: RewardModelConfig,
    num_users: int,
    num_items: int,
    signals: Sequence[str],
    *,
    item_codes: Optional[torch.Tensor] = None,
    device: Optional[torch.device] = None,
) -> SessionRewardModel:
    """An unsharded ``SessionRewardModel`` holding ``state`` (no random initialisation, no RNG consumed).

    Args:
        state (Dict[str, torch.Tensor]): a full ``SessionRewardModel`` state dict.
        config (RewardModelConfig): the config it was trained with.
        num_users (int): rows of its user table.
        num_items (int): rows of its item table.
        signals (Sequence[str]): its towers.
        item_codes (torch.Tensor | None): [num_items, L'] the codes it was trained with (``reward.semantic_ids``).
        device (torch.device | None): where to put it (CPU by default).

    Returns:
        SessionRewardModel: in eval mode.
    """
    model = SessionRewardModel(
        config, num_users, num_items, signals, item_codes=item_codes, device=torch.device("meta")
    )
    model.load_state_dict(state, assign=True)
    return model.to(device or torch.device("cpu")).eval()


def save_reward_model(
    path: Path,
    state: Dict[str, torch.Tensor],
    config: RewardModelConfig,
    num_users: int,
    num_items: int,
    signals: Sequence[str],
    item_codes: Optional[torch.Tensor] = None,
) -> None:
    """Write a plain state dict with what is needed to rebuild and check the model (atomically).

    Args:
        path (Path): the file (``torch.save`` format).
        state (Dict[str, torch.Tensor]): a full ``SessionRewardModel`` state dict.
        config (RewardModelConfig): its config.
        num_users (int): rows of its user table.
        num_items (int): rows of its item table.
        signals (Sequence[str]): its towers, in order.
        item_codes (torch.Tensor | None): [num_items, L'] its items' codes (``reward.semantic_ids``): the model
            file carries them, so it scores sessions without the codebook.
    """
    codes = None if item_codes is None else item_codes.detach().to("cpu", torch.int64).clone()
    save_tagged(
        path,
        REWARD_FORMAT,
        {
            "config": asdict(config),
            "num_users": int(num_users),
            "num_items": int(num_items),
            "signals": list(signals),
            "state_dict": state,
            "item_codes": codes,
        },
    )


def load_reward_model(
    path: Path,
    *,
    num_items: Optional[int] = None,
    num_users: Optional[int] = None,
    signals: Optional[Sequence[str]] = None,
    device: Optional[torch.device] = None,
) -> SessionRewardModel:
    """Read a model written by ``save_reward_model``, refusing one built for another catalogue or other signals.

    Args:
        path (Path): the file (``reward_model.pt``).
        num_items (int | None): the catalogue size in use (None: not checked).
        num_users (int | None): the number of users in use (None: not checked).
        signals (Sequence[str] | None): the signals in use, in order (None: not checked).
        device (torch.device | None): where to put the model.

    Returns:
        SessionRewardModel: plain, in eval mode.
    """
    data = load_tagged(path, REWARD_FORMAT, "save_reward_model")
    expected = {"num_items": num_items, "num_users": num_users, "signals": None if signals is None else list(signals)}
    for key, wanted in expected.items():
        if wanted is not None and data[key] != wanted:
            raise ValueError(
                f"{path} holds a reward model with {key}={data[key]}, not the {key}={wanted} in use; "
                "train a reward model on this data set (stage train-reward) or load the matching one"
            )
    config = RewardModelConfig(
        **section_with_optim({"semantic_ids": False, **data["config"]})
    )  # files before the key were id-only
    return plain_reward_model(
        data["state_dict"],
        config,
        data["num_users"],
        data["num_items"],
        data["signals"],
        item_codes=data.get("item_codes"),
        device=device,
    )
