"""Which schedule a run follows: progressive shrinking from scratch, the adaptation schedule with
``--init``, an explicit one when given -- and that the adaptation schedule trains the whole space
(every subnet the pretrained body already serves) with the smallest always sampled."""

from __future__ import annotations

from dataclasses import asdict

from edgenas.space.spec import SearchSpace
from edgenas.training.schedule import ADAPT_SCHEDULE, DEFAULT_SCHEDULE, Phase, make_plan
from edgenas.training.train import TrainConfig


def test_scratch_runs_progressive_shrinking_and_init_the_adaptation_schedule() -> None:
    assert TrainConfig(out="x.pt").phases() == list(DEFAULT_SCHEDULE)
    assert TrainConfig(out="x.pt", init="ofa.pth").phases() == list(ADAPT_SCHEDULE)
    mine = [asdict(Phase("full", 1, 1, 1, share=1.0, lr=0.05, kd=False))]
    assert TrainConfig(out="x.pt", init="ofa.pth", schedule=mine).phases() == [Phase(**mine[0])]


def test_adaptation_schedule_covers_the_whole_space_after_adapting_the_full_network() -> None:
    space = SearchSpace.load("mbv3-tiny")
    first, *rest = ADAPT_SCHEDULE
    assert first.choices(space) == ((max(space.kernel_choices),), (max(space.depth_choices),),
                                    (max(space.expand_choices),)) and not first.kd
    last = rest[-1]
    assert last.choices(space) == (tuple(space.kernel_choices), tuple(space.depth_choices),
                                   tuple(space.expand_choices))
    assert last.kd and last.include_min
    assert last.smallest(space, space.resolutions[0]) == space.smallest()
    # the new head settles during a warm-up before full-rate updates reach the pretrained body
    assert first.warmup > 0 and first.lr == DEFAULT_SCHEDULE[0].lr
    plans = make_plan(ADAPT_SCHEDULE, num_train=640, batch_size=64, epochs=10)
    assert sum(p.steps for p in plans) == 100 and plans[0].steps == 30
