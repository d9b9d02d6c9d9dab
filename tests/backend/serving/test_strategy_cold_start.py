"""The strategy of a version (backend/serving/strategy.py): TypiClust only for a version marked pretrained (the
cold start's, trained on no label); the configured one for an initial or a trained version; a strategy the
config cannot run is refused whatever the version."""

from __future__ import annotations

import pytest

from backend.serving.model import load_schema
from backend.serving.strategy import strategy_for
from backend.settings import Settings

ONE = ('<View><Image name="image" value="$image"/><BrushLabels name="sem" toName="image">'
       '<Label value="a"/></BrushLabels></View>')


@pytest.mark.parametrize(("version", "expected"), [
    (None, "random"),
    ({"initial": True}, "random"),
    ({"initial": True, "pretrained": True}, "typiclust"),
    ({"initial": False, "source": "trained on 10 tasks"}, "random"),  # train_version drops the mark
])
def test_typiclust_only_for_a_pretrained_version(version: dict | None, expected: str) -> None:
    strategy = strategy_for(Settings(strategy="random", train_threshold=4), load_schema(ONE), version)
    assert strategy.name == expected
    if expected == "typiclust":
        assert strategy.batch == 4  # the first batch: MTAL_TRAIN_THRESHOLD images in distinct clusters


def test_threshold_zero_gives_a_first_batch_of_ten() -> None:
    assert strategy_for(Settings(train_threshold=0), load_schema(ONE), {"pretrained": True}).batch == 10


def test_a_strategy_the_config_cannot_run_is_refused_even_for_a_pretrained_version() -> None:
    with pytest.raises(ValueError, match="committee"):
        strategy_for(Settings(strategy="mtal"), load_schema(ONE), {"pretrained": True})
