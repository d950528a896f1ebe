"""noiseclr_lite.consensus: agreement across runs and the consensus set, on constructed edits whose answer is known."""

import pytest
import torch

from noiseclr_lite.consensus import (consensus_directions, consensus_picks, mean_edit, pick_copies, run_agreement,
                                     run_cosines)
from noiseclr_lite.directions import Directions

X, Y, Z, W = torch.eye(4)


def run(*edits):
    """One run's edit features at one timestep, on one image: [[1, K, 4]]."""
    return [torch.stack(edits).unsqueeze(0)]


def test_run_cosines_pool_the_runs_and_average_over_timesteps_before_the_absolute_value():
    cosines = run_cosines([run(X, Y), run(-2 * X, (Y + Z) / 2)])
    assert cosines.shape == (4, 4)
    expected = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0.5 ** 0.5], [1, 0, 1, 0], [0, 0.5 ** 0.5, 0, 1]])
    torch.testing.assert_close(cosines, expected)
    # +1 at one timestep and -1 at the other: they do not agree
    two_timesteps = run_cosines([run(X) + run(X), run(X) + run(-X)])
    assert two_timesteps[0, 1].item() == pytest.approx(0.0)
    with pytest.raises(ValueError, match=r"same timesteps; got \[2, 1\] timesteps per run"):
        run_cosines([run(X) + run(X), run(X)])
    with pytest.raises(ValueError, match="at least one run"):
        run_cosines([])
    with pytest.raises(ValueError, match=r"one trailing shape; got \[N, \.\.\.\] of \[\(1, 4\), \(2, 4\)\]"):
        run_cosines([run(X), [torch.zeros(2, 1, 4)]])


def test_agreement_is_the_mean_over_the_other_runs_of_the_best_match():
    cosines = run_cosines([run(X, Y), run(X, Z), run(Y, (X + Y) / 2 ** 0.5)])
    got = run_agreement(cosines, [2, 2, 2])
    half = 0.5 ** 0.5
    # run 0: X is in run 1 (1) and half in run 2 (half); Y is not in run 1 (0) and is in run 2 (1);
    # run 2: the mixture of X and Y matches half in each other run
    torch.testing.assert_close(got, torch.tensor([(1 + half) / 2, 0.5, (1 + half) / 2, 0.0, 0.5, half]))
    with pytest.raises(ValueError, match="two or more runs; got 1"):
        run_agreement(cosines, [6])
    with pytest.raises(ValueError, match=r"P = sum of the run sizes \[2, 2\] = 4; got \(6, 6\)"):
        run_agreement(cosines, [2, 2])
    with pytest.raises(ValueError, match=r"at least one direction; got run sizes \[6, 0\]"):
        run_agreement(cosines, [6, 0])


def test_the_consensus_keeps_the_most_agreeing_edit_once_and_drops_its_copies():
    # X is found by all three runs, Y by two, Z and W by one each
    cosines = run_cosines([run(X, Y, Z), run(Y, X, W), run(X, Z + W, W)])
    # agreements: X 1 in every run; Z + W 0.71 (half of Z in run 0, half of W in run 1); Y and W 0.5
    picks = consensus_picks(cosines, [3, 3, 3], count=3)
    # X, the earliest of its copies, whose copies (1, 1) and (2, 0) go; then Z + W, which takes Z (0, 2) and
    # W (1, 2) with it; then Y, whose copy (1, 0) goes
    assert picks == [(0, 0), (2, 1), (0, 1)]
    # asking for more than the pool holds: only W (2, 2) is left to keep, and fewer come back
    assert consensus_picks(cosines, [3, 3, 3], count=9) == [(0, 0), (2, 1), (0, 1), (2, 2)]
    with pytest.raises(ValueError, match=r"count must be in \[1, 9\]"):
        consensus_picks(cosines, [3, 3, 3], count=0)


def test_pick_copies_are_the_picks_best_matches_in_the_other_runs_turned_its_way():
    # run 1 holds X backwards: the same slider, run the other way
    features = [run(X, Y, Z), run(Y, -X, W), run(X, Z + W, W)]
    signed = run_cosines(features, signed=True)
    torch.testing.assert_close(signed.abs(), run_cosines(features))
    assert signed[0, 4].item() == pytest.approx(-1.0)
    picks = consensus_picks(signed.abs(), [3, 3, 3], count=3)
    copies = pick_copies(signed, [3, 3, 3], picks)
    # X's copies are -X in run 1 (turned, sign -1) and X in run 2; Z + W's are Z in run 0 and W in run 1;
    # Y's are Y in run 1 and, in run 2 that lacks Y, its first direction of cosine 0 (argmax takes the earliest)
    assert copies == [[(0, 0, 1), (1, 1, -1), (2, 0, 1)], [(2, 1, 1), (0, 2, 1), (1, 2, 1)],
                      [(0, 1, 1), (1, 0, 1), (2, 0, 1)]]
    with pytest.raises(ValueError, match=r"pick \(1, 3\) is not a direction of these runs \(sizes \[3, 3, 3\]\)"):
        pick_copies(signed, [3, 3, 3], [(1, 3)])


def test_mean_edit_moves_the_mean_of_the_copies_edits(tiny_pipe):
    from noiseclr_lite.editing import DirectionEdit, edit

    first = Directions(torch.randn(2, 32) * 0.5, ["<a0>", "<a1>"])
    second = Directions(torch.randn(2, 32) * 0.5, ["<b0>", "<b1>"])
    edits = mean_edit([(first, 1), (second, "<b0>")], 3.0, window=(1.0, 0.5))
    assert [(e.directions, e.direction, e.scale, e.window) for e in edits] == [
        (first, 1, 1.5, (1.0, 0.5)), (second, "<b0>", 1.5, (1.0, 0.5))]
    assert [e.scale for e in mean_edit([(first, 1, 1), (second, 0, -1)], 3.0)] == [1.5, -1.5]
    # the mean of one edit twice is that edit; with one copy turned, they cancel
    kwargs = dict(seed=0, num_inference_steps=4, return_latents=True)
    _, twice = edit(tiny_pipe, mean_edit([(first, 0), (first, 0)], 2.0), **kwargs)
    _, once = edit(tiny_pipe, [DirectionEdit(first, 0, 2.0)], **kwargs)
    _, plain = edit(tiny_pipe, [], **kwargs)
    _, cancelled = edit(tiny_pipe, mean_edit([(first, 0, 1), (first, 0, -1)], 2.0), **kwargs)
    torch.testing.assert_close(twice, once, atol=1e-5, rtol=0)
    torch.testing.assert_close(cancelled, plain, atol=1e-5, rtol=0)
    assert (once - plain).abs().max() > 1e-3          # the edit does move the latents
    with pytest.raises(ValueError, match="at least one"):
        mean_edit([], 1.0)
    with pytest.raises(ValueError, match="sign must be 1 or -1; got 0.5 for direction 1"):
        mean_edit([(first, 1, 0.5)], 1.0)
    with pytest.raises(ValueError, match=r"\(Directions, direction, sign\); got 1 items"):
        mean_edit([(first,)], 1.0)


def test_consensus_directions_keep_each_shared_row_once_with_its_run_and_agreement(tiny_pipe):
    latents = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    first = Directions.create(tiny_pipe, 3, prefix="a", seed=0)
    fresh = Directions.create(tiny_pipe, 1, prefix="x", seed=7)
    # the second run found rows 2 and 0 of the first again, and one edit of its own
    second = Directions(torch.stack([first.embeddings[2], fresh.embeddings[0], first.embeddings[0]]),
                        ["<b_0>", "<b_1>", "<b_2>"], ["smile", "<b_1>", "<b_2>"], dict(first.metadata, seed=1))
    kept = consensus_directions(tiny_pipe, [first, second], latents, count=2, timesteps=(300, 700), prefix="k")
    assert kept.tokens == ["<k_0>", "<k_1>"] and kept.num_directions == 2
    # the two shared edits are the most agreeing, and each is kept once
    rows = {tuple(row.tolist()) for row in kept.embeddings}
    assert rows == {tuple(first.embeddings[0].tolist()), tuple(first.embeddings[2].tolist())}
    info = kept.metadata["consensus"]
    assert info["runs"] == [0, 1] and len(info["picked"]) == 2
    assert info["agreement"] == pytest.approx([1.0, 1.0], abs=1e-4)
    for (r, k), row in zip(info["picked"], kept.embeddings):
        assert torch.equal([first, second][r].embeddings[k], row)
    for name, token, pick in zip(kept.names, kept.tokens, info["picked"]):
        assert name == ("smile" if pick == [1, 0] else token)      # a renamed direction keeps its name
    # three runs: runs 1 and 2 hold the same near-copy of run 0's first row, so it agrees best and comes
    # first, from run 1 (the earlier of the two), under its name
    near = first.embeddings[0] + 0.05 * fresh.embeddings[0]
    third = Directions(torch.stack([near, first.embeddings[1]]), ["<c_0>", "<c_1>"], metadata=first.metadata)
    named = Directions(torch.stack([near, fresh.embeddings[0]]), ["<n_0>", "<n_1>"], ["smile", "<n_1>"],
                       first.metadata)
    kept = consensus_directions(tiny_pipe, [first, named, third], latents, count=1, timesteps=(300,))
    assert kept.metadata["consensus"]["picked"] == [[1, 0]] and kept.names == ["smile"]
    # two kept directions named alike: the second gets its token, so a name still picks one slider
    both = Directions(first.embeddings, first.tokens, ["smile", "<a_1>", "smile"], first.metadata)
    twice = consensus_directions(tiny_pipe, [both, second], latents, count=2, timesteps=(300,), prefix="k")
    assert twice.names.count("smile") == 1 and len(set(twice.names)) == 2
    # "seed", "init" and "loss_history" of run 0 are not the consensus's
    assert "loss_history" not in consensus_directions(
        tiny_pipe, [Directions(first.embeddings, first.tokens, metadata=dict(first.metadata, loss_history="[1.0]")),
                    second], latents, timesteps=(300,)).metadata
    assert "seed" not in kept.metadata and "init" not in kept.metadata
    assert kept.metadata["hidden_size"] == first.metadata["hidden_size"]
    # default count: the first run's K, which reaches the fresh edit as well
    assert consensus_directions(tiny_pipe, [first, second], latents, timesteps=(300,)).num_directions == 3


def test_consensus_directions_refuse_runs_that_cannot_share_one_set(tiny_pipe):
    latents = torch.randn(2, 4, 16, 16)
    first = Directions.create(tiny_pipe, 2, seed=0)
    with pytest.raises(ValueError, match="two or more runs' Directions; got 1"):
        consensus_directions(tiny_pipe, [first], latents)
    in_context = Directions.create(tiny_pipe, 2, prefix="c", seed=1, context="a face, {}")
    with pytest.raises(ValueError, match="run 1 was trained in context 'a face, {}', run 0 in '{}'"):
        consensus_directions(tiny_pipe, [first, in_context], latents)
    wider = Directions(torch.zeros(2, 64), ["<w_0>", "<w_1>"], metadata=first.metadata)
    with pytest.raises(ValueError, match="run 1 has hidden size 64, run 0 32"):
        consensus_directions(tiny_pipe, [first, wider], latents)
    other_model = Directions(first.embeddings, ["<o_0>", "<o_1>"], metadata=dict(first.metadata, base_model="sd"))
    with pytest.raises(ValueError, match="run 1 has base_model 'sd'"):
        consensus_directions(tiny_pipe, [first, other_model], latents)
