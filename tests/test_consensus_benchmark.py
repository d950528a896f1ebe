"""benchmarks/consensus.py: consensus sets read on a ladder, end to end on the tiny pipeline."""

import dataclasses
import json
import re
import sys
from pathlib import Path

import pytest
import torch

from noiseclr_lite.testing import StatsOracle

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import consensus, consistency, ladder, quality  # noqa: E402


def test_seed_groups_are_disjoint_and_leave_the_rest_out():
    assert consensus.seed_groups([0, 1, 2, 3, 4, 5, 6, 7], 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert consensus.seed_groups([0, 1, 2, 3, 4], 2) == [[0, 1], [2, 3]]
    assert consensus.seed_groups([4, 5], 2) == [[4, 5]]
    with pytest.raises(SystemExit, match=r"--group 1: a consensus needs groups of 2 to 3 seeds"):
        consensus.seed_groups([0, 1, 2], 1)
    with pytest.raises(SystemExit, match="--group 4"):
        consensus.seed_groups([0, 1, 2], 4)


def test_every_group_is_every_combination_of_the_seeds():
    assert consensus.seed_groups([0, 1, 2, 3], 2, every=True) == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
    assert len(consensus.seed_groups(list(range(8)), 4, every=True)) == 70
    assert consensus.seed_groups([5, 6], 2, every=True) == [[5, 6]]
    with pytest.raises(SystemExit, match="--group 3"):
        consensus.seed_groups([0, 1], 3, every=True)


def test_result_stem_names_the_files_by_their_tag():
    assert consensus.result_stem("k10-every") == "consensus-k10-every" and consensus.result_stem("") == "consensus"


def test_group_tally_counts_the_groups_that_meet_each_goal():
    # three groups: the first meets everything, the second is impure, the third covers only outside the domain
    # and by less than the margin over random's consensus of the same group
    kept = {"overall": {"NoiseCLR": {"per_seed": [0.80, 0.90, 0.75], "per_seed_in_domain": [0.75, 0.85, 0.50],
                                     "per_seed_purity": [0.70, 0.69, 0.80]},
                        "random": {"per_seed": [0.70, 0.50, 0.70]}}}
    tally = consensus.group_tally(kept)
    assert tally["groups"] == 3
    assert (tally["coverage"], tally["in_domain"], tally["purity"], tally["margin"], tally["all"]) == (3, 2, 2, 2, 1)
    assert tally["all_edits"] == 1      # the third group covers enough over all edits but misses the margin
    assert tally["range"]["in_domain"] == (0.50, 0.85) and tally["range"]["purity"] == (0.69, 0.80)
    assert tally["range"]["margin"] == pytest.approx((0.05, 0.40)) and "above_draws" not in tally
    # against draws of the same count from each group's pool: a tie is not above
    drawn = {"drawn": [0.70, 0.90, 0.80], "drawn_in_domain": [0.70, 0.80, 0.40]}
    tally = consensus.group_tally(kept, drawn)
    assert (tally["above_draws"], tally["above_draws_in_domain"]) == (1, 3)
    # against the mean of each group's own seeds' sets: seeds 7 and 9 in the order the single ladder lists them
    single = {"domains": {"face": {"NoiseCLR": {"seeds": [9, 7]}}},
              "overall": {"NoiseCLR": {"per_seed": [0.60, 0.80], "per_seed_purity": [0.75, 0.60]}}}
    tally = consensus.group_tally(kept, drawn, single, [[7, 9], [7], [9]])
    # purity 0.70 vs 0.675, 0.69 vs 0.60, 0.80 vs 0.75: all three purer (with the seeds read the wrong way
    # round, 0.69 vs 0.75 would not be: 2); coverage 0.80 vs 0.70, 0.90 vs 0.80, 0.75 vs 0.60: all three
    assert (tally["purer_than_own"], tally["covers_more_than_own"]) == (3, 3)
    one = {"overall": {"NoiseCLR": {"per_seed": [0.70], "per_seed_in_domain": [0.70], "per_seed_purity": [0.675]},
                       "random": {"per_seed": [0.50]}}}
    tie = consensus.group_tally(one, None, single, [[7, 9]])   # 0.675 against its seeds' 0.675, 0.70 against 0.70
    assert (tie["purer_than_own"], tie["covers_more_than_own"]) == (0, 0)
    with pytest.raises(ValueError, match="`single` needs `groups`"):
        consensus.group_tally(kept, drawn, single)


def test_the_command_line_shares_the_run_flags_and_loads_what_they_name(tiny_pipe_dir):
    args = consensus.parse_args(["a", "b", "--group", "2", "--count", "16", "--picks", "p.json", "--threads", "1",
                                 "--model", str(tiny_pipe_dir), "--samples", "s", "--no-progress"])
    assert (args.reports, args.group, args.count, args.picks) == (["a", "b"], 2, 16, "p.json")
    assert not args.every_group and consensus.parse_args(["a", "--every-group"]).every_group
    assert (args.threads, args.samples, args.no_progress, args.out) == (1, "s", True, str(quality.RESULTS))
    assert args.oracle == quality.DEFAULT_ORACLE and consistency.parse_args(["a", "--threads", "3"]).threads == 3
    threads = torch.get_num_threads()
    try:
        pipe, oracle = consistency.load_model_and_oracle(args)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert pipe.unet.config.cross_attention_dim == 32           # the tiny model the flag named
    assert set(oracle.predict(torch.zeros(1, 3, 64, 64))) >= {"domain", "attributes"}


def test_group_picks_read_the_groups_block_of_the_pooled_cosines():
    # 3 seeds of 2 directions; seeds 1 and 2 share their first edit, seed 0 shares nothing
    cosines = torch.eye(6)
    cosines[2, 4] = cosines[4, 2] = 1.0
    group = consensus.group_picks(cosines, [0, 1, 2], [1, 2], set_size=2, count=2)
    # seed 1's first edit (the earlier of the two copies), then seed 1's second: seed 2's copy was dropped
    assert group["seeds"] == [1, 2] and group["picked"] == [[1, 0], [1, 1]]
    assert group["agreement"] == pytest.approx([1.0, 0.0])


def test_consensus_benchmark_end_to_end_on_the_tiny_pipeline(tiny_pipe, tmp_path):
    from test_quality_benchmark import tiny_settings

    settings = tiny_settings(Path(quality.DEFAULT_SAMPLES), domains=["face"], calibration_iters=0, num_directions=3,
                             methods=["NoiseCLR", "random", "text"], interference=False, seeds=[0, 1, 2, 3, 4])
    for tag, target in (("low", 0.02), ("high", 0.05)):
        quality.run_benchmark(tiny_pipe, StatsOracle(), dataclasses.replace(settings, target_change=target), tmp_path,
                              tag=tag, resume=True, progress=False, log=lambda _: None)
    logged = []
    result = consensus.consensus_report(["high", "low"], tiny_pipe, StatsOracle(), tmp_path, tag="t", group=2, count=2,
                                        images=3, timesteps=(200, 600), progress=False, log=logged.append)
    assert not any("train" in line for line in logged) and result["trained_here"] == []   # from quality.py's cache
    assert result["groups"] == [[0, 1], [2, 3]] and result["count"] == 2 and result["images"] == 3   # seed 4 left out
    picks = result["picks"]["face"]
    assert set(picks) == {"NoiseCLR", "random"}
    for by_group in picks.values():
        for group, seeds in zip(by_group, ([0, 1], [2, 3])):
            assert group["seeds"] == seeds and len(group["picked"]) == 2
            assert all(seed in seeds and 0 <= k < 3 for seed, k in group["picked"])
            assert len({tuple(p) for p in group["picked"]}) == 2
            assert group["agreement"] == sorted(group["agreement"], reverse=True)   # most agreeing first
    # the picks are the library's on the same images and timesteps
    from noiseclr_lite.consensus import consensus_picks, run_cosines
    from noiseclr_lite.directions import Directions
    from noiseclr_lite.train import timestep_features
    from benchmarks.consistency import consistency_latents

    cache = quality.Cache.for_settings(tmp_path / "cache", settings, quality.cache_key(tiny_pipe, StatsOracle()))
    latents = consistency_latents(quality.training_latents(tiny_pipe, settings, "face"), 3)
    runs = [Directions.load(cache.trained / f"face_NoiseCLR_seed{seed}.safetensors") for seed in (2, 3)]
    by_hand = consensus_picks(run_cosines([timestep_features(tiny_pipe, r, latents, (200, 600)) for r in runs]),
                              [3, 3], 2)
    assert picks["NoiseCLR"][1]["picked"] == [[[2, 3][run], k] for run, k in by_hand]
    # a consensus set is read on the ladder from the reports' own scores of its directions
    rungs = ladder.load_rungs(["low", "high"], tmp_path)
    expected = []
    for group in picks["NoiseCLR"]:
        per_rung = [[ladder._scores(report, "face", "NoiseCLR", seed)[k] for seed, k in group["picked"]]
                    for _, report in rungs]
        climbed = [s for scores in per_rung for s in scores]
        from noiseclr_lite.metrics import summary

        working, _ = ladder.working_strength_scores(per_rung, targets=[0.02, 0.05])
        expected.append((summary(climbed, "face")["coverage"], sum(s.purity for s in working) / 2))
    mine = result["consensus"]["domains"]["face"]["NoiseCLR"]
    assert mine["ladder"] == pytest.approx([c for c, _ in expected])
    assert mine["purity"] == pytest.approx([p for _, p in expected])
    # the single seeds are the plain ladder of the same rungs, and the words are read alike in both
    plain = ladder.ladder(rungs)
    single = result["single"]["domains"]["face"]["NoiseCLR"]
    assert single["seeds"] == [0, 1, 2, 3] and plain["domains"]["face"]["NoiseCLR"]["seeds"] == [0, 1, 2, 3, 4]
    assert single["ladder"] == plain["domains"]["face"]["NoiseCLR"]["ladder"][:4]
    assert result["consensus"]["domains"]["face"]["text"]["ladder"] == plain["domains"]["face"]["text"]["ladder"]
    assert set(result["consensus"]["clear"]) == {"face"}
    # the control: 2 directions drawn at random from each group's pool of 6, on the same rungs
    assert result["draws"] == consensus.random_draws(rungs, {"face": ["NoiseCLR", "random"]}, [[0, 1], [2, 3]], 2)
    for method in ("NoiseCLR", "random"):   # a consensus and a draw are subsets of the pool: never above it
        draws, kept = result["draws"][method], result["consensus"]["domains"]["face"][method]
        for g in range(2):
            assert draws["drawn"][g] <= draws["pool"][g] + 1e-9 and kept["ladder"][g] <= draws["pool"][g] + 1e-9
            assert kept["in_domain"][g] <= draws["pool_in_domain"][g] + 1e-9 <= draws["pool"][g] + 2e-9
    md = (tmp_path / "consensus-t.md").read_text()
    assert "## Against random draws from the same runs" in md and "| method | consensus | 2 drawn at random | all 6 |" in md
    for text in ("# Consensus of 2 seeds: 2 directions kept from each group", "Seed groups: 0, 1; 2, 3",
                 "## Overall", "| NoiseCLR |", "| random |", "| text |", "## Per domain",
                 "## The issue's bars, each group's consensus standing for a seed",
                 "The single seeds on the same rungs, NoiseCLR's margins over random: face ",
                 "## What was kept", "- face, NoiseCLR: "):
        assert text in md
    assert re.search(r"\| face \| [+-]\d\.\d\d ± \d\.\d\d \| [+-]\d\.\d\d ± \d\.\d\d \| (yes|\*\*no\*\*) \|", md)
    assert json.loads((tmp_path / "consensus-t.json").read_text())["picks"] == json.loads(json.dumps(result["picks"]))
    # the sets' cosines are kept next to the trained sets: another --count of the same seeds needs no UNet pass
    counted = _counting_unet_calls(tiny_pipe)
    assert consensus.cosines_path(cache, "face", "random", [0, 1, 2, 3], latents, (200, 600)).is_file()
    # other images or other timesteps are another file: the cache never answers for them
    assert not consensus.cosines_path(cache, "face", "random", [0, 1, 2, 3], latents[:2], (200, 600)).is_file()
    assert not consensus.cosines_path(cache, "face", "random", [0, 1, 2, 3], latents, (200,)).is_file()
    fewer = consensus.consensus(["low", "high"], counted, StatsOracle(), tmp_path, group=2, count=1, images=3,
                                timesteps=(200, 600), progress=False, log=lambda _: None)
    assert counted.unet_calls == 0 and fewer["images"] == 3
    assert [g["picked"] for g in fewer["picks"]["face"]["NoiseCLR"]] == [g["picked"][:1] for g in picks["NoiseCLR"]]
    # a cached file of the wrong shape is not trusted: the cosines are measured again and rewritten
    cached = consensus.cosines_path(cache, "face", "random", [0, 1, 2, 3], latents, (200, 600))
    torch.save(torch.zeros(2, 2), cached)
    again_fewer = consensus.consensus(["low", "high"], counted, StatsOracle(), tmp_path, group=2, count=1, images=3,
                                      timesteps=(200, 600), progress=False, log=lambda _: None)
    assert counted.unet_calls > 0 and torch.load(cached).shape == (12, 12)
    assert again_fewer["picks"] == fewer["picks"]
    counted.unet_calls = 0
    # the picks read again from the page's JSON give the same reading, with no UNet pass
    earlier = tmp_path / "consensus-t.json"
    again = consensus.consensus(["low", "high"], counted, StatsOracle(), tmp_path, group=2, count=2, progress=False,
                                log=lambda _: None, picks_from=earlier)
    assert counted.unet_calls == 0
    assert again["picks"] == json.loads(json.dumps(result["picks"])) and again["picks_from"] == "consensus-t.json"
    assert again["consensus"]["domains"] == json.loads(json.dumps(result["consensus"]["domains"]))
    assert again["images"] == 3 and again["timesteps"] == [200, 600]
    with pytest.raises(SystemExit, match=r"--picks .*consensus-t.json has count 2 and these reports and flags give 1"):
        consensus.consensus(["low", "high"], tiny_pipe, StatsOracle(), tmp_path, group=2, count=1, progress=False,
                            log=lambda _: None, picks_from=earlier)
    with pytest.raises(SystemExit, match=r"has groups \[\[0, 1\], \[2, 3\]\] and these reports and flags give "
                                         r"\[\[0, 1, 2\]\]"):
        consensus.consensus(["low", "high"], tiny_pipe, StatsOracle(), tmp_path, group=3, count=2, progress=False,
                            log=lambda _: None, picks_from=earlier)
    edited = json.loads(earlier.read_text())
    other = tmp_path / "other.json"
    other.write_text(json.dumps(dict(edited, training_key="another")))
    with pytest.raises(SystemExit, match="has training_key 'another' and these reports and flags give '"):
        consensus.consensus(["low", "high"], tiny_pipe, StatsOracle(), tmp_path, group=2, count=2, progress=False,
                            log=lambda _: None, picks_from=other)
    other.write_text(json.dumps(dict(edited, picks={"face": {"NoiseCLR": edited["picks"]["face"]["NoiseCLR"]}})))
    with pytest.raises(SystemExit, match=r"picked for \{'face': \['NoiseCLR'\]\} and these rungs score "
                                         r"\{'face': \['NoiseCLR', 'random'\]\}"):
        consensus.consensus(["low", "high"], tiny_pipe, StatsOracle(), tmp_path, group=2, count=2, progress=False,
                            log=lambda _: None, picks_from=other)
    with pytest.raises(SystemExit, match="--picks .*nothing.json: no such file"):
        consensus.consensus(["low", "high"], tiny_pipe, StatsOracle(), tmp_path, group=2, progress=False,
                            log=lambda _: None, picks_from=tmp_path / "nothing.json")
    with pytest.raises(SystemExit, match=r"--count 7: keep between 1 and 6 directions \(a group's pool: 2 sets of 3\)"):
        consensus.consensus(["high", "low"], tiny_pipe, StatsOracle(), tmp_path, group=2, count=7, progress=False,
                            log=lambda _: None)
    # beyond K the pool may run out before the count: the page says where
    many = consensus.consensus(["high", "low"], tiny_pipe, StatsOracle(), tmp_path, group=2, count=6, images=3,
                               timesteps=(200, 600), progress=False, log=lambda _: None)
    kept = [len(g["picked"]) for by_group in many["picks"]["face"].values() for g in by_group]
    assert all(3 <= n <= 6 for n in kept)
    assert [n for n in kept if n < 6]                        # 2 sets of 3: each pick drops a copy, so it runs out
    page = consensus.markdown(many)
    assert "Fewer were kept where a group's pool ran out" in page
    assert "These sets hold 6 directions, more than one run's 3" in page
    assert "more than one run's" not in (tmp_path / "consensus-t.md").read_text()
    # every group of two of the five seeds: ten overlapping groups, read from one file of cosines of all five
    every = consensus.consensus_report(["high", "low"], tiny_pipe, StatsOracle(), tmp_path, tag="e", group=2,
                                       count=2, images=3, timesteps=(200, 600), progress=False, log=lambda _: None,
                                       every_group=True)
    assert every["groups"] == consensus.seed_groups([0, 1, 2, 3, 4], 2, every=True) and every["every_group"]
    assert consensus.cosines_path(cache, "face", "NoiseCLR", [0, 1, 2, 3, 4], latents, (200, 600)).is_file()
    # a group's picks read only its own block of the cosines: the same as when it was one of the disjoint groups
    by_seeds = {tuple(g["seeds"]): g["picked"] for g in every["picks"]["face"]["NoiseCLR"]}
    assert by_seeds[(0, 1)] == picks["NoiseCLR"][0]["picked"] and by_seeds[(2, 3)] == picks["NoiseCLR"][1]["picked"]
    assert every["tally"] == consensus.group_tally(every["consensus"], every["draws"]["NoiseCLR"], every["single"],
                                                   every["groups"])
    assert every["tally"]["groups"] == 10 and 0 <= every["tally"]["above_draws"] <= 10
    page = (tmp_path / "consensus-e.md").read_text()
    assert "all 10 combinations of 2 of the seeds 0, 1, 2, 3, 4" in page and "## Group by group" in page
    assert "| in domain, purity and margin at once | " in page and "| covers more than 2 drawn at random" in page
    assert "| purer than its own seeds' sets (their mean) | " in page
    assert "| coverage, purity and margin at once |" in page and "`consensus-e.json.gz` (`picks`)" in page
    assert "- face, NoiseCLR: " not in page   # no list of ten groups' picks: the record keeps them
    assert not (tmp_path / "consensus-e.json").exists()            # 5 times the picks here: written compressed
    counted.unet_calls = 0
    again = consensus.consensus(["high", "low"], counted, StatsOracle(), tmp_path, group=2, count=2, progress=False,
                                log=lambda _: None, picks_from=tmp_path / "consensus-e.json.gz", every_group=True)
    assert counted.unet_calls == 0 and again["tally"] == every["tally"]
    # a page whose picks came from a .json.gz links that run's page, which exists
    consensus.consensus_report(["high", "low"], counted, StatsOracle(), tmp_path, tag="e2", group=2, count=2,
                               progress=False, log=lambda _: None, picks_from=tmp_path / "consensus-e.json.gz",
                               every_group=True)
    links = re.findall(r"The picks are those of \[`[^`]+`\]\(([^)]+)\)", (tmp_path / "consensus-e2.md").read_text())
    assert links == ["consensus-e.md"] and (tmp_path / links[0]).is_file()
    # an earlier record under the same tag in the other format is removed, so no stale one reads as current
    (tmp_path / "consensus-e2.json").write_text("{}")
    consensus.consensus_report(["high", "low"], counted, StatsOracle(), tmp_path, tag="e2", group=2, count=2,
                               progress=False, log=lambda _: None, picks_from=tmp_path / "consensus-e.json.gz",
                               every_group=True)
    assert not (tmp_path / "consensus-e2.json").exists() and (tmp_path / "consensus-e2.json.gz").is_file()
    # all five seeds in one group: the page speaks of that group, not of overlapping ones
    consensus.consensus_report(["high", "low"], counted, StatsOracle(), tmp_path, tag="one", group=5, count=2,
                               images=3, timesteps=(200, 600), progress=False, log=lambda _: None, every_group=True)
    page = (tmp_path / "consensus-one.md").read_text()
    assert "Seed groups: the one combination of all the seeds, 0, 1, 2, 3, 4." in page and "overlap" not in page
    assert "Whether the one group's NoiseCLR consensus set meets each goal (its reading beside it)" in page
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(SystemExit, match=r"--picks .*broken.json is not JSON .*give a consensus-TAG.json\[.gz\]"):
        consensus.consensus(["high", "low"], tiny_pipe, StatsOracle(), tmp_path, group=2, count=2, progress=False,
                            log=lambda _: None, picks_from=tmp_path / "broken.json")


def _counting_unet_calls(pipe):
    """``pipe`` with its UNet counting its calls (``pipe.unet_calls``)."""
    pipe.unet_calls = 0

    def count(*_):
        pipe.unet_calls += 1

    pipe.unet.register_forward_pre_hook(count)
    return pipe


def test_average_reads_each_kept_direction_as_the_mean_of_its_copies_edits(tiny_pipe, tmp_path):
    from test_quality_benchmark import tiny_settings
    from noiseclr_lite.editing import DirectionEdit, edit
    from noiseclr_lite.metrics import DirectionScore, images_to_tensor, pixel_change, summary

    settings = tiny_settings(Path(quality.DEFAULT_SAMPLES), domains=["face"], calibration_iters=2, num_directions=3,
                             methods=["NoiseCLR", "random", "text"], interference=False, seeds=[0, 1])
    quality.run_benchmark(tiny_pipe, StatsOracle(), settings, tmp_path, tag="one", resume=True, progress=False,
                          log=lambda _: None)
    with pytest.raises(SystemExit, match=r"a ladder needs 2 or more .*; consensus.py --average reads one"):
        consensus.consensus(["one"], tiny_pipe, StatsOracle(), tmp_path, group=2, count=2, progress=False,
                            log=lambda _: None)
    result = consensus.consensus_report(["one"], tiny_pipe, StatsOracle(), tmp_path, tag="mean", group=2, count=2,
                                        images=3, timesteps=(200, 600), progress=False, log=lambda _: None,
                                        average=True)
    group = result["picks"]["face"]["NoiseCLR"][0]
    assert [copies[0] for copies in group["copies"]] == [[*pick, 1] for pick in group["picked"]]   # the pick first
    assert all(len(copies) == 2 and {c[0] for c in copies} == {0, 1} and {c[2] for c in copies} <= {1, -1}
               for copies in group["copies"])
    # a kept direction's score is its copies' mean edit, rendered at the calibrated scale
    cache = quality.Cache.for_settings(tmp_path / "cache", settings, quality.cache_key(tiny_pipe, StatsOracle()))
    sets = {seed: quality._load_directions(cache, "face", "NoiseCLR", seed) for seed in (0, 1)}
    scored = result["averaged"]["domains"]["face"]["NoiseCLR"]
    (path, report), = ladder.load_rungs(["one"], tmp_path, at_least=1)
    mine = consensus.consensus_rungs([(path, report)], result["picks"], [
        {"face": {m: [consensus.mean_scores(tiny_pipe, StatsOracle(), {}, m, g, None, "face", settings, cache)
                      for g in by_group] for m, by_group in result["picks"]["face"].items()}}])  # from the cache
    first = mine[0][1]["domains"]["face"]["runs"]["NoiseCLR"][0]["scores"][0]
    assert first["token"] == " + ".join(f"{'-' if sign < 0 else ''}{seed}:{k}" for seed, k, sign in group["copies"][0])
    start = quality.domain_start(tiny_pipe, settings, "face")
    by_hand = images_to_tensor(edit(tiny_pipe, [DirectionEdit(sets[seed], k, sign * first["scale"] / 2)
                                                for seed, k, sign in group["copies"][0]], inversion=start.inversion))
    first_copies = [(sets[seed], k, sign) for seed, k, sign in group["copies"][0]]
    torch.testing.assert_close(consensus.mean_render(tiny_pipe, first_copies, first["scale"], start, (1.0, 0.0)),
                               by_hand)
    # the copies' signs are those of the signed cosines the picks were made from
    signed = torch.load(consensus.cosines_path(cache, "face", "NoiseCLR", [0, 1], consistency.consistency_latents(
        quality.training_latents(tiny_pipe, settings, "face"), 3), (200, 600)))
    assert signed.min() < 0                                    # signed, not |cos|
    for (pick_seed, pick_k), copies in zip(group["picked"], group["copies"]):
        for seed, k, sign in copies[1:]:
            assert sign == (1 if signed[pick_seed * 3 + pick_k, seed * 3 + k] >= 0 else -1)
    assert first["pixel_change"] > 0 and first["calibrated"]
    assert scored["seeds"] == [0] and len(scored["purity"]) == 1
    plus, minus = (consensus.mean_render(tiny_pipe, first_copies, s, start, (1.0, 0.0))
                   for s in (first["scale"], -first["scale"]))
    assert first["pixel_change"] == pytest.approx((pixel_change(plus, start.images)
                                                   + pixel_change(minus, start.images)) / 2)
    # a second rung reads its own means (the cache key holds the target change), each rung in its place
    quality.run_benchmark(tiny_pipe, StatsOracle(), dataclasses.replace(settings, target_change=0.2), tmp_path,
                          tag="two", resume=True, progress=False, log=lambda _: None)
    both = consensus.consensus(["one", "two"], tiny_pipe, StatsOracle(), tmp_path, group=2, count=2, images=3,
                               timesteps=(200, 600), progress=False, log=lambda _: None, average=True)
    stronger = consensus.mean_scores(tiny_pipe, StatsOracle(), {}, "NoiseCLR", group, None, "face",
                                     dataclasses.replace(settings, target_change=0.2), cache)   # from the cache
    assert len(list(cache.trained.glob("consensus-mean_face_NoiseCLR_seeds0-1_*.json"))) == 2   # one file a rung
    assert both["averaged"]["targets"] == [0.02, 0.2]
    kept = json.loads(json.dumps(both["averaged_scores"]["quality-two"]["face"]["NoiseCLR"][0]))
    assert kept == stronger                                                   # every mean's score, in the result
    assert both["averaged"]["domains"]["face"]["NoiseCLR"]["rungs"][0] == scored["rungs"][0]
    assert both["averaged"]["domains"]["face"]["NoiseCLR"]["rungs"][1] == [
        summary([DirectionScore(**x) for x in stronger], "face")["coverage"]]
    # the means are cached with the cosines: a second reading renders nothing
    counted = _counting_unet_calls(tiny_pipe)
    again = consensus.consensus(["one"], counted, StatsOracle(), tmp_path, group=2, count=2, images=3,
                                timesteps=(200, 600), progress=False, log=lambda _: None, average=True)
    assert again["averaged"]["domains"] == json.loads(json.dumps(result["averaged"]["domains"]))
    assert counted.unet_calls == 0
    page = (tmp_path / "consensus-mean.md").read_text()
    for text in ("means of copies: coverage | purity |", "## The issue's bars, each group's means of copies standing",
                 "rendered again as the mean of its copies' edits", "  - means of: "):
        assert text in page
    # picks saved before the copies were recorded cannot be averaged
    old = json.loads((tmp_path / "consensus-mean.json").read_text())
    for unsigned in (True, False):   # copies without their signs (as first recorded), then no copies
        for by_group in old["picks"]["face"].values():
            for g in by_group:
                if unsigned:
                    g["copies"] = [[c[:2] for c in copies] for copies in g["copies"]]
                else:
                    del g["copies"]
        (tmp_path / "old.json").write_text(json.dumps(old))
        with pytest.raises(SystemExit, match="predates the signed copies --average reads"):
            consensus.consensus(["one"], tiny_pipe, StatsOracle(), tmp_path, group=2, count=2, progress=False,
                                log=lambda _: None, picks_from=tmp_path / "old.json", average=True)


def test_only_domains_keeps_the_named_domains_of_a_report():
    report = {"domains": {"face": {"runs": 1}, "cat": {"runs": 2}, "car": {"runs": 3}},
              "settings": {"domains": ["face", "cat", "car"], "seeds": [0]}}
    kept = consensus.only_domains(report, ["car", "face"], "r.json")
    assert list(kept["domains"]) == ["face", "car"] and kept["settings"]["domains"] == ["face", "car"]
    assert list(report["domains"]) == ["face", "cat", "car"]                    # the report itself is left alone
    with pytest.raises(SystemExit, match=r"--domains painting: r.json has only face, cat, car"):
        consensus.only_domains(report, ["face", "painting"], "r.json")


def _fake_score(effects: dict, domain_kept: float = 1.0) -> dict:
    """A stored DirectionScore dict with only what the ladder reads set meaningfully."""
    values = list(effects.values())
    return {"name": "d", "token": "d", "domain": "face", "scale": 1.0, "effects": effects, "signed_effects": effects,
            "plus_effects": effects, "minus_effects": effects, "purity": max(values) / max(sum(values), 1e-9),
            "strength": max(values), "target": max(effects, key=effects.get), "pixel_change": 0.05,
            "off_target": sum(values) - max(values), "domain_kept": domain_kept}


def test_random_draws_are_the_exact_mean_coverage_of_draws_from_a_groups_pool():
    # one domain, two rungs, a group of two seeds with two directions each: a pool of four.
    # Expression is covered by two directions (seed 0's first at the weak rung, seed 1's first at the
    # strong one); hair by one, seed 1's second, whose covering edit leaves the domain; the rest by none.
    none = {"expression": 0.1, "hair": 0.0, "glasses": 0.0, "skin": 0.0}
    expression = {"expression": 0.9, "hair": 0.1, "glasses": 0.0, "skin": 0.0}
    hair = {"expression": 0.0, "hair": 0.8, "glasses": 0.1, "skin": 0.0}
    weak = {0: [_fake_score(expression), _fake_score(none)], 1: [_fake_score(none), _fake_score(none)]}
    strong = {0: [_fake_score(none), _fake_score(none)], 1: [_fake_score(expression), _fake_score(hair, 0.5)]}
    rungs = [(Path(f"r{i}.json"), {"domains": {"face": {"runs": {"NoiseCLR": [{"seed": s, "scores": by_seed[s]}
                                                                               for s in (0, 1)]}}}})
             for i, by_seed in enumerate((weak, strong))]
    assert consensus.covered_over_ladder(rungs, "face", "NoiseCLR", 1) == [{"expression"}, {"hair"}]
    assert consensus.covered_over_ladder(rungs, "face", "NoiseCLR", 1, kept_min=0.9) == [{"expression"}, set()]
    draws = consensus.random_draws(rungs, {"face": ["NoiseCLR"]}, [[0, 1]], count=2)["NoiseCLR"]
    # a draw of 2 of the 4 misses expression with probability C(2, 2) / C(4, 2) = 1/6 and hair with 3/6
    assert draws["drawn"] == [pytest.approx((5 / 6 + 1 / 2) / 4)]
    assert draws["drawn_in_domain"] == [pytest.approx((5 / 6) / 4)]
    assert draws["pool"] == [pytest.approx(2 / 4)] and draws["pool_in_domain"] == [pytest.approx(1 / 4)]
    # a count beyond the pool draws the whole pool
    assert consensus.random_draws(rungs, {"face": ["NoiseCLR"]}, [[0, 1]], count=9)["NoiseCLR"]["drawn"] == [
        pytest.approx(2 / 4)]
