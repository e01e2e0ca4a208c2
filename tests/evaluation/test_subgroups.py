"""Results per subgroup: a planted subgroup the model fails on is found and named."""

import numpy as np
import pytest

from components.evaluation.subgroups import age_band, floor_failures, subgroup_results, subgroup_table

CLASSES = ["melanoma", "nevus", "other"]


def _planted(n_lesions: int = 240, seed: int = 0):
    """Two images per lesion; a good model everywhere except on the back, where it misses
    every melanoma (scores it as nevus). Few lesions on the scalp."""
    rng = np.random.default_rng(seed)
    lesion_y = rng.choice(3, n_lesions, p=[0.3, 0.5, 0.2])
    sites = np.array(["back", "face", "leg"], dtype=object)[rng.integers(0, 3, n_lesions)]
    sites[:6] = "scalp"
    y = np.repeat(lesion_y, 2)
    site = np.repeat(sites, 2)
    groups = [f"L{i}" for i in np.repeat(np.arange(n_lesions), 2)]
    probs = np.full((len(y), 3), 0.05)
    probs[np.arange(len(y)), y] = 0.9
    missed = (site == "back") & (y == 0)
    probs[missed] = [0.05, 0.9, 0.05]
    ages = np.repeat(rng.integers(18, 90, n_lesions), 2)
    metadata = [{"body_site": s, "age": str(a), "sex": ""} for s, a in zip(site, ages)]
    return y, probs, metadata, groups


def test_the_subgroup_the_model_fails_on_is_named_with_intervals():
    y, probs, metadata, groups = _planted()
    rows = subgroup_results(y, probs, CLASSES, "melanoma", None, 0.5, metadata, groups, "lesions", 200, 0)
    by = {(r["attribute"], r["value"], r["level"]): r for r in rows}
    back, face = by[("body_site", "back", "lesion")], by[("body_site", "face", "lesion")]
    assert back["melanoma_sensitivity"] == 0.0 and back["melanoma_sensitivity_ci"] == [0.0, 0.0]
    assert face["melanoma_sensitivity"] == 1.0 and face["melanoma_specificity"] == 1.0
    assert back["balanced_accuracy"] < face["balanced_accuracy"] == 1.0
    low, high = back["balanced_accuracy_ci"]
    assert low <= back["balanced_accuracy"] <= high
    assert by[("body_site", "back", "image")]["n"] == 2 * back["n"]
    assert by[("body_site", "scalp", "lesion")]["small"] and not back["small"]
    assert not any(r["attribute"] == "sex" for r in rows)  # no source value at all: left out
    assert {r["value"] for r in rows if r["attribute"] == "age_band"} <= {"<30", "30-49", "50-69", ">=70"}
    failures = floor_failures(rows, {"melanoma_sensitivity": 0.8})
    sites = [f for f in failures if "body_site=" in f]
    assert len(sites) == 1 and "melanoma_sensitivity 0.000 < floor 0.800 in body_site=back" in sites[0]
    # every other failure is an age band holding back's melanomas, never another site
    assert all("age_band=" in f for f in failures if f not in sites)
    assert floor_failures(rows, {}) == []
    table = subgroup_table(rows).splitlines()
    assert table[0].startswith("attribute,value,level,n,melanomas,small,balanced_accuracy,balanced_accuracy_ci_low")
    assert len(table) == len(rows) + 1


@pytest.mark.parametrize(
    "age, band",
    [("29.9", "<30"), ("30", "30-49"), ("69", "50-69"), ("70.0", ">=70"), ("", "unknown"), ("nan", "unknown")],
)
def test_age_bands(age, band):
    assert age_band(age) == band


def test_the_gate_keeps_a_model_that_fails_a_subgroup_floor_a_challenger():
    from components.core.settings import ChampionGateConfig
    from components.registry.champion_gate import CHALLENGER, CHAMPION, decide_promotion

    y, probs, metadata, groups = _planted()
    rows = subgroup_results(y, probs, CLASSES, "melanoma", None, 0.5, metadata, groups, "lesions", 100, 0)
    new = {"balanced_accuracy": 0.9, "subgroups": rows}
    assert decide_promotion(new, None, ChampionGateConfig()).alias == CHAMPION  # floors off by default
    gated = decide_promotion(new, None, ChampionGateConfig(subgroup_floors={"melanoma_sensitivity": 0.8}))
    assert gated.alias == CHALLENGER and "body_site=back" in gated.reason
