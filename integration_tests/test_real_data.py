"""Loaders on the real data sets in ``../shared/data`` (skipped where that folder is absent): the published
statistics of KuaiRand-Pure (Gao et al., CIKM 2022, CC BY-SA 4.0) and MovieLens-100K (Harper and Konstan,
ACM TiiS 2015) must come out of the canonical tables."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from torchrec_onerec.datasets.interactions import InteractionData
from torchrec_onerec.datasets.kuairand import HISTORY_FILE, load_kuairand
from torchrec_onerec.datasets.movielens import load_movielens

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _folder(name: str) -> Path:
    folder = DATA / name
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (the shared data sets are not on this machine)")
    return folder


@pytest.fixture(scope="module")
def kuairand() -> InteractionData:
    return load_kuairand(str(_folder("kuairand-pure")))


@pytest.fixture(scope="module")
def ml100k() -> InteractionData:
    return load_movielens(str(_folder("ml-100k")))


def test_kuairand_statistics(kuairand: InteractionData) -> None:
    inter = kuairand.interactions
    assert len(inter) == 228_329 and inter["user_id"].nunique() == 25_156 and inter["item_id"].nunique() == 6_361
    assert inter["click"].mean() == pytest.approx(0.44, abs=0.005)
    assert inter["long_view"].mean() == pytest.approx(0.31, abs=0.005)
    assert inter["like"].mean() == pytest.approx(0.017, abs=0.001)
    assert sorted(inter["date"].unique().tolist()) == [*range(20220425, 20220431), *range(20220501, 20220509)]
    assert kuairand.num_users == 27_077 and kuairand.num_items == 7_502  # log + pre-slice histories
    assert kuairand.dropped == {"item_features_unused": 81, "user_features_unused": 208}
    assert kuairand.items["video_type"].notna().all() and kuairand.items["tag"].dtype == "str"


def test_kuairand_histories_follow_the_parquet(kuairand: InteractionData) -> None:
    hist = kuairand.histories
    assert hist is not None and len(hist) == 817_187
    raw = pd.read_parquet(_folder("kuairand-pure") / HISTORY_FILE, columns=["user_id", "watch_seq"])
    assert np.array_equal(kuairand.raw_item_ids[hist["item_id"]], np.concatenate(raw["watch_seq"].to_numpy()))
    first = kuairand.interactions.groupby("user_id")["timestamp"].min()
    last = hist.groupby("user_id")["timestamp"].max()
    both = pd.concat([last, first], axis=1, join="inner", keys=["last", "first"])
    assert len(both) == 25_156 - 608 and (both["last"] < both["first"]).all()  # histories precede the log
    assert (hist.groupby("user_id")["timestamp"].diff().dropna() == 1).all()


def test_ml100k_statistics(ml100k: InteractionData) -> None:
    assert (ml100k.num_users, ml100k.num_items, len(ml100k.interactions)) == (943, 1_682, 100_000)
    assert ml100k.dropped == {} and ml100k.interactions["rating"].between(1, 5).all()
    assert ml100k.interactions["timestamp"].iloc[0] == 881_250_949_000  # first row of ml-100k.inter, exact ms
    assert ml100k.items["title"].iloc[0] == "Toy Story"
    assert ml100k.items["genres"].iloc[0] == "Animation Children's Comedy"
    assert ml100k.users is not None and len(ml100k.users) == 943
