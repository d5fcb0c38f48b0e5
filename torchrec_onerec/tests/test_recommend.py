"""Serving a finished run: real items in raw ids, no repeats, the user's own latest history, clear errors."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from torchrec_onerec.cli import main
from torchrec_onerec.data.batch import make_dataloader
from torchrec_onerec.data.config import LoaderConfig
from torchrec_onerec.data.semantic_batch import SemanticIdTransform
from torchrec_onerec.generation.slate import LevelMixture, next_item_log_probs
from torchrec_onerec.models.cascade import mmr_rerank
from torchrec_onerec.recommend import CascadeServer, Recommender, UnknownUserError, current_histories, load_recommender

TINY = str(Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("run")
    assert main(["train", TINY, f"run_dir={path}"]) == 0
    return path


def _write_evaluation(run: Path, arms: dict) -> None:
    """The ``evaluate/metrics.json`` an evaluation writes, reduced to the arms' chosen serving settings."""
    (run / "evaluate").mkdir(exist_ok=True)
    (run / "evaluate" / "metrics.json").write_text(json.dumps({"arms": arms}))


def test_sessions_are_real_distinct_items_best_first(run_dir: Path) -> None:
    rec = Recommender.from_run_dir(run_dir)
    out = rec.recommend([3, 11], num_sessions=4)
    assert [row["user"] for row in out] == [3, 11]
    catalogue = set(rec.data.raw_item_ids.tolist())
    for row in out:
        assert len(row["sessions"]) == 4
        scores = [s["score"] for s in row["sessions"]]
        assert scores == sorted(scores, reverse=True)
        for session in row["sessions"]:
            assert len(session["items"]) == rec.config.split.session_items
            assert len(set(session["items"])) == len(session["items"]) and set(session["items"]) <= catalogue


def test_history_is_the_latest_positives_and_can_be_excluded(run_dir: Path) -> None:
    rec = Recommender.from_run_dir(run_dir)
    inter = rec.data.interactions
    mine = inter[(inter.user_id == 7) & (inter.click == 1)].sort_values("timestamp", kind="stable")
    expected = mine.item_id.to_numpy()[-rec.config.split.max_history :]
    assert np.array_equal(rec.user_samples([7])[0].history, expected)
    out = rec.recommend([7], num_sessions=3, exclude_history=True)
    seen = set(rec.data.raw_item_ids[expected].tolist())
    assert all(not seen & set(s["items"]) for s in out[0]["sessions"])


def test_unknown_user_and_incomplete_run_are_named(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(UnknownUserError, match=r"\['nobody'\]"):
        Recommender.from_run_dir(run_dir).recommend(["nobody"])
    assert main(["recommend", str(tmp_path), "--users", "1"]) == 2
    assert "config.yaml is missing" in capsys.readouterr().err
    assert main(["recommend", str(run_dir), "--users", "1", "--arm", "onerec_ipa"]) == 2
    assert "align" in capsys.readouterr().err


def test_cli_prints_json_lines(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recommend", str(run_dir), "--users", "1,2", "--sessions", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and '"sessions"' in lines[0]


def test_a_moved_run_serves_its_own_files_with_the_config_its_model_was_trained_with(
    run_dir: Path, tmp_path: Path
) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    (moved / "train" / "best_model.pt").write_bytes(b"cut short")
    with pytest.raises(ValueError, match=f"{moved}/train/best_model.pt cannot be read"):
        Recommender.from_run_dir(moved)
    shutil.copy(run_dir / "train" / "best_model.pt", moved / "train" / "best_model.pt")
    assert Recommender.from_run_dir(moved).recommend([1], num_sessions=1)[0]["user"] == 1
    with pytest.raises(ValueError, match="num_sessions=0 must be >= 1"):
        Recommender.from_run_dir(moved).recommend([1], num_sessions=0)
    # a later command's config.yaml does not change what the trained model is served with
    config = moved / "config.yaml"
    config.write_text(config.read_text().replace("d_model: 32", "d_model: 16"))
    assert Recommender.from_run_dir(moved).config.model.d_model == 32
    # a run directory without the stage's own copy (older versions) refuses a config.yaml that changed since
    (moved / "train" / "config.yaml").unlink()
    with pytest.raises(ValueError, match="config.yaml is not the config the train stage completed with"):
        Recommender.from_run_dir(moved)


def test_a_diverse_arm_serves_with_the_penalty_its_evaluation_chose(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    assert main(["recommend", str(run), "--users", "1", "--arm", "onerec_diverse"]) == 2
    assert "run `onerec evaluate` with compare.arms listing onerec_diverse" in capsys.readouterr().err
    _write_evaluation(run, {"onerec_diverse": {"info": {"diversity_penalty": 1e4}}})
    diverse = Recommender.from_run_dir(run, arm="onerec_diverse")
    plain = Recommender.from_run_dir(run)
    assert diverse.diversity_penalty == 1e4 and plain.diversity_penalty == 0.0
    index = {raw: i for i, raw in enumerate(diverse.data.raw_item_ids.tolist())}
    first = diverse.codebook.codes[:, 0]

    def repeats(rows) -> int:
        return sum(
            len(s["items"]) - len({int(first[index[i]]) for i in s["items"]}) for row in rows for s in row["sessions"]
        )

    users = [1, 2, 3, 4]
    assert repeats(diverse.recommend(users, num_sessions=3)) < repeats(plain.recommend(users, num_sessions=3))


def test_a_slate_arm_serves_the_slate_its_evaluation_chose(run_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    _write_evaluation(run, {"onerec_slate": {"info": {"diversity_penalty": 0.0}}})
    slate = Recommender.from_run_dir(run, arm="onerec_slate")
    assert slate.slate and not Recommender.from_run_dir(run).slate
    users = [1, 2, 3]
    rows = slate.recommend(users, num_sessions=2)
    samples = slate.user_samples(users)
    batch = next(
        iter(
            make_dataloader(
                samples,
                LoaderConfig(batch_size=8, shuffle=False),
                seed=0,
                shuffle=False,
                transform=SemanticIdTransform(slate.codebook.codes, max_history=slate.config.model.max_history),
            )
        )
    )
    log_probs = next_item_log_probs(slate.model, batch, slate.codebook.codes)
    assert not slate.config.eval.exclude_history  # else the top items below would need the history masked
    raw = np.asarray(slate.data.raw_item_ids)
    M = slate.config.model.session_items
    for row, top in zip(rows, log_probs.topk(2 * M, dim=1).indices.numpy()):
        served = [item for session in row["sessions"] for item in session["items"]]
        assert sorted(served) == sorted(raw[top].tolist())  # penalty 0: the 2 M most probable items


def test_the_level_mixed_arm_serves_both_models_with_the_weights_its_evaluation_chose(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    assert main(["recommend", str(run), "--users", "1", "--arm", "onerec_mix_slate"]) == 2
    assert "align" in capsys.readouterr().err  # no aligned model yet
    # the NTP model stands in for the aligned one: a copy of the train stage as the align stage
    shutil.copytree(run / "train", run / "align")
    (run / "align" / "summary.json").write_text(json.dumps({"model_path": str(run / "align" / "best_model.pt")}))
    assert main(["recommend", str(run), "--users", "1", "--arm", "onerec_mix_slate"]) == 2
    assert "run `onerec evaluate` with compare.arms listing onerec_mix_slate" in capsys.readouterr().err
    levels = len(Recommender.from_run_dir(run).codebook.vocab_sizes)
    _write_evaluation(run, {"onerec_mix_slate": {"info": {"diversity_penalty": 1.0}}})  # before level_weights existed
    assert main(["recommend", str(run), "--users", "1", "--arm", "onerec_mix_slate"]) == 2
    assert "records no 'level_weights' for the 'onerec_mix_slate' arm" in capsys.readouterr().err
    arms = {
        "onerec_slate": {"info": {"diversity_penalty": 1.0}},
        "onerec_mix_slate": {"info": {"diversity_penalty": 1.0, "level_weights": [0.25] + [1.0] * (levels - 1)}},
    }
    _write_evaluation(run, arms)
    mixed = Recommender.from_run_dir(run, arm="onerec_mix_slate")
    assert isinstance(mixed.model, LevelMixture) and mixed.slate and mixed.diversity_penalty == 1.0
    assert mixed.model.level_weights == (0.25,) + (1.0,) * (levels - 1)
    # both ends are the same weights here, so the mixture serves the NTP model's own slate
    users = [1, 2, 3]
    assert mixed.recommend(users, num_sessions=2) == Recommender.from_run_dir(run, arm="onerec_slate").recommend(
        users, num_sessions=2
    )


def test_a_run_evaluates_and_serves_the_level_mixed_arm(tmp_path: Path) -> None:
    run = tmp_path / "run"
    arms = "compare.arms=[onerec,onerec_ipa,onerec_mix_slate]"
    assert main(["run", TINY, f"run_dir={run}", arms, "compare.baseline=onerec"]) == 0
    info = json.loads((run / "evaluate" / "metrics.json").read_text())["arms"]["onerec_mix_slate"]["info"]
    levels = len(info["level_weights"])
    assert info["level_weights"] == [info["first_code_weight"]] + [1.0] * (levels - 1)
    assert set(info["selection"]) == {"0.0", "0.25", "0.5", "0.75", "1.0"}  # w chosen among these on validation
    mixed = Recommender.from_run_dir(run, arm="onerec_mix_slate")
    assert isinstance(mixed.model, LevelMixture) and mixed.model.level_weights == tuple(info["level_weights"])
    assert mixed.diversity_penalty == info["diversity_penalty"]
    for row in mixed.recommend([1, 2], num_sessions=2):
        served = [item for session in row["sessions"] for item in session["items"]]
        assert len(row["sessions"]) == 2 and len(set(served)) == len(served)


@pytest.fixture(scope="module")
def cascade_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cascade_run")
    assert main(["cascade", TINY, f"run_dir={path}"]) == 0
    return path


def test_the_cascade_serves_its_ranking_from_the_users_current_histories(cascade_run: Path) -> None:
    server = load_recommender(cascade_run, arm="cascade")
    assert isinstance(server, CascadeServer) and server.diversity_weight == 0.0
    M = server.config.split.session_items
    out = server.recommend([3, 11], num_sessions=3)
    samples = current_histories(server.data, server.config, [3, 11], session_items=M)
    ranked, _ = server.cascade.ranking(samples)
    for row, order in zip(out, ranked):
        served = [item for session in row["sessions"] for item in session["items"]]
        assert len(row["sessions"]) == 3 and all(len(s["items"]) == M for s in row["sessions"])
        assert served == server.data.raw_item_ids[order[: 3 * M]].tolist()  # the ranked list, cut into sessions
    scores = [s["score"] for s in out[0]["sessions"]]
    assert scores == sorted(scores, reverse=True)
    history = set(server.data.raw_item_ids[samples[0].history].tolist())
    kept = server.recommend([3], num_sessions=3, exclude_history=True)[0]["sessions"]
    assert history and not history & {item for s in kept for item in s["items"]}


def test_the_rerank_arm_serves_with_the_weight_its_evaluation_chose(
    cascade_run: Path, run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(cascade_run, run)
    assert main(["recommend", str(run), "--users", "1", "--arm", "cascade_rerank"]) == 2
    assert "run `onerec evaluate` with compare.arms listing cascade_rerank" in capsys.readouterr().err
    _write_evaluation(run, {"cascade_rerank": {"info": {"diversity_weight": 0.5}}})
    server = load_recommender(run, arm="cascade_rerank")
    assert isinstance(server, CascadeServer) and server.diversity_weight == 0.5
    M = server.config.split.session_items
    samples = current_histories(server.data, server.config, [2], session_items=M)
    items, scores = server.cascade.ranking(samples)
    expected, _ = mmr_rerank(items, scores, server.cascade.item_vectors(), weight=0.5, take=2 * M)
    served = [item for s in server.recommend([2], num_sessions=2)[0]["sessions"] for item in s["items"]]
    assert served == server.data.raw_item_ids[expected[0]].tolist()
    assert main(["recommend", str(run), "--users", "1,2", "--sessions", "2", "--arm", "cascade_rerank"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and len(json.loads(lines[1])["sessions"]) == 2
    # a run whose cascade stage has not completed says which stage to run
    assert main(["recommend", str(run_dir), "--users", "1", "--arm", "cascade"]) == 2
    assert "cascade/done.json is missing" in capsys.readouterr().err
